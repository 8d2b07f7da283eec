"""``scripts/soak``: the fault run for longer, outside pytest, with its report printed.

    scripts/soak --studies 40 --series 5 --slices 60 --rounds 5 [--rate 50] [--postgres]

Needs root (the data folder is a tmpfs of its own, to be filled) and the services the
tests use: RabbitMQ (a virtual host of its own is made and removed) and, with
--postgres, PostgreSQL. Exits 1 if anything acknowledged was lost or duplicated.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import fresh_postgres_database, fresh_vhost
from tests.reliability.fault_run import Pipeline, generate, run
from tests.system import Dcmdb


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--series", type=int, default=5, help="series per study")
    parser.add_argument("--slices", type=int, default=60, help="instances per series")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of faults while sending")
    parser.add_argument("--rate", type=float, default=50, help="instances sent per second, at most")
    parser.add_argument("--postgres", action="store_true", help="the catalog in PostgreSQL")
    parser.add_argument("--disk", default="1g", help="size of the data file system (1g)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dcmdb-soak-") as scratch:
        root = Path(scratch)
        data = root / "data"
        data.mkdir()
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={args.disk}", "tmpfs", str(data)], check=True
        )
        vhosts = fresh_vhost()
        databases = fresh_postgres_database() if args.postgres else None
        try:
            workload = generate(root / "workload", args.studies, args.series, args.slices)
            url = next(databases) if databases else f"sqlite:///{root / 'catalog.sqlite'}"
            dcmdb = Dcmdb(
                data, next(vhosts), url,
                extra_env={"DCMDB_STABLE_AGE": "2", "DCMDB_SWEEP_INTERVAL": "2",
                           "DCMDB_MIN_FREE": "1MB", "DCMDB_LOG_LEVEL": "WARNING"},
            )  # fmt: skip
            pipeline = Pipeline(dcmdb, dcmdb.start("up"))
            try:
                dcmdb.wait_until_listening(60)
                report = run(
                    pipeline, workload, rounds=args.rounds, rate=args.rate, settle_timeout=900
                )
            finally:
                pipeline.close()
                dcmdb.stop()
        finally:
            next(vhosts, None)
            if databases:
                next(databases, None)
            subprocess.run(["umount", "-l", str(data)], check=False)
    print("\n".join(report.lines()))
    return 1 if report.lost or report.duplicated else 0


if __name__ == "__main__":
    sys.exit(main())

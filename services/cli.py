"""The ``dcmdb`` command: one sub-command per service, and ``up`` to run them all.

Each service is imported only when its sub-command runs, so services never
import each other and a bad setting of one cannot stop another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from shared.settings import ConfigurationError

SERVICES = {
    "receiver": "services.receiver.main",
    "sorter": "services.sorter.main",
    "converter": "services.converter.main",
    "api": "services.api.main",
    "retriever": "services.retriever.main",
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dcmdb", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SERVICES:
        commands.add_parser(name, help=f"run the {name} service")
    commands.add_parser("up", help="run every service on this host, as separate processes")
    commands.add_parser(
        "dead-letters", help="count, show or requeue dead-lettered messages", add_help=False
    )
    # Their options are parsed by their own modules, --help included.
    commands.add_parser("studies", help="list the studies the API finds", add_help=False)
    commands.add_parser("download", help="download a study through the API", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in ("dead-letters", "studies", "download"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    try:
        if args.command == "up":
            from services.supervisor import run_all

            sys.exit(run_all(list(SERVICES)))
        if args.command == "dead-letters":
            from services.dead_letters import main as dead_letters

            dead_letters(rest)
            return
        if args.command == "studies":
            from services.lab_commands import studies

            studies(rest)
            return
        if args.command == "download":
            from services.lab_commands import download

            download(rest)
            return
        module = importlib.import_module(SERVICES[args.command])
        module.main()
    except ConfigurationError as exc:
        print(f"dcmdb {args.command}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()

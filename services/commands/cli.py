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
    "retention": "services.retention.main",
}
TOOLS = {  # name: ("module:function taking the arguments", what it does)
    "dead-letters": (
        "services.commands.dead_letters:main",
        "count, show or requeue dead-lettered messages",
    ),
    "studies": ("services.commands.studies:studies", "list the studies the API finds"),
    "download": ("services.commands.studies:download", "download a study through the API"),
    "retrieve": ("services.commands.pacs:retrieve", "fetch studies from the PACS"),
    "pacs-check": ("services.commands.pacs:pacs_check", "compare a study with the PACS"),
    "reconvert": ("services.commands.reconvert:main", "convert series to NIfTI again"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="dcmdb", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SERVICES:
        commands.add_parser(name, help=f"run the {name} service")
    commands.add_parser("up", help="run every service on this host, as separate processes")
    # Tools parse their own options, --help included.
    for name, (_function, summary) in TOOLS.items():
        commands.add_parser(name, help=summary, add_help=False)
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in TOOLS:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    try:
        if args.command == "up":
            from services.commands.up import run_all
            from shared.settings import CommonSettings, load_settings

            sys.exit(run_all(list(SERVICES), load_settings(CommonSettings).log_format))
        if args.command in TOOLS:
            module_name, _, function = TOOLS[args.command][0].partition(":")
            getattr(importlib.import_module(module_name), function)(rest)
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

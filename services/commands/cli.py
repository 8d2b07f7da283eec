"""The dcmdb command: one subcommand per service, up to run them all, and the tools.

Each service is imported only when its subcommand runs, so services never import each
other and a bad setting of one cannot stop another. The summaries are written here, not
read from the modules, for the same reason: dcmdb --help imports none of them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import NamedTuple

from shared.errors import ConfigurationError


class Command(NamedTuple):
    target: str  # a service's module (its main() runs it), or a tool's "module:function(argv)"
    summary: str  # its line in dcmdb --help: short enough for an 80-column terminal


SERVICES = {
    "receiver": Command(
        "services.receiver.main", "receive DICOM instances from the PACS and scanners"
    ),
    "sorter": Command(
        "services.sorter.main", "file each instance in its lab's folder and the catalog"
    ),
    "converter": Command("services.converter.main", "convert each completed series to NIfTI"),
    "api": Command("services.api.main", "serve the catalog and its files over a REST API"),
    "retriever": Command("services.retriever.main", "run the retrieval jobs, the nightly one too"),
    "retention": Command("services.retention.main", "evict the oldest studies when space runs low"),
    "notifier": Command("services.notifier.main", "tell labs' webhooks of ready studies and more"),
}
UP_SUMMARY = "run every service here, each in its own process"
TOOLS = {
    "dead-letters": Command(
        "services.commands.dead_letters:main", "count, show or requeue dead-lettered messages"
    ),
    "studies": Command("services.commands.studies:studies", "list the studies the API finds"),
    "download": Command("services.commands.download:download", "download a study through the API"),
    "retrieve": Command("services.commands.pacs:retrieve", "fetch studies from the PACS"),
    "pacs-check": Command("services.commands.pacs:pacs_check", "compare a study with the PACS"),
    "reconcile": Command(
        "services.commands.reconcile:main", "find what the PACS lacks of the scanners' studies"
    ),
    "reconvert": Command("services.commands.reconvert:main", "convert series to NIfTI again"),
    "keys": Command("services.commands.keys:main", "add, list or revoke API keys and their labs"),
    "desktops": Command(
        "services.commands.desktops:main", "add, list or remove the labs' DICOM desktops"
    ),
    "share": Command(
        "services.commands.share:main", "give the lab folders their Unix groups and modes"
    ),
    "audit": Command("services.commands.audit:audit", "show who read or changed what, and when"),
    "bids": Command(
        "services.commands.bids:main",
        "export a lab's BIDS dataset, or show and set its naming rules",
    ),
}
_INTRODUCTION = """\
dcmdb receives DICOM studies from the PACS, sorts them by lab, converts them to
NIfTI and serves them over HTTP."""


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command not in TOOLS:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    try:
        if args.command == "up":
            from services.commands.up import run_all
            from shared.settings import CommonSettings, load_settings

            sys.exit(run_all(list(SERVICES), load_settings(CommonSettings).log_format))
        if args.command in TOOLS:
            module_name, _, function = TOOLS[args.command].target.partition(":")
            getattr(importlib.import_module(module_name), function)(rest)
            return
        module = importlib.import_module(SERVICES[args.command].target)
        module.main()
    except ConfigurationError as exc:
        print(f"dcmdb {args.command}: configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


def summaries() -> dict[str, dict[str, str]]:
    """Every subcommand's summary line, services (up included) and tools apart."""
    return {
        "services": {name: service.summary for name, service in SERVICES.items()}
        | {"up": UP_SUMMARY},
        "tools": {name: tool.summary for name, tool in TOOLS.items()},
    }


def sentence(summary: str) -> str:
    """A summary as the first line of a command's own --help."""
    return f"{summary[0].upper()}{summary[1:]}."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcmdb",
        description=f"{_INTRODUCTION}\n\n{_command_list()}",
        epilog="Run dcmdb COMMAND --help for what a command does and its options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the list's columns
    )
    parser.add_argument("--version", action="version", version=f"dcmdb {_version()}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of the commands above"
    )
    for name, summary in summaries()["services"].items():
        commands.add_parser(name, description=sentence(summary))
    # Tools parse their own options, --help included.
    for name in TOOLS:
        commands.add_parser(name, add_help=False)
    return parser


def _command_list() -> str:
    """The commands in columns, grouped: argparse's own list wraps a long name's line."""
    groups = summaries()
    width = max(len(name) for group in groups.values() for name in group) + 2
    return "\n\n".join(
        "\n".join([f"{title}:", *(f"  {name:<{width}}{line}" for name, line in group.items())])
        for title, group in groups.items()
    )


def _version() -> str:
    try:
        return version("dcmdb")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


if __name__ == "__main__":
    main()

"""How the lab and PACS commands reach the REST API (dcmdb api), and how they fail.

They ask the API at DCMDB_API_URL with the key in DCMDB_API_KEY, or at --url with --key.
An error is one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn, TypeVar

from services.api.client import ApiError, Client

_C = TypeVar("_C", bound=Client)


def connection_options(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Asks the REST API (dcmdb api) at DCMDB_API_URL with the key in DCMDB_API_KEY, "
        "or at --url with --key."
    )
    parser.add_argument("--url", help="the API (default: $DCMDB_API_URL or 127.0.0.1:8000)")
    parser.add_argument("--key", help="an API key (default: $DCMDB_API_KEY)")


@contextmanager
def client_for(command: str, args: argparse.Namespace) -> Iterator[Client]:
    with connected(command, args, Client) as client:
        yield client


@contextmanager
def connected(command: str, args: argparse.Namespace, kind: type[_C]) -> Iterator[_C]:
    """A client of `kind` (a `Client` with more to ask) for the options of `args`."""
    try:
        client = kind(args.url, args.key)
    except ValueError as exc:
        fail(command, str(exc))
    with client:
        yield client


@contextmanager
def reporting(command: str) -> Iterator[None]:
    """What stops a command becomes one line on stderr and exit status 1."""
    try:
        yield
    except ApiError as exc:
        fail(command, str(exc))
    except BrokenPipeError:  # the reader went away (| head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        fail(command, f"{exc.strerror or exc}{where}")


def fail(command: str, message: str) -> NoReturn:
    print(f"dcmdb {command}: {message}", file=sys.stderr)
    sys.exit(1)

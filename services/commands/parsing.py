"""Argument parsers whose help reads as plain text in a terminal.

A tool's description is its summary line, then paragraphs: argparse would run them all into
one, so each paragraph is wrapped to the terminal on its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re


class _Paragraphs(argparse.HelpFormatter):
    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text  # super() does not work inside the generator below
        paragraphs = re.split(r"\n\s*\n", text.strip())
        return "\n\n".join(fill(paragraph, width, indent) for paragraph in paragraphs)


def command_parser(prog: str, description: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=prog, description=description, formatter_class=_Paragraphs)


def iso_time(text: str) -> str:
    """An option's ISO 8601 time, checked here and sent as typed."""
    try:
        dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return text


def count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a whole number of 0 or more: {text!r}")
    return int(text)

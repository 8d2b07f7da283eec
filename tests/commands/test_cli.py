"""The dcmdb command as a user types it: the installed console script, run as a process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from services.commands.cli import SERVICES, TOOLS, sentence, summaries
from tests.conftest import REPO

DCMDB = Path(sys.executable).with_name("dcmdb")
EVERY_COMMAND = [*SERVICES, "up", *TOOLS]


def dcmdb(*argv: str) -> subprocess.CompletedProcess[str]:
    if not DCMDB.is_file():
        pytest.fail(f"{DCMDB} is missing: uv sync installs the dcmdb console script")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCMDB_")}
    env["COLUMNS"] = "80"  # argparse wraps help to the terminal: a usual one
    return subprocess.run(
        [str(DCMDB), *argv], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_help_lists_every_command_with_a_one_line_summary() -> None:
    result = dcmdb("--help")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for group in summaries().values():
        for name, summary in group.items():
            listed = [line for line in lines if re.fullmatch(rf"  {re.escape(name)} +\S.*", line)]
            assert listed, f"{name} is not listed in dcmdb --help:\n{result.stdout}"
            assert listed[0].split(maxsplit=1)[1] == summary  # all of it, on that one line
    assert all(len(line) <= 80 for line in lines), result.stdout
    assert_plain(result.stdout)


@pytest.mark.parametrize("name", EVERY_COMMAND)
def test_each_command_has_plain_help_beginning_with_its_summary(name: str) -> None:
    """The line dcmdb --help gives a command is the first line of the command's own --help."""
    summary = {**summaries()["services"], **summaries()["tools"]}[name]
    result = dcmdb(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: dcmdb {name}")
    description = result.stdout.split("\n\n", 1)[1]  # after the usage
    assert description.splitlines()[0] == sentence(summary), result.stdout
    assert_plain(result.stdout)


def assert_plain(text: str) -> None:
    """No reST markup: ``literal``, `interpreted`, :role:`target`."""
    assert "``" not in text, text
    assert not re.search(r"`[^`\s]+`|:\w+:`", text), text


def test_version_is_the_project_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    result = dcmdb("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"dcmdb {project['version']}\n"


@pytest.mark.parametrize("argv", [["no-such-command"], [], ["receiver", "--no-such-option"]])
def test_a_wrong_command_line_exits_2_with_the_usage(argv: list[str]) -> None:
    result = dcmdb(*argv)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: dcmdb")
    assert result.stdout == ""

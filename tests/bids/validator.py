"""The official BIDS validator (the npm package `bids-validator`, which scripts/prepare --test
installs in .tools/), run on a dataset."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

VALIDATOR = Path(__file__).parents[2] / ".tools/node_modules/.bin/bids-validator"


def validate(root: Path) -> dict[str, Any]:
    """The validator's report (its --json) on the dataset at `root`."""
    if not VALIDATOR.is_file():
        pytest.fail(f"{VALIDATOR} is missing: scripts/prepare --test installs it")
    done = subprocess.run(
        [str(VALIDATOR), "--json", str(root)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        return json.loads(done.stdout)  # type: ignore[no-any-return]
    except json.JSONDecodeError:
        pytest.fail(f"bids-validator said no JSON (exit {done.returncode}): {done.stderr[-2000:]}")


def errors(report: dict[str, Any]) -> list[str]:
    return [
        f"{issue['key']}: {issue['reason']} ("
        + ", ".join(f["file"]["relativePath"] for f in issue.get("files", [])[:5] if f.get("file"))
        + ")"
        for issue in report["issues"]["errors"]
    ]


def assert_valid(root: Path) -> dict[str, Any]:
    """The validator's report, which must hold no error."""
    report = validate(root)
    assert errors(report) == [], f"{root}: {errors(report)}"
    return report

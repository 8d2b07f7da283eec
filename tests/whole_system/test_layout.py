"""The house rules that keep the code easy to find one's way in, checked on the tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

MAX_MODULE_LINES = 400


def test_services_import_only_shared_and_shared_no_service() -> None:
    # The contracts are in pyproject.toml ([tool.importlinter]).
    lint_imports = Path(sys.prefix) / "bin" / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_module_is_longer_than_a_few_screens() -> None:
    modules = [*REPO.glob("shared/**/*.py"), *REPO.glob("services/**/*.py")]
    long = {
        str(path.relative_to(REPO)): lines
        for path in modules
        if "migrations/versions" not in path.as_posix()
        and (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert modules and not long, f"modules over {MAX_MODULE_LINES} lines: {long}"

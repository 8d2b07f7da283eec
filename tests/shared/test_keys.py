"""The keys file: digests only, its mistakes named without a digest, and a running KeyRing
that takes every change at once but never a broken file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from shared import keys
from shared.errors import ConfigurationError
from tests.support import add_key


def test_the_file_holds_digests_not_keys(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key = add_key(path, "smith-lab", ["SMITH_JOHN"])
    text = path.read_text()
    assert key not in text and keys.digest(key) in text
    assert path.stat().st_mode & 0o777 == 0o640
    [entry] = keys.load(path).keys
    assert (entry.name, entry.scope, entry.labs) == ("smith-lab", "read", ("SMITH_JOHN",))


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("keys: [{name: a, scope: write, labs: all, sha256: " + "0" * 64 + "}]", "keys.0.scope"),
        ("keys: [{name: a, scope: read, labs: [], sha256: " + "0" * 64 + "}]", "keys.0.labs"),
        ("keys: [{name: a, scope: read, labs: [../etc], sha256: " + "0" * 64 + "}]", "labs"),
        ("keys: [{name: a, scope: read, labs: all, sha256: abc}]", "keys.0.sha256"),
        ("keys: [{name: a, scope: read, labs: all}]", "keys.0.sha256"),
        # An admin reads every lab's audit trail and webhooks: it sees every lab.
        ("keys: [{name: a, scope: admin, labs: [X], sha256: " + "a" * 64 + "}]", "every lab"),
        ("keys: {", "not YAML"),
    ],
)
def test_a_malformed_file_is_named_and_refused(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=str(path)) as failure:
        keys.load(path)
    assert named in str(failure.value)


def test_a_name_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    add_key(path, "twice", None)
    path.write_text(path.read_text() + path.read_text().split("keys:\n", 1)[1].split("groups")[0])
    with pytest.raises(ConfigurationError, match="twice"):
        keys.load(path)


def test_a_running_keyring_takes_changes_but_keeps_its_keys_through_a_broken_edit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keys.yaml"
    first = add_key(path, "first", ["LAB_A"])
    ring = keys.KeyRing(path, {"x" * 20: keys.Scope.ADMIN})
    assert ring.caller(first) == keys.Caller("first", keys.Scope.READ, frozenset({"LAB_A"}))
    assert ring.caller("x" * 20) == keys.Caller("DCMDB_API_KEYS #1", keys.Scope.ADMIN, None)
    second = add_key(path, "second", None, scope="admin")
    assert ring.caller(second) is not None and ring.caller(second).is_admin  # type: ignore[union-attr]
    good = path.read_text()
    with caplog.at_level(logging.ERROR, "dcmdb.keys"):
        path.write_text(good.replace("scope: read", "scope: reed"))
        assert ring.caller(first) is not None  # the keys read before stay in force
    assert "what was read before stays in force" in caplog.text
    assert keys.digest(first) not in caplog.text
    path.write_text(good)  # mended, and then "first" revoked
    with keys.editing(path) as document:
        document.keys = [entry for entry in document.keys if entry.name != "first"]
    assert ring.caller(first) is None and ring.caller(second) is not None
    assert ring.caller("not-a-key") is None


def test_a_lab_group_comes_from_the_file_or_the_default() -> None:
    document = keys.KeysDocument(groups={"SMITH_JOHN": "smithlab"})
    assert keys.lab_group(document, "SMITH_JOHN") == "smithlab"
    assert keys.lab_group(document, "DOE_JANE") == "dcmdb-DOE_JANE"

"""dcmdb desktops: the labs' DICOM desktops in the keys file, as a running receiver finds
them: by calling AE title and host, changes taken without a restart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.receiver.desktops import Desktops
from shared import keys
from shared.errors import ConfigurationError


def _desktops(keys_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DCMDB_KEYS_FILE": str(keys_file), "DCMDB_DATA_DIR": str(keys_file.parent)}
    return subprocess.run(
        [sys.executable, "-m", "services.commands.cli", "desktops", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_add_list_remove_and_a_running_receiver_follows(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    desktops = Desktops(keys.KeysFile(path))
    assert desktops.calling("SMITH_HOROS", "127.0.0.1") is None

    added = _desktops(
        path, "add", "SMITH_HOROS", "--host", "localhost", "--port", "11113", "--lab", "SMITH_JOHN"
    )
    assert added.returncode == 0, added.stderr
    found = desktops.calling("SMITH_HOROS", "127.0.0.1")
    assert found is not None and found.lab_set == frozenset({"SMITH_JOHN"}) and found.port == 11113
    assert desktops.calling("SMITH_HOROS", "10.9.9.9") is None  # the right title, another host
    assert desktops.calling("JONES_HOROS", "127.0.0.1") is None
    assert desktops.destination("SMITH_HOROS") == found

    listed = _desktops(path, "list")
    assert "SMITH_HOROS" in listed.stdout and "localhost:11113" in listed.stdout
    assert "SMITH_JOHN" in listed.stdout

    twice = _desktops(path, "add", "SMITH_HOROS", "--host", "h", "--port", "1", "--all-labs")
    assert twice.returncode == 2 and "exists" in twice.stderr

    assert _desktops(path, "remove", "SMITH_HOROS").returncode == 0
    assert desktops.calling("SMITH_HOROS", "127.0.0.1") is None
    gone = _desktops(path, "remove", "SMITH_HOROS")
    assert gone.returncode == 1 and "no desktop" in gone.stderr


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    for args, named in [
        (["A\\B", "--host", "h", "--port", "104", "--all-labs"], "AETITLE"),
        (["ABCDEFGHIJKLMNOPQ", "--host", "h", "--port", "104", "--all-labs"], "AETITLE"),
        (["HOROS", "--host", "h", "--port", "0", "--all-labs"], "--port"),
        (["HOROS", "--host", "h", "--port", "104", "--lab", "../etc"], "--lab"),
    ]:
        result = _desktops(path, "add", *args)
        assert result.returncode == 2 and named in result.stderr, result.stderr
    assert not path.exists() or not keys.load(path).desktops


def test_the_keys_file_refuses_an_ae_title_twice(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    entry = "{ae_title: HOROS, host: h, port: 104, labs: all}"
    path.write_text(f"desktops: [{entry}, {entry}]\n")
    with pytest.raises(ConfigurationError, match="AE title twice"):
        keys.load(path)


def test_a_receiver_starts_on_a_broken_keys_file_and_finds_desktops_once_mended(
    tmp_path: Path,
) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text("desktops: [{ae_title: HOROS, host: localhost}]\n")  # no port, no labs
    with pytest.raises(ConfigurationError):
        keys.KeysFile(path)  # the API refuses to start on it
    desktops = Desktops(keys.KeysFile(path, tolerant=True))
    assert desktops.calling("HOROS", "127.0.0.1") is None
    path.write_text("desktops: [{ae_title: HOROS, host: localhost, port: 104, labs: all}]\n")
    assert desktops.calling("HOROS", "127.0.0.1") is not None

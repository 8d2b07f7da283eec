"""The share on disk, for real: Unix groups and unprivileged users made on this machine.

Studies of two labs are filed by the sorter's code and converted by the converter's into a
data directory the users can reach; then commands run as a user in lab A's group
(`setpriv`) and read lab A's files and nothing of lab B's. ``dcmdb share`` runs as the
installed console script. The groups and users are made per test, with unique names, and
removed after it (these tests run as root, as scripts/test does).
"""

from __future__ import annotations

import grp
import logging
import multiprocessing
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from services.converter.conversion import convert_series
from services.sorter.filing import Filer
from shared.bids.dataset import make_dataset
from shared.catalog.database import create_catalog_engine, open_catalog, session_factory
from tests.arrivals import arrive, dicom_files, with_new_uids
from tests.conftest import TESTDATA, require_tool

pytestmark = pytest.mark.integration

SERIES = "d2n_hitachi_mr"  # 4 small MR slices
DIFFUSION = "siemens_xa30_dwi_enhanced_pa"  # NIfTI, sidecar, .bval and .bvec
DCMDB = Path(sys.executable).with_name("dcmdb")


@dataclass
class Accounts:
    """Unix groups and users made for one test; `remove` deletes them all."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    groups: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)

    def group(self, name: str) -> int:
        self.groups.append(name)
        subprocess.run([require_tool("groupadd"), name], check=True)
        return grp.getgrnam(name).gr_gid

    def user(self, name: str, *groups: str) -> str:
        """A user who cannot log in, in its own group and in `groups`."""
        self.users.append(name)
        command = [require_tool("useradd"), "--no-create-home", "--shell", "/usr/sbin/nologin"]
        subprocess.run([*command, *(["--groups", ",".join(groups)] if groups else []), name],
                       check=True)  # fmt: skip
        return name

    def remove(self) -> None:
        for user in self.users:
            subprocess.run([require_tool("userdel"), user], check=False)
        for group in self.groups:
            subprocess.run([require_tool("groupdel"), group], check=False, capture_output=True)


@pytest.fixture
def accounts() -> Iterator[Accounts]:
    if os.geteuid() != 0:
        pytest.fail("the share's tests make Unix users and groups: run them as root")
    made = Accounts()
    yield made
    made.remove()


@pytest.fixture
def data() -> Iterator[Path]:
    """A data directory other users can pass through (pytest's tmp_path is root's alone)."""
    top = Path(tempfile.mkdtemp(prefix="dcmdb-share-"))
    top.chmod(0o755)
    yield top / "data"
    shutil.rmtree(top)


@dataclass
class Labs:
    """The sorter's filing and the converter's conversion on one data directory."""

    data: Path
    work: Path
    filer: Filer

    @property
    def archive(self) -> Path:
        return self.data / "archive"

    def file_series(self, physician: str, folder: str = SERIES) -> list[Path]:
        """A new study of one series (the test data's, under new UIDs) for `physician`."""
        study, series = generate_uid(), generate_uid()
        events = [
            arrive(
                with_new_uids(p, study=study, series=series, ReferringPhysicianName=physician),
                self.data,
            )
            for p in dicom_files(TESTDATA, folder)
        ]
        return [
            self.archive / o.filed.archive_path for o in self.filer.file_batch(events) if o.filed
        ]

    def convert(self, files: list[Path]) -> None:
        series_folder = files[0].parent
        result = convert_series(
            files,
            series_folder.parent / "nifti",
            series_folder.name,
            study_instance_uid="1.2.3",
            series_instance_uid="1.2.3.4",
            work_dir=self.work,
        )
        assert result.outputs, result.reason


def labs_on(data: Path, work: Path, groups: dict[str, str] | None = None) -> Labs:
    data.mkdir(parents=True, exist_ok=True)
    if groups:
        lines = "".join(f"  {folder}: {group}\n" for folder, group in groups.items())
        (data / "keys.yaml").write_text(f"groups:\n{lines}")
    _, sessions = open_catalog(f"sqlite:///{data / 'catalog.sqlite'}", writer=True)
    return Labs(data, work, Filer(sessions, data, data / "archive", data / "quarantine"))


def as_user(user: str, *command: str) -> subprocess.CompletedProcess[bytes]:
    """`command` run as `user`, with that user's groups and nothing of root's."""
    setpriv = [require_tool("setpriv"), f"--reuid={user}", f"--regid={user}", "--init-groups"]
    return subprocess.run([*setpriv, *command], capture_output=True, timeout=30, check=False)


def assert_readable_by(user: str, path: Path) -> None:
    result = as_user(user, "cat", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == path.read_bytes()


def assert_closed_to(user: str, *command: str) -> None:
    result = as_user(user, *command)
    assert result.returncode != 0 and b"Permission denied" in result.stderr, result


def assert_shared(lab: Path, gid: int) -> Counter[str]:
    """Every folder from `lab` down 2750 and every file 0640, all in group `gid`; how many
    files of each kind (.dcm, .gz, .json, .bval, .bvec)."""
    kinds: Counter[str] = Counter()
    for current, _, files in os.walk(lab):
        info = os.stat(current)
        assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o2750, gid), current
        for name in files:
            info = os.stat(Path(current, name))
            assert (stat.S_IMODE(info.st_mode), info.st_gid) == (0o640, gid), (current, name)
            kinds[Path(name).suffix] += 1
    return kinds


def dcmdb_share(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if not DCMDB.is_file():
        pytest.fail(f"{DCMDB} is missing: uv sync installs the dcmdb console script")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DCMDB_")}
    env["DCMDB_DATA_DIR"] = str(data)
    return subprocess.run(
        [str(DCMDB), "share", *args], env=env, capture_output=True, text=True, timeout=120
    )


def table(output: str) -> dict[str, list[str]]:
    """dcmdb share's listing: lab folder -> group, whether it exists, entries changed."""
    header, *lines = output.splitlines()
    assert header.split() == ["LAB", "FOLDER", "GROUP", "GROUP", "IS", "CHANGED"]
    return {line.split()[0]: line.split()[1:] for line in lines}


def test_a_lab_user_reads_its_lab_and_nothing_of_another(
    accounts: Accounts, data: Path, tmp_path: Path
) -> None:
    lab_a, lab_b = f"LAB_A_{accounts.tag}", f"LAB_B_{accounts.tag}"
    gid_a = accounts.group(f"dcmdb-{lab_a}")  # the default name
    group_b = f"dt{accounts.tag}b"  # named in the keys file
    gid_b = accounts.group(group_b)
    reader = accounts.user(f"dt{accounts.tag}r", f"dcmdb-{lab_a}")
    labs = labs_on(data, tmp_path, {lab_b: group_b})

    a_series, a_diffusion = (
        labs.file_series(f"LAB^A^{accounts.tag}"),
        labs.file_series(f"LAB^A^{accounts.tag}", DIFFUSION),
    )
    b_series = labs.file_series(f"LAB^B^{accounts.tag}")
    for files in (a_series, a_diffusion, b_series):
        labs.convert(files)

    assert stat.S_IMODE(os.stat(labs.archive).st_mode) == 0o755
    kinds = assert_shared(labs.archive / lab_a, gid_a)
    assert {".dcm", ".gz", ".json", ".bval", ".bvec"} <= set(kinds), kinds
    assert assert_shared(labs.archive / lab_b, gid_b)[".gz"] == 1

    nifti = a_diffusion[0].parent.parent / "nifti"
    for path in (a_series[0], a_diffusion[-1], *nifti.iterdir()):
        assert_readable_by(reader, path)
    assert as_user(reader, "ls", str(labs.archive / lab_a)).returncode == 0

    b_study = b_series[0].parent.parent
    assert_closed_to(reader, "ls", str(labs.archive / lab_b))
    assert_closed_to(reader, "ls", str(b_study))
    assert_closed_to(reader, "cat", str(b_series[0]))
    assert_closed_to(reader, "cat", str(next((b_study / "nifti").glob("*.nii.gz"))))


def test_a_lab_whose_group_is_missing_is_the_services_alone_with_one_warning(
    accounts: Accounts, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lab = f"LAB_C_{accounts.tag}"
    other = accounts.user(f"dt{accounts.tag}o")
    labs = labs_on(data, tmp_path)
    with caplog.at_level(logging.WARNING, logger="dcmdb.share"):
        first = labs.file_series(f"LAB^C^{accounts.tag}")
        second = labs.file_series(f"LAB^C^{accounts.tag}")

    assert len(first) == len(second) == 4  # filed all the same
    assert assert_shared(labs.archive / lab, os.getegid())[".dcm"] == 8
    [warning] = [r.getMessage() for r in caplog.records if r.name == "dcmdb.share"]
    assert lab in warning and f"groupadd dcmdb-{lab}" in warning and "dcmdb share" in warning
    assert_closed_to(other, "ls", str(labs.archive / lab))


def test_a_keys_file_that_cannot_be_read_files_all_the_same(
    accounts: Accounts, data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gid = accounts.group(f"dcmdb-LAB_D_{accounts.tag}")
    labs = labs_on(data, tmp_path)
    (data / "keys.yaml").write_text("groups: [not, a, mapping\n")
    with caplog.at_level(logging.WARNING, logger="dcmdb.share"):
        labs.file_series(f"LAB^D^{accounts.tag}")
    # Not the default group, which exists: the file may name another one for this lab.
    assert gid != os.getegid()
    assert assert_shared(labs.archive / f"LAB_D_{accounts.tag}", os.getegid())[".dcm"] == 4
    [warning] = [r.getMessage() for r in caplog.records if r.name == "dcmdb.share"]
    assert "keys file" in warning and "keeps this service's group" in warning


def test_dcmdb_share_mends_an_archive_written_before(
    accounts: Accounts, data: Path, tmp_path: Path
) -> None:
    lab_a, lab_b = f"LAB_A_{accounts.tag}", f"LAB_B_{accounts.tag}"
    gid_a = accounts.group(f"dcmdb-{lab_a}")
    reader = accounts.user(f"dt{accounts.tag}r", f"dcmdb-{lab_a}")
    labs = labs_on(data, tmp_path)
    a_series = labs.file_series(f"LAB^A^{accounts.tag}")
    labs.convert(a_series)
    b_series = labs.file_series(f"LAB^B^{accounts.tag}")
    # As an older dcmdb left it: folders 0755, NIfTI 0644, all in the service's group.
    for current, _, files in os.walk(labs.archive):
        os.chown(current, -1, 0)
        os.chmod(current, 0o755)
        for name in files:
            os.chown(Path(current, name), -1, 0)
            os.chmod(Path(current, name), 0o644)
    labs.archive.chmod(0o700)

    missing = dcmdb_share(data)
    assert missing.returncode == 1
    rows = table(missing.stdout)
    # 4 folders (lab, study, series, nifti), 4 DICOM files, the NIfTI and its sidecar
    assert rows[lab_a] == [f"dcmdb-{lab_a}", "exists", "10"]
    assert rows[lab_b] == [f"dcmdb-{lab_b}", "missing", "7"]
    assert f"groupadd dcmdb-{lab_b}" in missing.stderr
    assert stat.S_IMODE(os.stat(labs.archive).st_mode) == 0o755
    assert assert_shared(labs.archive / lab_a, gid_a)[".gz"] == 1
    assert assert_shared(labs.archive / lab_b, 0)[".dcm"] == 4  # modes set, group kept
    assert_readable_by(reader, a_series[0])
    assert_readable_by(reader, next(a_series[0].parent.parent.glob("nifti/*.json")))
    assert_closed_to(reader, "ls", str(labs.archive / lab_b))

    accounts.groups.append(f"dcmdb-{lab_b}")  # made by dcmdb share: removed after the test
    created = dcmdb_share(data, "--create-groups")
    assert created.returncode == 0, created.stderr
    assert table(created.stdout)[lab_b][:2] == [f"dcmdb-{lab_b}", "created"]
    assert assert_shared(labs.archive / lab_b, grp.getgrnam(f"dcmdb-{lab_b}").gr_gid)
    assert b_series[0].is_file()

    again = dcmdb_share(data)
    assert again.returncode == 0, again.stderr
    assert [row[-1] for row in table(again.stdout).values()] == ["0", "0"]


def _file_as(user: str, labs: Labs, physician: str, result: Connection) -> None:
    """In a forked child: drop to `user` (root's groups too), file a study, send back what
    the share logged."""
    account = pwd.getpwnam(user)
    os.setgroups([])
    os.setresgid(account.pw_gid, account.pw_gid, account.pw_gid)
    os.setresuid(account.pw_uid, account.pw_uid, account.pw_uid)
    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("dcmdb.share").addHandler(handler)
    try:
        labs.filer = Filer(
            session_factory(
                create_catalog_engine(f"sqlite:///{labs.data / 'catalog.sqlite'}", writer=True)
            ),
            labs.data,
            labs.archive,
            labs.data / "quarantine",
        )
        filed = labs.file_series(physician)
        result.send((filed, warnings))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        result.send(exc)
    result.close()


def test_a_sorter_outside_the_labs_groups_keeps_new_labs_to_itself_and_files_into_mended_ones(
    accounts: Accounts, data: Path, tmp_path: Path
) -> None:
    """The sorter as an unprivileged user (as in the container image) that is in no lab's
    group: a new lab folder stays its own with a warning; once ``dcmdb share`` gave the
    folder its group, what it files there takes that group (copied, not linked)."""
    lab = f"LAB_E_{accounts.tag}"
    gid = accounts.group(f"dcmdb-{lab}")
    service = accounts.user(f"dt{accounts.tag}s")
    service_gid = pwd.getpwnam(service).pw_gid
    labs_on(tmp_path / "warm", tmp_path).file_series("WARM")  # imports what filing needs
    labs = labs_on(data, tmp_path)
    for current, _, files in os.walk(data):
        for path in (current, *(os.path.join(current, f) for f in files)):
            os.chown(path, pwd.getpwnam(service).pw_uid, service_gid)

    def file_as_service() -> tuple[list[Path], list[str]]:
        context = multiprocessing.get_context("fork")
        receiving, sending = context.Pipe(duplex=False)
        child = context.Process(
            target=_file_as, args=(service, labs, f"LAB^E^{accounts.tag}", sending)
        )
        child.start()
        sending.close()
        if not receiving.poll(120):
            child.kill()
            pytest.fail("the sorter as the service's user did not answer in 120 s")
        answer = receiving.recv()
        child.join(30)
        if isinstance(answer, BaseException):
            raise answer
        return answer  # type: ignore[no-any-return]

    first, warnings = file_as_service()
    assert len(first) == 4
    assert assert_shared(labs.archive / lab, service_gid)[".dcm"] == 4
    [warning] = warnings
    assert f"dcmdb-{lab}" in warning and "not in the group" in warning

    mended = dcmdb_share(data)
    assert mended.returncode == 0, mended.stderr
    assert assert_shared(labs.archive / lab, gid)

    second, warnings = file_as_service()
    assert warnings == [] and len(second) == 4
    assert assert_shared(labs.archive / lab, gid)[".dcm"] == 8
    assert all(os.stat(p).st_uid == pwd.getpwnam(service).pw_uid for p in second)


def test_a_labs_bids_dataset_elsewhere_is_its_labs_alone(
    accounts: Accounts, data: Path, tmp_path: Path
) -> None:
    """Under DCMDB_BIDS_DIR, as in the archive, a lab's BIDS dataset is made in its group."""
    lab_a, lab_b = f"LAB_A_{accounts.tag}", f"LAB_B_{accounts.tag}"
    gid_a, gid_b = accounts.group(f"dcmdb-{lab_a}"), accounts.group(f"dcmdb-{lab_b}")
    reader = accounts.user(f"dt{accounts.tag}r", f"dcmdb-{lab_a}")
    labs_on(data, tmp_path)
    bids_dir = data / "bids"
    bids_dir.mkdir(mode=0o755)
    keys = data / "keys.yaml"
    for lab, gid in ((lab_a, gid_a), (lab_b, gid_b)):
        for where in (None, bids_dir):
            root = make_dataset(data / "archive", where, lab, keys)
            assert (stat.S_IMODE(os.stat(root).st_mode), os.stat(root).st_gid) == (0o2750, gid)
    assert as_user(reader, "ls", str(bids_dir / lab_a)).returncode == 0
    assert_closed_to(reader, "ls", str(bids_dir / lab_b))
    assert_closed_to(reader, "ls", str(data / "archive" / lab_b / "bids"))

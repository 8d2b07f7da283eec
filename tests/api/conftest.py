"""The pipeline-filled catalog the API tests share (see `tests.api.pipeline`): built once
per test worker and catalog backend, for every module of the API tests that asks for it."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.api.pipeline import (
    ADMIN_KEY,
    READ_KEY,
    Api,
    catalog,
    everything_converted,
    vhost,
    write_lab_keys,
)
from tests.conftest import TESTDATA, queue_drained
from tests.support import SLOW_POLL, wait_for
from tests.system import Dcmdb, dicom_files, send_dicom


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp(f"api-{request.param}")
    with catalog(request.param, root) as url, vhost() as broker:
        dcmdb = Dcmdb(
            root / "data",
            broker,
            url,
            extra_env={
                "DCMDB_STABLE_AGE": "2",
                "DCMDB_API_KEYS": f"{READ_KEY}:read,{ADMIN_KEY}:admin",
            },
        )
        labs = write_lab_keys(dcmdb.data_dir / "keys.yaml")
        dcmdb.start("up")
        try:
            dcmdb.wait_until_listening()
            client = httpx.Client(base_url=f"http://127.0.0.1:{dcmdb.api_port}", timeout=60)
            api = Api(dcmdb, client, labs)
            send_dicom(dcmdb.port, dicom_files(TESTDATA))
            wait_for(
                lambda: everything_converted(api),
                600,
                "every study filed and converted",
                SLOW_POLL,
            )
            # The last outcomes reach the BIDS views after the catalog has them; the broker's
            # counts are 5 s old at most.
            time.sleep(6)
            wait_for(lambda: queue_drained(broker, "dcmdb.bids"), 120, "the BIDS views kept")
            yield api
            client.close()
        finally:
            dcmdb.stop()

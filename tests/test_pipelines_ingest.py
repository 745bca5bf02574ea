"""The ingest flow against a real (temporary) Prefect API: synthetic periods, "latest"
windows, and real MRMS files read over a loopback HTTP server through fsspec, with
injected 503s (retried with back-off), a truncated file (failed for good, logged, not
retried) and a file that never comes (failed after the retries, tried again later)."""

from __future__ import annotations

import http.server
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from metnet.archive import Archive
from metnet.config import save_config
from metnet.sources import get_source
from pipelines.common import read_jsonl
from pipelines.demo import demo_config
from pipelines.ingest import failure_log_path, ingest_flow, is_transient
from tests.archive_fixtures import default_times, make_archive

pytestmark = pytest.mark.usefixtures("prefect_api")

TINY_VARIABLES = ["precipitation_rate", "abi_c13"]


class FlakyServer:
    """A loopback HTTP server for ``files`` under ``/mrms/`` (with an HTML index).

    ``fail_first[name] = k``: the first ``k`` requests for that file get 503 (-1: all).
    ``requests`` counts requests per file name, ``failures`` the 503s sent.
    """

    def __init__(self, files: dict[str, bytes], fail_first: dict[str, int]):
        self.files, self.fail_first = files, dict(fail_first)
        self.requests: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # http.server's naming
                name = self.path.rstrip("/").rsplit("/", 1)[-1]
                if name == "mrms":
                    body = "".join(f'<a href="{n}">{n}</a>\n' for n in server.files).encode()
                    return self._send(200, body)
                if name not in server.files:
                    return self._send(404, b"")
                with lock:
                    server.requests[name] += 1
                    k = server.fail_first.get(name, 0)
                    fail = k < 0 or server.requests[name] <= k
                    server.failures[name] += fail
                self._send(503, b"") if fail else self._send(200, server.files[name])

            do_HEAD = do_GET

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/mrms/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _run_counts(state) -> dict[str, int]:
    """``task run name -> run_count`` of the flow run behind ``state`` (from the API)."""
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {run.name: run.run_count for run in runs}


def test_is_transient_classifies_the_source_messages():
    url = "http://h/PrecipRate_00.00_20190610-000400.grib2"
    assert is_transient(f"{url}: cannot read the URL: not found or unreachable (ClientResponseError: 503, message='Service Unavailable')")
    assert is_transient(f"{url}: cannot read the URL (ClientResponseError: 429, message='Too Many Requests')")
    assert is_transient(f"{url}: cannot read the URL (TimeoutError: )")
    assert is_transient("s3://noaa-mrms-pds/CONUS: cannot list (ClientError: SlowDown)")
    assert not is_transient(f"{url}: cannot read the URL (ClientResponseError: 403, message='Forbidden')")
    assert not is_transient(f"{url}: no complete GRIB2 message (truncated or not GRIB2)")
    assert not is_transient("/data/PrecipRate_00.00_20190610-000400.grib2: file not found")


def test_synthetic_period_matches_the_fixture_archive_and_reruns_skip(tmp_path):
    times = default_times()
    store = str(tmp_path / "flow.zarr")
    result = ingest_flow(
        store, ["synthetic://seed=0"], source="synthetic", start="2019-06-10T00:00",
        end="2019-06-10T00:38", source_options={"variables": TINY_VARIABLES}, preset="tiny",
    )  # fmt: skip
    assert result["files_found"] == len(times) == 20
    assert result["times_written"] == [str(np.datetime64(t, "m")) for t in times]
    assert result["failed"] == [] and result["skipped"] == []
    assert result["static_written"] == ["latitude", "longitude"]

    # The flow's archive holds what the fixture writes directly from the same generator.
    ours = Archive.open(store)
    theirs = make_archive(tmp_path, satellite_times=times)
    for v in TINY_VARIABLES:
        np.testing.assert_array_equal(ours.available_times(v), times)
        np.testing.assert_array_equal(ours.read(v, times, 0, 0, 128), theirs.read(v, times, 0, 0, 128))

    again = ingest_flow(
        store, ["synthetic://seed=0"], source="synthetic", start="2019-06-10T00:00",
        end="2019-06-10T00:38", source_options={"variables": TINY_VARIABLES},
        return_state=True,
    )  # fmt: skip
    assert again.result()["skipped"] == result["written"]
    assert again.result()["written"] == []
    assert "ingest-file" not in " ".join(_run_counts(again))  # no task for ingested files

    latest = ingest_flow(
        str(tmp_path / "latest.zarr"), ["synthetic://seed=0"], source="synthetic",
        latest_minutes=10, now="2019-06-10T12:31:30", source_options={"variables": TINY_VARIABLES},
        preset="tiny",
    )  # fmt: skip
    assert latest["times_written"] == [f"2019-06-10T12:{m}" for m in (22, 24, 26, 28, 30)]


def test_user_errors_fail_the_flow_with_a_clear_message(tmp_path):
    state = ingest_flow(
        str(tmp_path / "a.zarr"), ["synthetic://"], source="synthetic", latest_minutes=10,
        start="2019-06-10T00:00", preset="tiny", return_state=True,
    )  # fmt: skip
    assert "give either latest_minutes or start/end, not both" in str(state.result(raise_on_failure=False))
    state = ingest_flow(str(tmp_path / "none.zarr"), ["synthetic://"], source="synthetic", return_state=True)
    message = str(state.result(raise_on_failure=False))
    assert "none.zarr: no archive there" in message and "give preset or config_file to create it" in message
    state = ingest_flow(
        str(tmp_path / "a.zarr"), ["synthetic://"], source="synthetic", start="yesterday",
        preset="tiny", return_state=True,
    )  # fmt: skip
    assert "start: not a time: 'yesterday'" in str(state.result(raise_on_failure=False))


def test_http_ingest_retries_transient_errors_and_logs_permanent_ones(mrms_files, tmp_path):
    good, truncated, absent = (Path(f).name for f in mrms_files[:3])
    whole = Path(mrms_files[1]).read_bytes()
    server = FlakyServer(
        {good: Path(mrms_files[0]).read_bytes(), truncated: whole[: len(whole) // 2], absent: whole},
        fail_first={good: 2, absent: -1},
    )
    config = tmp_path / "grid.yaml"
    save_config(demo_config(real_data=True), config)  # a grid where the sample rains
    store = str(tmp_path / "archive.zarr")
    kwargs = {
        "source": "mrms", "config_file": str(config), "retries": 2, "backoff_seconds": 0.1,
        "return_state": True,
    }
    try:
        state = ingest_flow(store, [server.url], **kwargs)
        result = state.result()
        runs = _run_counts(state)

        # The file that failed twice was retried (with back-off) and is in the archive.
        assert result["written"] == [server.url + good]
        assert server.failures[good] == 2
        assert runs[f"ingest {server.url}{good}"] >= 2
        archive = Archive.open(store)
        expected = get_source("mrms").read(str(mrms_files[0]), archive.grid)["precipitation_rate"].values
        got = archive.read("precipitation_rate", expected.shape[0] * [np.datetime64("2019-06-10T00:00")], 0, 0, 128)
        np.testing.assert_allclose(got, expected, atol=0.0251)  # the archive's 0.05 mm/h steps
        assert np.nanmax(got) > 5  # it rains there

        # The truncated file failed once, for good; the absent one after every retry.
        failed = {f["path"].rsplit("/", 1)[-1]: f for f in result["failed"]}
        assert set(failed) == {truncated, absent}
        assert "no complete GRIB2 message (truncated or not GRIB2)" in failed[truncated]["reason"]
        assert failed[truncated]["path"] in failed[truncated]["reason"]  # the message names it
        assert not failed[truncated]["transient"]
        assert runs[f"ingest {server.url}{truncated}"] == 1
        assert "503" in failed[absent]["reason"]
        assert failed[absent]["reason"].endswith("(still failing after 2 retries)")
        assert failed[absent]["transient"]
        assert runs[f"ingest {server.url}{absent}"] == 3
        log = read_jsonl(failure_log_path(store))
        assert {(r["path"], r["transient"]) for r in log} == {
            (server.url + truncated, False), (server.url + absent, True),
        }  # fmt: skip
        assert "failed:        2" in result["report"]

        # Next run: the ingested file and the known-bad one are not requested again; the
        # transient failure is tried again.
        requests = dict(server.requests)
        again = ingest_flow(store, [server.url], **kwargs).result()
        assert again["skipped"] == [server.url + good]
        assert server.requests[good] == requests[good]
        assert server.requests[truncated] == requests[truncated]
        assert server.requests[absent] > requests[absent]
        assert "failed permanently before" in {
            f["path"]: f["reason"] for f in again["failed"]
        }[server.url + truncated]

        # retry_failed: the known-bad file is attempted again.
        ingest_flow(store, [server.url], retry_failed=True, **kwargs)
        assert server.requests[truncated] > requests[truncated]
    finally:
        server.close()

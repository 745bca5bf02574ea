"""The backfill flow against a real (temporary) Prefect API: resuming after a real kill
of ``metnet backfill`` redoes only the missing times, missing inputs are reported, the
dask task runner (a LocalCluster of worker processes) gives the thread runner's outputs,
and a tag concurrency limit on the server bounds the forecasts running at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from itertools import pairwise

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    TaskRunFilter,
    TaskRunFilterStartTime,
    TaskRunFilterTags,
)
from typer.testing import CliRunner

from metnet.cli import app
from pipelines.backfill import backfill_flow, forecast_times, make_task_runner
from pipelines.common import stamp
from pipelines.forecast import FORECAST_TAG, OutputLayout
from tests.archive_fixtures import default_times, make_archive
from tests.pipeline_fixtures import forecast_values, make_checkpoint

#: 16 x 16 km (2 x 2 tiles of the tiny model): quick forecasts.
BBOX = [48_000.0, 1_536_000.0, 64_000.0, 1_552_000.0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A synthetic archive with radar 00:00-00:38 except 00:30, and a checkpoint."""
    tmp = tmp_path_factory.mktemp("backfill")
    times = default_times()
    archive = make_archive(tmp, times=times[times != np.datetime64("2019-06-10T00:30")])
    return archive, make_checkpoint(archive, tmp / "model.pt")


def _stores(outputs) -> dict:
    """Finished forecast stores -> mtime of their root metadata (written once, first)."""
    folder = outputs / "forecasts"
    if not folder.exists():
        return {}
    return {p.name: (p / "zarr.json").stat().st_mtime_ns for p in folder.glob("*.zarr")}


def test_forecast_times_and_runner_errors():
    times = forecast_times("2019-06-10T00:10", "2019-06-10T00:30", 10)
    np.testing.assert_array_equal(
        times, np.array(["2019-06-10T00:10", "2019-06-10T00:20", "2019-06-10T00:30"], "datetime64[ns]")
    )
    assert forecast_times("2019-06-10T00:10", "2019-06-10T00:29", 10).size == 2
    with pytest.raises(ValueError, match="end 2019-06-10T00:00 is before start 2019-06-10T00:10"):
        forecast_times("2019-06-10T00:10", "2019-06-10T00:00", 10)
    with pytest.raises(ValueError, match="interval_minutes must be positive, got 0"):
        forecast_times("2019-06-10T00:10", "2019-06-10T00:20", 0)
    with pytest.raises(ValueError, match="start: not a time: 'soon'"):
        forecast_times("soon", "2019-06-10T00:20", 10)
    with pytest.raises(ValueError, match="unknown task runner 'ray'; valid: threads, dask"):
        make_task_runner("ray", 2)
    with pytest.raises(ValueError, match="max_workers must be positive, got 0"):
        make_task_runner("threads", 0)


def test_resume_after_kill_does_only_the_missing_times(inputs, tmp_path, prefect_api):
    archive, ckpt = inputs
    outputs = tmp_path / "out"
    args = [
        "--archive", archive.store, "--checkpoint", str(ckpt), "--out", str(outputs),
        "--start", "2019-06-10T00:10", "--end", "2019-06-10T00:38", "--every", "2",
        "--max-workers", "1", "--chunk-size", "4", "--bbox", ",".join(map(str, BBOX)),
    ]  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metnet.cli", "backfill", *args],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while len(_stores(outputs)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.kill()  # SIGKILL: no cleanup, exactly like a crash
    finally:
        proc.wait()
        stderr = proc.stderr.read().decode()
    done_before = _stores(outputs)
    assert 2 <= len(done_before) < 14, stderr

    result = backfill_flow(
        archive.store, str(ckpt), str(outputs), "2019-06-10T00:10", "2019-06-10T00:38",
        interval_minutes=2, max_workers=2, chunk_size=4, bbox=BBOX,
    )  # fmt: skip
    # The gap at 00:30 leaves the times whose frames need it without inputs: reported.
    assert result["missing_inputs"] == {"2019-06-10T00:30": ["precipitation_rate at 2019-06-10T00:30"]}
    stamps = {f"{stamp(np.datetime64(t))}.zarr" for t in result["already_done"]}
    assert stamps == set(done_before)  # completeness read from the outputs
    after = _stores(outputs)
    assert {k: after[k] for k in done_before} == done_before  # not redone
    made = set(result["computed"])
    assert made.isdisjoint(result["already_done"])
    assert len(after) == len(result["times"]) - len(result["missing_inputs"])
    assert made | set(result["already_done"]) | set(result["missing_inputs"]) == set(result["times"])

    again = CliRunner().invoke(app, ["backfill", *args])  # the command's own report
    assert again.exit_code == 0, again.output
    assert "backfill: 0 computed, 14 already done, 1 with missing inputs, of 15 times" in again.output
    assert "2019-06-10T00:30: missing precipitation_rate at 2019-06-10T00:30" in again.output
    assert _stores(outputs) == after


def test_dask_runner_gives_the_thread_runner_outputs(inputs, tmp_path, prefect_api):
    archive, ckpt = inputs
    common = {"interval_minutes": 6, "chunk_size": 2, "max_workers": 1, "bbox": BBOX}
    start, end = "2019-06-10T00:10", "2019-06-10T00:22"
    threads = backfill_flow(archive.store, str(ckpt), str(tmp_path / "threads"), start, end, **common)
    dask = backfill_flow(
        archive.store, str(ckpt), str(tmp_path / "dask"), start, end, task_runner="dask", **common
    )
    assert threads["computed"] == dask["computed"] == ["2019-06-10T00:10", "2019-06-10T00:16", "2019-06-10T00:22"]
    for t in threads["computed"]:
        t0 = np.datetime64(t)
        a = forecast_values(OutputLayout(tmp_path / "threads").forecast(t0))
        b = forecast_values(OutputLayout(tmp_path / "dask").forecast(t0))
        for name in a:
            np.testing.assert_array_equal(b[name], a[name], err_msg=f"{t} {name}")


def test_tag_limit_bounds_forecasts_across_the_task_runner(inputs, tmp_path, prefect_api):
    """``prefect concurrency-limit create metnet-forecast 1``: one forecast at a time even
    with three threads (task runs' start and end times must not overlap)."""
    archive, ckpt = inputs
    began = datetime.now(UTC)
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=FORECAST_TAG, concurrency_limit=1)
    try:
        result = backfill_flow(
            archive.store, str(ckpt), str(tmp_path / "out"), "2019-06-10T00:10",
            "2019-06-10T00:14", interval_minutes=2, max_workers=3, bbox=BBOX,
        )  # fmt: skip
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag(FORECAST_TAG)
    assert len(result["computed"]) == 3
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(
                tags=TaskRunFilterTags(all_=[FORECAST_TAG]),
                start_time=TaskRunFilterStartTime(after_=began),
            )
        )
    spans = sorted((r.start_time, r.end_time) for r in runs if r.state.is_completed())
    assert len(spans) == 3
    assert all(end <= next_start for (_, end), (next_start, _) in pairwise(spans))

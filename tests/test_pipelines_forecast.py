"""The forecast and export flows on a synthetic tiny archive, against a real (temporary)
Prefect API: default time, equality with the library, idempotence, missing inputs."""

from __future__ import annotations

import numpy as np
import pytest

from metnet.config import preset
from metnet.forecast import forecast
from metnet.sources.synthetic import synthetic_dataset
from pipelines.common import iso
from pipelines.export import MANIFEST, export_flow
from pipelines.forecast import (
    MissingInputsError,
    OutputLayout,
    forecast_flow,
    gaps_of,
    resolve_checkpoint,
)
from tests.archive_fixtures import default_times, make_archive
from tests.pipeline_fixtures import forecast_values, make_checkpoint

pytestmark = pytest.mark.usefixtures("prefect_api")

#: 16 x 16 km (2 x 2 tiles of the tiny model) inside the tiny grid: quick forecasts.
BBOX = [48_000.0, 1_536_000.0, 64_000.0, 1_552_000.0]
TASK = preset("tiny").task


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A complete synthetic archive (radar 00:00-00:38) and an untrained checkpoint."""
    tmp = tmp_path_factory.mktemp("forecast-flow")
    archive = make_archive(tmp)
    return archive, make_checkpoint(archive, tmp / "model.pt")


def _mtimes(folder):
    return {p: p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def test_latest_time_forecast_equals_library_and_is_idempotent(inputs, tmp_path):
    archive, ckpt = inputs
    outputs = tmp_path / "out"
    kwargs = {
        "formats": ["netcdf", "png"], "export_lead_times": [2], "products": ["rate_mean"],
        "bbox": BBOX,
    }
    result = forecast_flow(archive.store, str(ckpt), str(outputs), **kwargs)

    latest = archive.complete_times(TASK)[-1]
    assert result["time"] == iso(latest) == "2019-06-10T00:38"
    assert result["status"] == "forecast"
    layout = OutputLayout(outputs)
    store = layout.forecast(latest)
    assert result["forecast"] == str(store) and store.name == "20190610T0038Z.zarr"
    reference = forecast(archive, ckpt, latest, tmp_path / "reference.zarr", bbox=BBOX)
    got, want = forecast_values(store), forecast_values(reference)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    maps = layout.maps(latest)
    assert result["files"] == {
        "netcdf": ["20190610T0038Z_forecast.nc"],
        "png": ["20190610T0038Z_lead002min_rate_mean.png"],
    }
    assert (maps / MANIFEST).exists()

    # Again: the complete outputs are found, nothing is rewritten.
    before = _mtimes(outputs)
    again = forecast_flow(archive.store, str(ckpt), str(outputs), time="2019-06-10T00:38", **kwargs)
    assert again["status"] == "already done"
    assert again["files"] == result["files"]
    assert _mtimes(outputs) == before

    # A lost map: only the exports are redone, the forecast store is not touched.
    (maps / "20190610T0038Z_lead002min_rate_mean.png").unlink()
    redo = forecast_flow(archive.store, str(ckpt), str(outputs), time="2019-06-10T00:38", **kwargs)
    assert redo["status"] == "exported"
    assert (maps / "20190610T0038Z_lead002min_rate_mean.png").exists()
    after = _mtimes(store)
    assert after == {p: t for p, t in before.items() if p in after}

    # The export flow on the same store: already done with the same selection.
    same = export_flow(str(store), str(maps), ["netcdf", "png"], [2], ["rate_mean"])
    assert same["status"] == "already done"
    other = export_flow(str(store), str(tmp_path / "cog"), ["cog"], [4], ["rate_mean"])
    assert other["status"] == "exported"
    assert other["files"] == {"cog": ["20190610T0038Z_lead004min_rate_mean.tif"]}


def test_missing_inputs_fail_with_the_list_or_degrade_until_they_arrive(tmp_path):
    times = default_times()
    gap = np.datetime64("2019-06-10T00:20", "ns")
    archive = make_archive(tmp_path, times=times[times != gap])
    ckpt = make_checkpoint(archive, tmp_path / "model.pt")
    outputs = tmp_path / "out"
    state = forecast_flow(
        archive.store, str(ckpt), str(outputs), time="2019-06-10T00:30", formats=[],
        bbox=BBOX, return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, MissingInputsError)
    assert exc.missing == ["precipitation_rate at 2019-06-10T00:20"]
    assert "cannot forecast from 2019-06-10T00:30" in str(exc)
    assert "lacks 1 input(s):\n  precipitation_rate at 2019-06-10T00:20" in str(exc)
    store = OutputLayout(outputs).forecast(np.datetime64("2019-06-10T00:30"))
    assert not store.exists()

    # Degraded mode: made, marked, and "done" while the input is still missing ...
    kwargs = {"time": "2019-06-10T00:30", "formats": [], "bbox": BBOX, "allow_missing": True}
    assert forecast_flow(archive.store, str(ckpt), str(outputs), **kwargs)["status"] == "forecast"
    assert gaps_of(store) == ["precipitation_rate at 2019-06-10T00:20"]
    assert forecast_flow(archive.store, str(ckpt), str(outputs), **kwargs)["status"] == "already done"
    # ... and redone, complete, once the late frame is in the archive.
    archive.write(synthetic_dataset(archive.grid, [gap], 0, ("precipitation_rate",)))
    kwargs["allow_missing"] = False
    assert forecast_flow(archive.store, str(ckpt), str(outputs), **kwargs)["status"] == "forecast"
    assert gaps_of(store) == []


def test_no_complete_time_is_a_clear_error(tmp_path):
    archive = make_archive(tmp_path, times=default_times()[:3])  # 00:00-00:04: no history
    ckpt = make_checkpoint(archive, tmp_path / "model.pt")
    state = forecast_flow(archive.store, str(ckpt), str(tmp_path / "out"), return_state=True)
    exc = state.result(raise_on_failure=False)
    assert isinstance(exc, ValueError)
    assert f"archive {archive.store} has no time with complete inputs for this model" in str(exc)


def test_resolve_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint .*nope\.pt does not exist"):
        resolve_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="a folder without latest.pt or checkpoints/step_"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_00000002.pt").write_bytes(b"")
    (tmp_path / "checkpoints" / "step_00000010.pt").write_bytes(b"")
    assert resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_00000010.pt"
    (tmp_path / "latest.pt").write_bytes(b"")
    assert resolve_checkpoint(tmp_path) == tmp_path / "latest.pt"

"""The training flow against a real (temporary) Prefect API: a run publishes its final
checkpoint as latest.pt, and a retry of the same run resumes with the periods it
started with even after more data arrived."""

from __future__ import annotations

import json

import numpy as np
import pytest

from metnet.checkpoint import load_checkpoint
from metnet.config import preset
from metnet.sources.synthetic import synthetic_dataset
from pipelines.forecast import resolve_checkpoint
from pipelines.train import run_periods, train_flow
from tests.archive_fixtures import T0, make_archive

pytestmark = pytest.mark.usefixtures("prefect_api")

#: 30 slots (00:00-00:58): enough forecast times for a training and a validation period.
TIMES = T0 + np.arange(30) * np.timedelta64(2, "m")


def test_train_publishes_and_a_retry_resumes_on_the_same_periods(tmp_path):
    archive = make_archive(tmp_path, times=TIMES)
    out = tmp_path / "models"
    options = {"preset": "tiny", "run_name": "weekly", "checkpoint_every": 2, "val_every": 2, "val_examples": 2}
    first = train_flow(archive.store, str(out), steps=2, **options)
    assert first["step"] == 2
    assert first["checkpoint"] == str(out / "weekly" / "checkpoints" / "step_00000002.pt")
    assert first["published"] == str(out / "latest.pt")
    assert (out / "latest.pt").read_bytes() == (out / "weekly" / "checkpoints" / "step_00000002.pt").read_bytes()
    assert resolve_checkpoint(out) == out / "latest.pt"
    periods = json.loads((out / "weekly" / "periods.json").read_text())
    assert set(periods) == {"train", "validation"}

    # An hour more data: the default split would now differ, the saved periods do not.
    later = TIMES[-1] + np.arange(1, 31) * np.timedelta64(2, "m")
    archive.write(synthetic_dataset(archive.grid, later, 0, ("precipitation_rate",)))
    again = train_flow(archive.store, str(out), steps=4, **options)
    assert again["step"] == 4
    assert json.loads((out / "weekly" / "periods.json").read_text()) == periods
    published = load_checkpoint(out / "latest.pt")
    assert published.extra["step"] == 4
    assert published.extra["data"]["periods"] == periods


def test_unknown_preset_fails_the_flow_with_the_valid_names(tmp_path):
    archive = make_archive(tmp_path, times=TIMES)
    state = train_flow(archive.store, str(tmp_path / "m"), steps=1, preset="huge", return_state=True)
    assert "unknown preset 'huge'; valid presets: paper, small, tiny" in str(
        state.result(raise_on_failure=False)
    )


def test_a_run_keeps_its_periods(tmp_path):
    archive = make_archive(tmp_path, times=TIMES)
    config = preset("tiny")
    run = tmp_path / "run"
    chosen = run_periods(
        archive.store, config, run, ["2019-06-10T00:00", "2019-06-10T00:36"],
        ["2019-06-10T00:40", "2019-06-10T00:58"],
    )  # fmt: skip
    assert chosen == {
        "train": ["2019-06-10T00:00", "2019-06-10T00:36"],
        "validation": ["2019-06-10T00:40", "2019-06-10T00:58"],
    }
    assert run_periods(archive.store, config, run) == chosen  # read back, not recomputed
    with pytest.raises(ValueError, match=r"started with train period \['2019-06-10T00:00', "
                       r"'2019-06-10T00:36'\], not \['2019-06-10T00:00', '2019-06-10T00:30'\]"):
        run_periods(archive.store, config, run, ["2019-06-10T00:00", "2019-06-10T00:30"])

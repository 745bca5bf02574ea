"""The serve file (validated, unknown keys rejected), the deployments built from it, and
the CLI's errors for serve and backfill (no Prefect API needed)."""

from __future__ import annotations

import textwrap

import pytest
from typer.testing import CliRunner

from metnet.cli import app
from pipelines.deploy import build_deployments
from pipelines.serve_config import (
    ServeConfigError,
    load_serve_config,
    serve_config_from_dict,
)

EXAMPLE = """
archive: data/archive/live.zarr
outputs: data/outputs/live
checkpoint: data/checkpoints/metnet/latest.pt
ingest:
  - source: mrms
    locations: [s3://noaa-mrms-pds/CONUS/PrecipRate_00.00]
    preset: small
  - name: goes13
    source: goes
    locations: [s3://noaa-goes16/ABI-L2-CMIPC]
    cron: "*/5 * * * *"
    source_options: {bands: [13]}
forecast:
  formats: [netcdf, png]
  lead_times: [30, 60]
backfill:
  task_runner: dask
  max_workers: 4
train:
  enabled: true
  out_dir: data/checkpoints/metnet
  steps_per_run: 200
"""


def _write(tmp_path, text: str):
    path = tmp_path / "serve.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_example_file_builds_the_scheduled_deployments(tmp_path):
    config = load_serve_config(_write(tmp_path, EXAMPLE))
    assert config.ingest[0].cron == "*/2 * * * *" and config.ingest[0].latest_minutes == 30
    assert config.forecast.cron == "*/10 * * * *"
    assert config.forecast.lead_times == (30, 60)
    deployments = {d.name: d for d in build_deployments(config)}
    assert set(deployments) == {"ingest-mrms", "ingest-goes13", "forecast", "backfill", "export", "train"}

    def crons(d):
        return [s.schedule.cron for s in d.schedules]

    assert crons(deployments["ingest-mrms"]) == ["*/2 * * * *"]
    assert crons(deployments["ingest-goes13"]) == ["*/5 * * * *"]
    assert crons(deployments["forecast"]) == ["*/10 * * * *"]
    assert crons(deployments["train"]) == ["0 4 * * 0"]
    assert crons(deployments["backfill"]) == [] and crons(deployments["export"]) == []
    assert deployments["forecast"].parameters == {
        "archive": "data/archive/live.zarr", "checkpoint": "data/checkpoints/metnet/latest.pt",
        "outputs": "data/outputs/live", "formats": ["netcdf", "png"],
        "export_lead_times": [30, 60], "allow_missing": False,
    }  # fmt: skip
    assert deployments["ingest-goes13"].parameters["source_options"] == {"bands": [13]}
    assert deployments["ingest-goes13"].parameters["latest_minutes"] == 30
    assert deployments["backfill"].parameters["task_runner"] == "dask"
    assert deployments["train"].parameters["steps"] == 200
    for name in ("ingest-mrms", "forecast", "train"):
        assert deployments[name].concurrency_limit == 1, name


def test_disabled_deployments_are_not_built():
    config = serve_config_from_dict(
        {"archive": "a", "outputs": "o", "checkpoint": "c", "forecast": {"enabled": False},
         "backfill": {"enabled": False}}
    )  # fmt: skip
    assert [d.name for d in build_deployments(config)] == ["export"]


def test_every_problem_is_reported_with_the_file_name(tmp_path):
    path = _write(
        tmp_path,
        """
        archive: data/a.zarr
        outputs: 3
        colour: blue
        ingest:
          - source: radar
            locations: []
            cron: "every minute"
            retries: -1
          - source: mrms
            locations: [x]
            latest_minute: 5
        forecast:
          formats: [netcdf, jpeg]
          cron: "*/10 * * * *"
        backfill:
          task_runner: ray
          max_workers: 0
        train:
          enabled: true
        """,
    )
    with pytest.raises(ServeConfigError) as info:
        load_serve_config(path)
    message = str(info.value)
    assert message.startswith(f"invalid serve configuration in {path}:")
    expected = [
        "outputs: must be of type str, got 3",
        "colour: unknown key; valid keys: archive, outputs, checkpoint, ingest, forecast, backfill, train",
        "checkpoint: required",
        "ingest[1].latest_minute: unknown key; valid keys: locations, name, source, enabled",
    ]
    for line in expected:
        assert line in message, line
    # Structural errors stop before the value rules; fix them and the rules report.
    path.write_text(path.read_text().replace("outputs: 3", "outputs: o\ncheckpoint: c")
                    .replace("colour: blue\n", "").replace("latest_minute", "latest_minutes"))
    with pytest.raises(ServeConfigError) as info:
        load_serve_config(path)
    message = str(info.value)
    expected = [
        "ingest[0].source: unknown 'radar'; valid: mrms, static, goes, synthetic, zarr",
        "ingest[0].cron: invalid cron expression 'every minute'",
        "ingest[0].retries: must not be negative, got -1",
        "ingest[0].locations: at least one location is required",
        "forecast.formats: unknown 'jpeg'; valid: netcdf, cog, png, gif",
        "backfill.max_workers: must be positive, got 0",
        "backfill.task_runner: unknown 'ray'; valid: threads, dask",
        "train.out_dir: required when train is enabled",
    ]
    for line in expected:
        assert line in message, line


def test_file_level_errors(tmp_path):
    with pytest.raises(ServeConfigError, match=r"in .*missing\.yaml:\n  cannot read file: No such file"):
        load_serve_config(tmp_path / "missing.yaml")
    with pytest.raises(ServeConfigError, match="not valid YAML"):
        load_serve_config(_write(tmp_path, "archive: [unclosed\n"))
    with pytest.raises(ServeConfigError, match="top level: must be a mapping, got list"):
        load_serve_config(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ServeConfigError, match="ingest: must be a list of ingest deployments"):
        serve_config_from_dict({"archive": "a", "outputs": "o", "checkpoint": "c", "ingest": {"source": "mrms"}})
    with pytest.raises(ServeConfigError, match=r"ingest\[1\].name: duplicate ingest deployment name 'mrms'"):
        serve_config_from_dict(
            {"archive": "a", "outputs": "o", "checkpoint": "c",
             "ingest": [{"locations": ["x"]}, {"locations": ["y"], "name": "mrms"}]}
        )  # fmt: skip


def test_cli_serve_reports_config_errors_before_starting(tmp_path):
    path = _write(tmp_path, "archive: a\noutputs: o\ncheckpoint: c\nforecast: {cron: nope}\n")
    result = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert result.exit_code == 1
    assert f"error: invalid serve configuration in {path}:" in result.output
    assert "forecast.cron: invalid cron expression 'nope'" in result.output


def test_cli_backfill_rejects_a_bad_bbox_before_running(tmp_path):
    args = ["backfill", "--archive", "a.zarr", "--checkpoint", "m.pt", "--out", str(tmp_path),
            "--start", "2019-06-10T00:10", "--end", "2019-06-10T00:20", "--bbox", "1,2,3"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "expected 4 comma-separated numbers, got '1,2,3'" in result.output

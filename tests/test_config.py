"""Config presets, YAML round trips and validation errors."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from metnet.cli import app
from metnet.config import (
    PRESET_NAMES,
    ConfigError,
    MetNetConfig,
    config_from_dict,
    load_config,
    preset,
    save_config,
)


def test_paper_preset_matches_published_settings():
    c = preset("paper")
    t, m = c.task, c.model
    assert (t.context_km, t.target_km, t.packed_size, t.context_pool) == (1024, 64, 256, 4)
    assert t.num_frames == 7 and t.history_interval_minutes == 15
    assert t.lead_times[0] == 2 and t.lead_times[-1] == 480 and t.num_lead_times == 240
    assert (t.num_bins, t.bin_width_mm_h) == (512, 0.2)
    assert m.downsampler_channels == (160, 256, 256, 256)
    assert (m.convlstm_channels, m.attention_blocks, m.attention_channels) == (384, 8, 2048)
    assert m.attention_heads == 16
    # 17 observed variables (MRMS + 16 ABI bands) in two views, masks, statics, calendar.
    assert len(t.input_variables()) == 17
    assert t.num_input_channels == 2 * (17 + 2 + 3) + 2 * 3


def test_channel_names_are_unique_and_ordered_by_view():
    names = preset("paper").task.input_channel_names()
    assert len(names) == len(set(names))
    assert names[0] == "precipitation_rate@context"
    assert names.index("precipitation_rate@center") > names.index("elevation@context")


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_presets_round_trip_through_yaml(tmp_path, name):
    config = preset(name)
    path = tmp_path / f"{name}.yaml"
    save_config(config, path)
    assert load_config(path) == config


def test_preset_lookup_is_case_insensitive_and_lists_names():
    assert preset("SMALL") == preset("small")
    with pytest.raises(ValueError, match="valid presets: paper, small, tiny"):
        preset("huge")


def test_overrides_apply_on_top_of_named_preset():
    config = config_from_dict({"preset": "small", "task": {"max_lead_time_minutes": 60}})
    assert config.task.num_lead_times == 30
    assert config.model == preset("small").model
    assert isinstance(config.task.satellite_bands, tuple)


def test_configs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        preset("tiny").task.num_bins = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"task": {"targte_km": 64}}, "task.targte_km: unknown key; valid keys:"),
        ({"modle": {}}, "modle: unknown section"),
        ({"task": {"target_km": 2048}}, "task.target_km: must not exceed task.context_km (1024)"),
        ({"task": {"context_km": -5}}, "task.context_km: must not be negative"),
        ({"task": {"context_km": 1000}}, "must be a multiple of task.packed_size (256)"),
        ({"task": {"max_lead_time_minutes": 481}}, "multiple of lead_time_step_minutes (2)"),
        ({"task": {"history_minutes": 100}}, "multiple of history_interval_minutes (15)"),
        ({"task": {"num_bins": "many"}}, "task.num_bins: must be of type int"),
        ({"task": {"satellite_bands": [0, 13]}}, "ABI bands are 1..16, got 0"),
        ({"task": {"resolution_km": 2.0}}, "task.resolution_km: must equal grid.resolution_m"),
        ({"model": {"attention_blocks": 3}}, "model.attention_blocks: must be even"),
        ({"model": {"attention_heads": 3}}, "divisible by model.attention_heads (3)"),
        ({"model": {"kernel_size": 4}}, "model.kernel_size: must be a positive odd number"),
        ({"train": {"precision": "fp8"}}, "train.precision: must be 'auto', 'bf16' or 'fp32'"),
        ({"preset": "huge"}, "preset: unknown preset 'huge'"),
    ],
)
def test_invalid_configs_name_the_key_and_rule(override, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict(override)
    assert message in str(info.value)


def test_all_errors_are_reported_together():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"task": {"foo": 1, "target_km": 4096}, "model": {"dropout": 1.5}})
    keys = {line.split(":")[0] for line in info.value.errors}
    assert keys == {"task.foo", "task.target_km", "model.dropout"}


def test_load_config_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match=r"in .*bad\.yaml:\n  not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "missing.yaml")


def test_cli_validate_prints_resolved_config(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("preset: tiny\ntrain:\n  batch_size: 2\n")
    result = CliRunner().invoke(app, ["config", "validate", str(path)])
    assert result.exit_code == 0, result.output
    resolved = config_from_dict(__import__("yaml").safe_load(result.stdout))
    assert resolved.train.batch_size == 2 and resolved.task == preset("tiny").task


def test_cli_validate_reports_errors_with_exit_code_1(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task:\n  target_km: 99999\n  colour: red\n")
    result = CliRunner().invoke(app, ["config", "validate", str(path)])
    assert result.exit_code == 1
    assert "task.colour: unknown key" in result.output
    assert "task.target_km: must not exceed" in result.output


def test_default_config_is_paper():
    assert MetNetConfig() == preset("paper")

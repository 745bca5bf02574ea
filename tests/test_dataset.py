"""The training sampler: packed inputs, binned targets, valid times, splits, normalisation.

Most tests share one ``tiny`` archive of 40 two-minute slots (00:00 .. 01:18) with the
radar slot at 00:20 missing and satellite scans only at 00:00, 00:30, 00:40, ..., 01:10,
so that some forecast times lack history and some frames lack a recent satellite scan.
"""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from metnet.archive import BRIGHTNESS_TEMPERATURE, RATE, Archive, nanmean_pool
from metnet.bins import rate_to_bin
from metnet.config import preset
from metnet.dataset import (
    ArchiveSampler,
    DatasetError,
    ExampleBuilder,
    build_inputs,
    calendar_features,
    compute_normalization,
    load_normalization,
    save_normalization,
    split_periods,
)
from metnet.grid import Grid
from metnet.sources.static import StaticSource
from tests.archive_fixtures import T0, make_archive

MIN = np.timedelta64(1, "m")
TASK = preset("tiny").task
CHANNELS = TASK.input_channel_names()
RADAR_TIMES = [T0 + 2 * k * MIN for k in range(40) if k != 10]  # 00:20 missing
SATELLITE_TIMES = [T0 + m * MIN for m in (0, 30, 40, 50, 60, 70)]
#: Largest difference between a value pooled from the stored 1 km values and the stored
#: 4 km value (each quantised on its own): one quantisation step.
POOL_ATOL = {
    "precipitation_rate": RATE.scale_factor,
    "abi_c13": BRIGHTNESS_TEMPERATURE.scale_factor,
}


def at(minutes: int) -> np.datetime64:
    return T0 + minutes * MIN


def channel(name: str) -> int:
    return CHANNELS.index(name)


def denormalize(name: str, values: np.ndarray, normalization: dict) -> np.ndarray:
    """Inverse of the documented transform: ``std * x + mean``, then ``expm1`` for rates."""
    stats = normalization[name]
    raw = values.astype(np.float64) * stats["std"] + stats["mean"]
    return np.expm1(raw) if name == "precipitation_rate" else raw


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Archive:
    return make_archive(
        tmp_path_factory.mktemp("tiny"), "tiny", RADAR_TIMES, satellite_times=SATELLITE_TIMES
    )


@pytest.fixture(scope="module")
def norm(archive) -> dict:
    return compute_normalization(archive, TASK)


@pytest.fixture(scope="module")
def sampler(archive, norm) -> ArchiveSampler:
    return ArchiveSampler(archive, TASK, norm, num_examples=16, seed=3)


# ----------------------------------------------------------------------------- shapes


def test_items_have_documented_shapes_and_dtypes(sampler):
    item = sampler[0]
    assert set(item) == {"inputs", "lead_time", "target", "target_valid", "time", "center"}
    assert item["inputs"].shape == (TASK.num_frames, len(CHANNELS), 16, 16) == (2, 14, 16, 16)
    assert item["inputs"].dtype == torch.float32
    assert item["lead_time"].shape == () and item["lead_time"].dtype == torch.int64
    assert item["target"].shape == (8, 8) and item["target"].dtype == torch.int64
    assert item["target_valid"].shape == (8, 8) and item["target_valid"].dtype == torch.bool
    assert item["time"].dtype == torch.int64 and item["center"].dtype == torch.int64
    assert item["center"].shape == (2,)
    assert len(sampler) == 16
    with pytest.raises(IndexError, match="index 16 out of range for 16 examples"):
        sampler[16]


def test_small_preset_example(tmp_path):
    task = preset("small").task
    t0 = at(60)
    # Exactly what one forecast at 01:00 needs: 7 radar frames 00:00 .. 01:00, one target.
    times = [at(m) for m in range(0, 61, 10)] + [at(62)]
    archive = make_archive(tmp_path, "small", times, satellite_times=[t0])
    sampler = ArchiveSampler(
        archive, task, compute_normalization(archive, task, max_times=2), num_examples=2
    )
    np.testing.assert_array_equal(sampler.valid_times, [t0])
    item = sampler[0]
    channels = task.input_channel_names()
    assert item["inputs"].shape == (7, len(channels), 64, 64) == (7, 20, 64, 64)
    assert item["target"].shape == item["target_valid"].shape == (32, 32)
    assert int(item["lead_time"]) == 2 and int(item["time"]) == t0.astype(np.int64)
    assert torch.isfinite(item["inputs"]).all()
    # Only the newest frame has a satellite scan (at 01:00) within 15 minutes.
    sat_mask = item["inputs"][:, channels.index("satellite_valid@center")]  # (T, S, S)
    assert sat_mask.amax(dim=(1, 2)).tolist() == [0, 0, 0, 0, 0, 0, 1]
    assert (item["inputs"][:-1, channels.index("abi_c13@center")] == 0).all()
    elevation = item["inputs"][:, channels.index("elevation@center")]
    assert elevation.std() > 0 and (elevation[0] == elevation[-1]).all()  # static over frames


# ----------------------------------------------------------------------------- channels


def constant_archive(path, grid_config, abi_c13: float = 250.0) -> Archive:
    """Radar 3 mm/h everywhere at 00:00, 00:10, 00:12; ``abi_c13`` at 00:10; lat/lon."""
    grid = Grid(grid_config)
    archive = Archive.create(str(path), grid_config)
    ones = np.ones((1, *grid.shape), np.float32)  # (1, ny, nx)
    for t in (at(0), at(10), at(12)):
        rate = {"precipitation_rate": (("time", "y", "x"), 3.0 * ones, {"units": "mm/h"})}
        archive.write(grid.dataset(rate, time=[t]))
    band = {"abi_c13": (("time", "y", "x"), abi_c13 * ones, {"units": "K"})}
    archive.write(grid.dataset(band, time=[at(10)]))
    archive.write(StaticSource().read(None, grid))
    return archive


def test_each_channel_holds_its_named_field(tmp_path):
    """Constant fields with distinct values: every channel must hold its own value."""
    grid = Grid(preset("tiny").grid)
    archive = constant_archive(tmp_path / "const.zarr", grid.config)
    norm = compute_normalization(archive, TASK)
    # A constant field gets std 1 (normalises to 0 rather than dividing by zero).
    assert norm["precipitation_rate"] == pytest.approx({"mean": np.log1p(3.0), "std": 1.0})
    assert norm["abi_c13"] == pytest.approx({"mean": 250.0, "std": 1.0})
    norm = {
        **norm,
        "precipitation_rate": {"mean": 0.5, "std": 2.0},
        "abi_c13": {"mean": 200.0, "std": 10.0},
    }

    sampler = ArchiveSampler(archive, TASK, norm)
    np.testing.assert_array_equal(sampler.valid_times, [at(10)])
    cy, cx = 64, 64  # the whole context lies inside the grid
    x = sampler.builder.inputs(at(10), cy, cx)  # (T, C, S, S)
    lat, lon = grid.lat_lon()
    frames = [at(0), at(10)]
    hour = calendar_features(frames, ("hour_of_day",))  # (T, 2)
    for k, name in enumerate(CHANNELS):
        if name.startswith("precipitation_rate@"):
            expected = np.full(2, (np.log1p(3.0) - 0.5) / 2.0)
        elif name.startswith("abi_c13@"):
            expected = np.array([0.0, 5.0])  # no scan for 00:00 (the one at 00:10 is later)
        elif name.startswith("radar_valid@"):
            expected = np.ones(2)
        elif name.startswith("satellite_valid@"):
            expected = np.array([0.0, 1.0])
        elif name.startswith(("latitude@", "longitude@")):
            continue  # checked below against the grid
        else:
            expected = hour[:, ["hour_of_day_sin", "hour_of_day_cos"].index(name)]
        np.testing.assert_allclose(x[:, k].mean(axis=(1, 2)), expected, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(x[:, k].std(axis=(1, 2)), 0.0, atol=1e-5, err_msg=name)
    s = norm["latitude"]
    centre = lat[cy - 8 : cy + 8, cx - 8 : cx + 8]
    np.testing.assert_allclose(
        x[1, channel("latitude@center")], (centre - s["mean"]) / s["std"], atol=1e-4
    )
    s = norm["longitude"]
    context = nanmean_pool(lon[cy - 32 : cy + 32, cx - 32 : cx + 32].astype(np.float32), 4)
    np.testing.assert_allclose(
        x[0, channel("longitude@context")], (context - s["mean"]) / s["std"], atol=1e-4
    )


def test_center_view_is_the_archive_window(archive, norm):
    t0, cy, cx = at(40), 64, 60
    x = build_inputs(archive, TASK, t0, cy, cx, norm)  # (T, C, S, S)
    frames = np.array([at(30), at(40)])  # scans at 00:30 and 00:40 too
    for name in ("precipitation_rate", "abi_c13"):
        raw = archive.read(name, frames, cy - 8, cx - 8, 16)  # (T, 16, 16)
        assert np.isfinite(raw).all()
        got = denormalize(name, x[:, channel(f"{name}@center")], norm)
        np.testing.assert_allclose(got, raw, rtol=1e-5, atol=1e-4, err_msg=name)
    assert (x[:, channel("radar_valid@center")] == 1).all()
    assert (x[:, channel("satellite_valid@center")] == 1).all()
    lat = archive.read_static("latitude", cy - 8, cx - 8, 16)
    np.testing.assert_allclose(
        denormalize("latitude", x[0, channel("latitude@center")], norm), lat, atol=1e-4
    )


@pytest.mark.parametrize(
    "context_km, center, route",
    [
        (64, (20, 64), "4 km level"),  # aligned: read from level 4; overhangs the north edge
        (64, (22, 62), "1 km pooled"),  # not aligned with the 4 km cells: pooled here
        (32, (64, 64), "1 km pooled"),  # pool 2
    ],
)
def test_context_view_is_the_pooled_window(archive, norm, context_km, center, route):
    task = dataclasses.replace(TASK, context_km=context_km)
    channels = task.input_channel_names()
    pool, ctx, (cy, cx) = task.context_pool, task.context_px, center
    assert (pool == 4 and (cy - ctx // 2) % 4 == 0) == (route == "4 km level")
    x = build_inputs(archive, task, at(40), cy, cx, norm)  # (T, C, S, S)
    assert np.isfinite(x).all()
    frames = np.array([at(30), at(40)])
    valid = np.ones((2, 16, 16), bool)
    for name in ("precipitation_rate", "abi_c13"):
        window = archive.read(name, frames, cy - ctx // 2, cx - ctx // 2, ctx)  # (T, ctx, ctx)
        expected = nanmean_pool(window, pool)  # (T, 16, 16)
        inside = np.isfinite(expected)
        valid &= inside
        got = x[:, channels.index(f"{name}@context")]
        np.testing.assert_allclose(
            denormalize(name, got, norm)[inside], expected[inside], atol=POOL_ATOL[name] * 1.01
        )
        assert (got[~inside] == 0).all()  # outside the grid: zero, flagged by the mask
    for mask in ("radar_valid@context", "satellite_valid@context"):
        np.testing.assert_array_equal(x[:, channels.index(mask)], valid)
    if cy - ctx // 2 < 0:
        assert not valid[:, 0].any() and valid[:, -1].all()  # the overhanging rows are masked


def test_missing_frames_are_masked_and_zero(archive, norm):
    builder = ExampleBuilder(archive, TASK, norm)
    # 00:16: frames 00:06 (scan 00:00, 6 min old) and 00:16 (00:00 is 16 > 15 min old).
    frames, scans = builder.frame_times(at(16))
    np.testing.assert_array_equal(frames, [at(6), at(16)])
    assert scans[0] == at(0) and np.isnat(scans[1])
    x = builder.inputs(at(16), 64, 64)
    for view in ("context", "center"):
        mask = x[:, channel(f"satellite_valid@{view}")]
        assert (mask[0] == 1).all() and (mask[1] == 0).all()
        assert (x[1, channel(f"abi_c13@{view}")] == 0).all() and x[
            0, channel(f"abi_c13@{view}")
        ].std() > 0
    # 00:30 needs the missing radar frame 00:20: not a valid time, but forecasting may
    # still build its inputs, with that frame masked.
    assert at(30) not in builder.valid_times()
    x = builder.inputs(at(30), 64, 64)
    assert np.isfinite(x).all()
    for view in ("context", "center"):
        mask = x[:, channel(f"radar_valid@{view}")]
        assert (mask[0] == 0).all() and (mask[1] == 1).all()
        assert (x[0, channel(f"precipitation_rate@{view}")] == 0).all()


def test_inputs_are_finite_and_masks_binary(sampler):
    for i in range(len(sampler)):
        x = sampler[i]["inputs"]
        assert torch.isfinite(x).all()
        for name in CHANNELS:
            if "_valid@" in name:
                assert set(torch.unique(x[:, channel(name)]).tolist()) <= {0.0, 1.0}


# ----------------------------------------------------------------------------- targets and times


def test_targets_are_bins_of_the_rate_at_lead_time(archive, sampler):
    for i in range(6):
        item = sampler[i]
        t0 = np.datetime64(int(item["time"]), "ns")
        lead, (cy, cx) = int(item["lead_time"]), item["center"].tolist()
        assert lead in sampler.builder.lead_times(t0)
        rate = archive.read("precipitation_rate", [t0 + lead * MIN], cy - 4, cx - 4, 8)[0]  # (8, 8)
        np.testing.assert_array_equal(item["target"].numpy(), rate_to_bin(rate, 0.2, 512))
        assert item["target_valid"].all()  # synthetic radar covers the whole grid
        # The target tile lies inside the grid; centres sit on 4 km cell corners.
        assert 4 <= cy <= 124 and 4 <= cx <= 124 and cy % 4 == cx % 4 == 0


def test_missing_target_pixels_are_invalid(archive, norm):
    builder = ExampleBuilder(archive, TASK, norm)
    target, valid = builder.target(at(18), 2, 64, 64)  # 00:20 is missing
    assert not valid.any() and (target == -1).all()


def test_valid_times_need_history_and_a_target(archive, norm):
    builder = ExampleBuilder(archive, TASK, norm)
    radar = set(RADAR_TIMES)
    expected = [
        t
        for t in RADAR_TIMES
        if t - 10 * MIN in radar and any(t + lead * MIN in radar for lead in TASK.lead_times)
    ]
    valid = builder.valid_times()
    np.testing.assert_array_equal(valid, expected)
    assert valid[0] == at(10)  # no full history before
    assert at(20) not in valid and at(30) not in valid  # the gap, as t0 and as history
    assert valid[-1] == at(76)  # 01:18 is the last slot: no target after it
    assert builder.lead_times(at(18)).tolist() == [4, 6, 8, 10, 12]  # 00:20 missing
    assert builder.lead_times(at(72)).tolist() == [2, 4, 6]


def test_split_periods_do_not_leak(archive, norm):
    periods = split_periods(archive, TASK, 0.5)
    (ts, te), (vs, ve) = periods["train"], periods["validation"]
    assert (ts, ve) == (at(0), at(78)) and vs - te >= TASK.max_lead_time_minutes * MIN
    seen = {}
    for key, period in periods.items():
        s = ArchiveSampler(archive, TASK, norm, period=period, num_examples=64, seed=1)
        inputs, targets = set(), set()
        for i in range(len(s)):
            t0, lead, _, _ = s.draw(i)
            frames, scans = s.builder.frame_times(t0)
            inputs |= set(frames.astype(np.int64)) | set(scans[~np.isnat(scans)].astype(np.int64))
            targets.add((t0 + lead * MIN).astype(np.int64))
        times = np.array(sorted(inputs | targets)).astype("datetime64[ns]")
        assert period[0] <= times[0] and times[-1] <= period[1], key
        seen[key] = (inputs, targets)
    assert not (seen["train"][0] | seen["train"][1]) & seen["validation"][1]
    assert not seen["validation"][0] & seen["train"][1]


def test_draws_are_deterministic_per_seed_and_index(archive, norm, sampler):
    again = ArchiveSampler(archive, TASK, norm, num_examples=16, seed=3)
    for i in (0, 7):
        a, b = sampler[i], again[i]
        for key in a:
            assert torch.equal(a[key], b[key]), key
    other = ArchiveSampler(archive, TASK, norm, num_examples=16, seed=4)
    assert [other.draw(i) for i in range(16)] != [sampler.draw(i) for i in range(16)]


def test_dataloader_workers_yield_the_same_examples(sampler):
    def batches(workers: int) -> list[dict]:
        loader = torch.utils.data.DataLoader(sampler, batch_size=4, num_workers=workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 4
    for a, b in zip(serial, parallel):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    clone = pickle.loads(pickle.dumps(sampler))  # what each worker receives
    assert torch.equal(clone[5]["inputs"], sampler[5]["inputs"])


def test_oversampling_rain_draws_wetter_targets(archive, norm):
    fields = {t: archive.read("precipitation_rate", [t], 0, 0, 128)[0] for t in RADAR_TIMES}

    def mean_rain_fraction(s: ArchiveSampler) -> float:
        fractions = []
        for i in range(200):
            t0, _, cy, cx = s.draw(i)
            fractions.append((fields[t0][cy - 4 : cy + 4, cx - 4 : cx + 4] >= 0.2).mean())
        return float(np.mean(fractions))

    uniform = mean_rain_fraction(ArchiveSampler(archive, TASK, norm, num_examples=200))
    wet = mean_rain_fraction(
        ArchiveSampler(
            archive, TASK, norm, num_examples=200, oversample_rain=True, rain_epsilon=0.05
        )
    )
    assert 0.05 < uniform < 0.4  # about the synthetic 20 % rain cover
    assert wet > 2 * uniform


# ----------------------------------------------------------------------------- normalisation


def test_normalization_equals_full_archive_statistics(archive, norm):
    # On the tiny grid one window is the whole domain, and 64 >= the number of times.
    assert set(norm) == {"precipitation_rate", "abi_c13", "latitude", "longitude"}
    for name, times in (("precipitation_rate", RADAR_TIMES), ("abi_c13", SATELLITE_TIMES)):
        values = archive.read(name, times, 0, 0, 128).astype(np.float64)
        if name == "precipitation_rate":
            values = np.log1p(values)
        assert norm[name]["mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert norm[name]["std"] == pytest.approx(values.std(), rel=1e-9)
    lat = archive.read_static("latitude", 0, 0, 32, level=4)
    assert norm["latitude"] == pytest.approx({"mean": lat.mean(), "std": lat.std()}, rel=1e-6)
    assert 0.05 < norm["precipitation_rate"]["mean"] < 1.0
    assert 230.0 < norm["abi_c13"]["mean"] < 293.0 and norm["abi_c13"]["std"] > 5.0
    assert 30.0 < norm["latitude"]["mean"] < 45.0 and norm["latitude"]["std"] > 0.1

    first = compute_normalization(archive, TASK, period=(at(0), at(10)))  # 00:00 .. 00:10 only
    values = np.log1p(
        archive.read("precipitation_rate", [at(m) for m in range(0, 11, 2)], 0, 0, 128).astype(
            np.float64
        )
    )
    assert first["precipitation_rate"]["mean"] == pytest.approx(values.mean(), rel=1e-9)


def test_normalization_round_trips_through_json(tmp_path, norm):
    path = tmp_path / "norm.json"
    save_normalization(norm, path)
    assert json.loads(path.read_text()) == norm
    assert load_normalization(path) == norm


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read normalisation statistics"),
        ("{not json", "not valid JSON"),
        ('{"abi_c13": {"mean": 1.0}}', "'abi_c13' must have exactly the keys 'mean' and 'std'"),
        (
            '{"abi_c13": {"mean": 1.0, "std": 0.0}}',
            "'abi_c13' needs a finite mean and a positive std",
        ),
        ('{"abi_c13": {"mean": "x", "std": 1.0}}', "'abi_c13' mean and std must be numbers"),
        ("[1, 2]", "must map names to"),
    ],
)
def test_bad_normalization_files_are_named(tmp_path, content, message):
    path = tmp_path / "norm.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(
        DatasetError, match=f"{path}: .*{message}" if content is None else f"{path}: {message}"
    ):
        load_normalization(path)


# ----------------------------------------------------------------------------- calendar


def test_calendar_features_golden_values():
    t = np.array(["2019-06-10T06:00", "2020-12-31T18:00"], dtype="datetime64[ns]")
    f = calendar_features(t, ("hour_of_day", "DAY_OF_YEAR", "month"))  # (2, 6)
    np.testing.assert_allclose(f[:, 0:2], [[1.0, 0.0], [-1.0, 0.0]], atol=1e-6)  # 06:00, 18:00
    phase = np.array([(160 + 0.25) / 365, (365 + 0.75) / 366])  # 10 June 2019; 2020 is leap
    np.testing.assert_allclose(f[:, 2], np.sin(2 * np.pi * phase), atol=1e-6)
    np.testing.assert_allclose(f[:, 3], np.cos(2 * np.pi * phase), atol=1e-6)
    np.testing.assert_allclose(
        f[:, 4:6],
        [
            [np.sin(np.pi * 5 / 6), np.cos(np.pi * 5 / 6)],
            [np.sin(np.pi * 11 / 6), np.cos(np.pi * 11 / 6)],
        ],
        atol=1e-6,
    )
    with pytest.raises(
        ValueError,
        match="unknown time feature 'minute'; valid names: hour_of_day, day_of_year, month",
    ):
        calendar_features(t, ("minute",))


# ----------------------------------------------------------------------------- errors


def test_no_valid_forecast_times_is_explained(archive, norm):
    with pytest.raises(
        DatasetError,
        match=r"no valid forecast times in 2019-06-10T00:00 \.\. 2019-06-10T00:08: "
        r"each needs precipitation_rate at every input frame",
    ):
        ArchiveSampler(archive, TASK, norm, period=(at(0), at(8)))
    long_history = dataclasses.replace(TASK, history_minutes=120)
    with pytest.raises(
        DatasetError, match=rf"archive {archive.store}: no valid forecast times.*t0 - 120 min"
    ):
        ArchiveSampler(archive, long_history, norm)


def test_task_must_match_the_archive(archive, norm):
    with pytest.raises(
        DatasetError,
        match=rf"task resolution 2 km differs from the grid resolution 1 km "
        rf"of archive {archive.store}",
    ):
        ArchiveSampler(archive, dataclasses.replace(TASK, resolution_km=2.0), norm)
    with pytest.raises(
        DatasetError, match=r"has no variable 'reflectivity'; it has: precipitation_rate, abi_c13"
    ):
        ArchiveSampler(archive, dataclasses.replace(TASK, radar_variables=("reflectivity",)), norm)
    with pytest.raises(DatasetError, match=r"has no variable 'abi_c07'"):
        compute_normalization(archive, dataclasses.replace(TASK, satellite_bands=(7, 13)))
    with pytest.raises(
        DatasetError,
        match=r"has no static field 'soil_type'; it has: elevation, latitude, longitude",
    ):
        build_inputs(
            archive, dataclasses.replace(TASK, static_features=("soil_type",)), at(40), 64, 64, norm
        )
    with pytest.raises(ValueError, match="unknown time feature 'minute'"):
        ExampleBuilder(archive, dataclasses.replace(TASK, time_features=("minute",)), norm)


def test_degenerate_archives_are_explained(tmp_path):
    all_nan = constant_archive(tmp_path / "nan.zarr", preset("tiny").grid, abi_c13=np.nan)
    with pytest.raises(
        DatasetError, match=rf"archive {all_nan.store}: abi_c13 has no finite values"
    ):
        compute_normalization(all_nan, TASK)
    small_grid = dataclasses.replace(preset("tiny").grid, nx=4, ny=4)
    small = constant_archive(tmp_path / "small.zarr", small_grid)
    norm = compute_normalization(small, TASK)
    with pytest.raises(
        DatasetError, match=r"the 4 x 4 grid has no place for a 8-pixel target tile"
    ):
        ArchiveSampler(small, TASK, norm)


def test_rain_fraction_counts_raining_4km_cells(archive, norm):
    builder = ExampleBuilder(archive, TASK, norm)
    rows, cols = builder.centre_lattice()
    assert rows.tolist() == cols.tolist() == list(range(4, 125, 4))
    fraction = builder.rain_fraction(at(40), rows, cols)  # (31, 31)
    coarse = archive.read("precipitation_rate", [at(40)], 0, 0, 32, level=4)[0]  # (32, 32)
    for i, j in ((0, 0), (5, 17), (30, 30), (12, 3)):
        top, left = rows[i] // 4 - 1, cols[j] // 4 - 1  # the 8 px tile is 2 x 2 cells
        assert fraction[i, j] == (coarse[top : top + 2, left : left + 2] >= 0.2).mean()
    assert 0.05 < fraction.mean() < 0.4


def test_bad_arguments_are_named(archive, norm):
    partial = {k: v for k, v in norm.items() if k != "abi_c13"}
    with pytest.raises(
        DatasetError,
        match=r"normalization: no statistics for 'abi_c13'; "
        r"it has: precipitation_rate, latitude, longitude",
    ):
        ArchiveSampler(archive, TASK, partial)
    with pytest.raises(
        DatasetError, match="period starts after it ends: 2019-06-10T00:40 > 2019-06-10T00:10"
    ):
        ArchiveSampler(archive, TASK, norm, period=(at(40), at(10)))
    with pytest.raises(DatasetError, match="period must be a"):
        ArchiveSampler(archive, TASK, norm, period=("yesterday", at(10)))
    with pytest.raises(DatasetError, match="num_examples must be positive, got 0"):
        ArchiveSampler(archive, TASK, norm, num_examples=0)
    with pytest.raises(DatasetError, match="rain_epsilon must be positive"):
        ArchiveSampler(archive, TASK, norm, oversample_rain=True, rain_epsilon=0.0)
    with pytest.raises(DatasetError, match="validation_fraction must be in"):
        split_periods(archive, TASK, 1.0)
    with pytest.raises(
        DatasetError,
        match=r"too short to split into train and validation periods 100 minutes apart",
    ):
        split_periods(archive, TASK, 0.2, gap_minutes=100)
    with pytest.raises(
        DatasetError, match=r"no abi_c13 data in 2019-06-10T00:02 \.\. 2019-06-10T00:28 to compute"
    ):
        compute_normalization(archive, TASK, period=(at(2), at(28)))
    with pytest.raises(DatasetError, match="max_times must be positive, got 0"):
        compute_normalization(archive, TASK, max_times=0)

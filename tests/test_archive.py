"""The zarr archive: encoding, levels, time axis, availability, concurrency, failures."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import pickle
import re
import shutil
import uuid
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from metnet.archive import (
    BRIGHTNESS_TEMPERATURE,
    RATE,
    REFLECTANCE,
    Archive,
    ArchiveError,
    encoding_for,
    nanmean_pool,
)
from metnet.config import GridConfig, TaskConfig
from metnet.grid import Grid

GRID = GridConfig(nx=64, ny=48, x_min_m=0.0, y_max_m=1_600_000.0)
CHUNK = 16  # 3 x 4 chunks at 1 km, 1 chunk at 4 km
RATE_TOL = RATE.scale_factor / 2 + 1e-5
DAY = np.datetime64("2019-06-10T00:00", "ns")
MIN = np.timedelta64(1, "m")


def rate_field(t: np.datetime64) -> np.ndarray:
    """A reproducible ``(48, 64)`` float32 rate field for time ``t``: gamma-distributed rain,
    dry pixels and a NaN (no coverage) corner."""
    rng = np.random.default_rng(int(np.datetime64(t, "m").astype(np.int64)))
    values = rng.gamma(0.4, 3.0, GRID.ny * GRID.nx).reshape(GRID.ny, GRID.nx)  # (48, 64)
    values[values < 0.3] = 0.0
    values[:6, :9] = np.nan
    return values.astype(np.float32)


def rate_dataset(times, variable: str = "precipitation_rate") -> xr.Dataset:
    times = np.atleast_1d(np.asarray(times, dtype="datetime64[ns]"))
    values = np.stack([rate_field(t) for t in times])  # (T, 48, 64)
    return Grid(GRID).dataset(
        {variable: (("time", "y", "x"), values, {"units": "mm/h"})}, time=times
    )


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every file of a store (relative path -> content)."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture
def archive(tmp_path) -> Archive:
    return Archive.create(str(tmp_path / "a.zarr"), GRID, chunk_px=CHUNK)


# ----------------------------------------------------------------------------- encoding


def test_encodings_round_trip_within_half_a_step():
    rng = np.random.default_rng(1)
    cases = [
        (RATE, rng.uniform(0, 300, 5000)),
        (REFLECTANCE, rng.uniform(0, 1.3, 5000)),
        (BRIGHTNESS_TEMPERATURE, rng.uniform(180, 330, 5000)),
    ]
    for encoding, values in cases:
        values = values.astype(np.float32)
        values[::7] = np.nan
        stored = encoding.encode(values)
        assert stored.dtype == np.uint16
        back = encoding.decode(stored)
        assert back.dtype == np.float32
        np.testing.assert_array_equal(np.isnan(back), np.isnan(values))
        assert np.nanmax(np.abs(back - values)) <= encoding.scale_factor / 2 * (1 + 1e-3)
    # MRMS rates come in steps of 0.1 mm/h: stored exactly.
    mrms = np.arange(0, 2000, dtype=np.float32) / 10
    assert np.max(np.abs(RATE.decode(RATE.encode(mrms)) - mrms)) < 1e-4
    # Out of range values are clipped, never wrapped around.
    np.testing.assert_allclose(RATE.decode(RATE.encode(np.array([-1.0, 5000.0]))), [0.0, 3276.7], atol=1e-3)


def test_encoding_choice_by_name_and_units():
    assert encoding_for("precipitation_rate", "mm/h") is RATE
    assert encoding_for("abi_c02", "1") is REFLECTANCE
    assert encoding_for("abi_c13", "K") is BRIGHTNESS_TEMPERATURE
    assert encoding_for("reflectivity_at_lowest_altitude", "dBZ").dtype == "float32"


def test_nanmean_pool_matches_xarray_coarsen():
    values = rate_field(DAY)  # (48, 64) with a NaN corner
    values[8:12, 8:12] = np.nan  # one whole 4 x 4 block missing
    reference = xr.DataArray(values, dims=("y", "x")).coarsen(y=4, x=4).mean().values
    pooled = nanmean_pool(values, 4)
    assert pooled.shape == (12, 16) and pooled.dtype == np.float32
    np.testing.assert_allclose(pooled, reference, rtol=1e-6, equal_nan=True)
    assert np.isnan(pooled[2, 2])
    with pytest.raises(ValueError, match="cannot pool a 48 x 63 field by 4"):
        nanmean_pool(values[:, :63], 4)


# ----------------------------------------------------------------------------- round trip


def test_round_trip_within_quantisation(archive):
    times = DAY + np.array([10, 12], dtype="timedelta64[m]")
    assert archive.write(rate_dataset(times)) == list(times)
    assert archive.variables == ("precipitation_rate",)
    assert archive.units("precipitation_rate") == "mm/h"
    got = archive.read("precipitation_rate", times, 0, 0, 64)  # (2, 64, 64)
    assert got.shape == (2, 64, 64) and got.dtype == np.float32
    for k, t in enumerate(times):
        expected = rate_field(t)
        np.testing.assert_array_equal(np.isnan(got[k, :48]), np.isnan(expected))
        assert np.nanmax(np.abs(got[k, :48] - expected)) <= RATE_TOL
        assert np.isnan(got[k, 48:]).all()  # below the grid's last row
    # The store is a CF dataset xarray decodes by itself to the same values.
    ds = archive.to_xarray(level=1)
    assert ds["precipitation_rate"].attrs["units"] == "mm/h"
    np.testing.assert_allclose(
        ds["precipitation_rate"].sel(time=times[1]).values, got[1, :48], atol=1e-5, equal_nan=True
    )
    np.testing.assert_allclose(ds["x"].values, Grid(GRID).x)
    assert ds["crs"].attrs["grid_mapping_name"] == "albers_conical_equal_area"


def test_level4_is_the_nanmean_pooling_of_the_written_field(archive):
    t = DAY + 20 * MIN
    archive.write(rate_dataset([t]))
    coarse = archive.read("precipitation_rate", [t], 0, 0, 16, level=4)[0, :12]  # (12, 16)
    expected = nanmean_pool(rate_field(t), 4)  # (12, 16)
    np.testing.assert_array_equal(np.isnan(coarse), np.isnan(expected))
    assert np.nanmax(np.abs(coarse - expected)) <= RATE_TOL
    assert archive.level_grid(4).shape == (12, 16)
    assert xr.open_zarr(archive.store, group="level4")["x"].size == 16


def test_read_windows_overhanging_the_edges_are_nan_padded(archive):
    t = DAY + 4 * MIN
    archive.write(rate_dataset([t]))
    full = archive.read("precipitation_rate", [t], 0, 0, 64)[0, :48]  # (48, 64)
    corner = archive.read("precipitation_rate", [t], -5, -7, 20)[0]  # (20, 20)
    assert np.isnan(corner[:5]).all() and np.isnan(corner[:, :7]).all()
    np.testing.assert_array_equal(corner[5:, 7:], full[:15, :13])
    far = archive.read("precipitation_rate", [t], 40, 60, 16)[0]  # bottom-right overhang
    np.testing.assert_array_equal(far[:8, :4], full[40:, 60:])
    assert np.isnan(far[8:]).all() and np.isnan(far[:, 4:]).all()
    assert np.isnan(archive.read("precipitation_rate", [t], 100, -50, 8)).all()  # off the grid
    coarse = archive.read("precipitation_rate", [t], -2, 14, 4, level=4)[0]  # (4, 4)
    np.testing.assert_array_equal(
        coarse[2:, :2], archive.read("precipitation_rate", [t], 0, 0, 16, level=4)[0, :2, 14:]
    )
    assert np.isnan(coarse[:2]).all() and np.isnan(coarse[:, 2:]).all()


def test_missing_times_read_as_nan(archive):
    t = DAY + 6 * MIN
    archive.write(rate_dataset([t]))
    got = archive.read(
        "precipitation_rate",
        [t, t + 2 * MIN, t - np.timedelta64(3, "D"), t + 29 * np.timedelta64(1, "s")],
        10, 10, 8,
    )  # fmt: skip
    assert np.isfinite(got[0]).all() and np.isnan(got[1:3]).all()
    np.testing.assert_array_equal(got[3], got[0])  # 00:06:29 belongs to the 00:06 slot


def test_static_fields_round_trip_exactly(archive):
    lat, lon = Grid(GRID).lat_lon()
    ds = Grid(GRID).dataset(
        {
            "latitude": (("y", "x"), lat.astype(np.float32), {"units": "degrees_north"}),
            "longitude": (("y", "x"), lon.astype(np.float32), {"units": "degrees_east"}),
        }
    )
    assert archive.write(ds) == []
    assert archive.static_variables == ("latitude", "longitude")
    np.testing.assert_array_equal(archive.read_static("latitude", 0, 0, 48)[:, :48], lat.astype(np.float32)[:, :48])
    window = archive.read_static("longitude", -1, 60, 6)  # (6, 6)
    assert np.isnan(window[0]).all() and np.isnan(window[:, 4:]).all()
    np.testing.assert_array_equal(window[1:, :4], lon.astype(np.float32)[:5, 60:])
    np.testing.assert_allclose(
        archive.read_static("latitude", 0, 0, 12, level=4)[:, :12][:12, :12],
        nanmean_pool(lat.astype(np.float32), 4)[:, :12],
        rtol=1e-6,
    )


# ----------------------------------------------------------------------------- time axis


def test_rewriting_the_same_data_leaves_identical_bytes(archive):
    ds = rate_dataset(DAY + np.array([0, 2, 30], dtype="timedelta64[m]"))
    archive.write(ds)
    before = store_bytes(Path(archive.store))
    assert archive.write(ds) == list(ds["time"].values)
    assert store_bytes(Path(archive.store)) == before
    reopened = Archive.open(archive.store, mode="r+")
    reopened.write(ds.isel(time=[1]))
    assert store_bytes(Path(archive.store)) == before


def test_out_of_order_writes_grow_the_axis_by_whole_days(archive):
    order = [
        DAY + 10 * MIN,
        DAY - 2 * MIN,  # the day before: prepends a day, renumbering the slots
        DAY + np.timedelta64(1, "D"),  # the day after: appends a day
        DAY + 4 * MIN,
        DAY - np.timedelta64(1, "D"),  # the first slot of the day before
    ]
    for t in order:
        archive.write(rate_dataset([t]))
    assert archive.time_length == 3 * 720
    assert archive.times[0] == DAY - np.timedelta64(1, "D")
    assert archive.times[-1] == DAY + np.timedelta64(2, "D") - 2 * MIN
    np.testing.assert_array_equal(archive.available_times("precipitation_rate"), np.sort(order))
    got = archive.read("precipitation_rate", order, 0, 0, 64)[:, :48]  # (5, 48, 64)
    for k, t in enumerate(order):
        assert np.nanmax(np.abs(got[k] - rate_field(t))) <= RATE_TOL
    # Another process's view (and xarray's) agrees: same axis, same values.
    ds = xr.open_zarr(archive.store, group="level1")
    np.testing.assert_array_equal(ds["time"].values, archive.times)
    for level in ("level4", "availability"):
        np.testing.assert_array_equal(xr.open_zarr(archive.store, group=level)["time"].values, archive.times)
    np.testing.assert_allclose(
        ds["precipitation_rate"].sel(time=order[1]).values, got[1], atol=1e-5, equal_nan=True
    )
    assert not list(Path(archive.store).rglob("c.old"))  # no leftovers of the moves


def test_reserve_covers_a_period_in_one_step(archive):
    archive.reserve("2019-06-09T12:00", "2019-06-11T01:00")
    assert archive.time_length == 3 * 720
    before = store_bytes(Path(archive.store))
    archive.write(rate_dataset([DAY + 8 * MIN]))
    assert archive.times[0] == np.datetime64("2019-06-09T00:00")
    changed = {k for k, v in store_bytes(Path(archive.store)).items() if before.get(k) != v}
    assert not any(k.startswith(("level1/time", "availability/time")) for k in changed)


def _write_times(store: str, times: list, barrier) -> None:
    """Child process: open the archive and write ``times`` one by one."""
    archive = Archive.open(store, mode="r+")
    barrier.wait()
    for t in times:
        archive.write(rate_dataset([t]))


def test_two_processes_writing_concurrently(tmp_path):
    store = str(tmp_path / "a.zarr")
    Archive.create(store, GRID, chunk_px=CHUNK)
    # A writes day D; B races it on the same variable's creation and grows the axis
    # both ways (a prepend moves chunks) while A writes.
    a_times = [DAY + k * 2 * MIN for k in range(8)]
    b_times = [DAY + np.timedelta64(1, "D") + k * 2 * MIN for k in range(4)]
    b_times += [DAY - np.timedelta64(1, "D") + k * 2 * MIN for k in range(4)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_write_times, args=(store, times, barrier))
        for times in (a_times, b_times)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]

    archive = Archive.open(store)
    everything = sorted(a_times + b_times)
    np.testing.assert_array_equal(archive.available_times("precipitation_rate"), everything)
    got = archive.read("precipitation_rate", everything, 0, 0, 64)[:, :48]  # (16, 48, 64)
    for k, t in enumerate(everything):
        assert np.nanmax(np.abs(got[k] - rate_field(t))) <= RATE_TOL, t
    assert archive.time_length == 3 * 720


def test_threads_of_one_process_exclude_each_other_too(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = str(tmp_path / "a.zarr")
    Archive.create(store, GRID, chunk_px=CHUNK)
    days = [DAY + np.timedelta64(d, "D") for d in (0, -1, 1, -2)]  # two prepends among them
    batches = [[day + k * 2 * MIN for k in range(3)] for day in days]

    def write(times):
        archive = Archive.open(store, mode="r+")  # one per thread, as a Prefect task does
        for t in times:
            archive.write(rate_dataset([t]))

    with ThreadPoolExecutor(len(batches)) as pool:
        list(pool.map(write, batches))
    archive = Archive.open(store)
    everything = sorted(t for batch in batches for t in batch)
    np.testing.assert_array_equal(archive.available_times("precipitation_rate"), everything)
    got = archive.read("precipitation_rate", everything, 0, 0, 64)[:, :48]  # (12, 48, 64)
    for k, t in enumerate(everything):
        assert np.nanmax(np.abs(got[k] - rate_field(t))) <= RATE_TOL, t


# ----------------------------------------------------------------------------- failures


def _failing_dataset(t: np.datetime64) -> xr.Dataset:
    """Two variables at ``t``: the first fine, the second a dask array whose computation
    raises (as a broken decoder would) after the first has been written."""

    def broken(block):
        raise RuntimeError("decoder crashed")

    ds = rate_dataset([t])
    bad = da.map_blocks(broken, da.zeros((1, 48, 64), chunks=(1, 48, 64)), meta=np.empty((0, 0, 0), np.float32))
    ds["radar_only_qpe_15m"] = (("time", "y", "x"), bad, {"units": "mm"})
    return ds


def test_interrupted_write_leaves_the_slot_missing_and_older_data_intact(archive):
    old, failing = DAY + 2 * MIN, DAY + 4 * MIN
    good = rate_dataset([old, failing])
    good["radar_only_qpe_15m"] = good["precipitation_rate"].assign_attrs(units="mm")
    archive.write(good)
    slot = 2  # 00:04 on an axis starting at 00:00
    older_files = {
        k: v
        for k, v in store_bytes(Path(archive.store)).items()
        if "/c/" in k and not re.search(rf"/c/{slot}(/|$)", k)
    }
    assert "level1/precipitation_rate/c/1/0/0" in older_files

    with pytest.raises(RuntimeError, match="decoder crashed") as info:
        archive.write(_failing_dataset(failing))
    note = "\n".join(info.value.__notes__)
    assert "2019-06-10T00:04" in note and archive.store in note and "marked missing" in note

    for variable in ("precipitation_rate", "radar_only_qpe_15m"):
        assert archive.is_available(variable, [old, failing]).tolist() == [True, False]
        assert np.isnan(archive.read(variable, [failing], 0, 0, 64)).all()
        np.testing.assert_array_equal(archive.available_times(variable), [old])
    after = store_bytes(Path(archive.store))
    assert {k: after.get(k) for k in older_files} == older_files  # only the failed slot changed
    got = archive.read("precipitation_rate", [old], 0, 0, 64)[0, :48]
    assert np.nanmax(np.abs(got - rate_field(old))) <= RATE_TOL

    # A fresh slot that fails is missing too, and a later good write makes it complete.
    with pytest.raises(RuntimeError):
        archive.write(_failing_dataset(DAY + 40 * MIN))
    assert not archive.is_available("precipitation_rate", [DAY + 40 * MIN])[0]
    archive.write(good.isel(time=[1]))
    assert archive.is_available("radar_only_qpe_15m", [failing])[0]


# ----------------------------------------------------------------------------- availability


def satellite_dataset(t: np.datetime64) -> xr.Dataset:
    values = np.full((1, GRID.ny, GRID.nx), 250.0, dtype=np.float32)  # (1, 48, 64) K
    return Grid(GRID).dataset({"abi_c13": (("time", "y", "x"), values, {"units": "K"})}, time=[t])


def tiny_task(**changes) -> TaskConfig:
    task = TaskConfig(
        satellite_bands=(13,),
        static_features=("latitude", "longitude"),
        history_minutes=10,
        history_interval_minutes=10,
        max_lead_time_minutes=12,
        context_km=64,
        target_km=8,
        packed_size=16,
    )
    return dataclasses.replace(task, **changes)


def write_latitude(archive: Archive) -> None:
    lat, _ = Grid(GRID).lat_lon()
    archive.write(Grid(GRID).dataset({"latitude": (("y", "x"), lat, {"units": "degrees_north"})}))


def test_missing_inputs_names_each_missing_variable_and_time(archive):
    task = tiny_task()  # frames at t0 - 10 min and t0
    t0 = DAY + 20 * MIN
    assert archive.missing_inputs(t0, task) == [
        "precipitation_rate at 2019-06-10T00:10",
        "abi_c13 within 15 min before 2019-06-10T00:10",
        "precipitation_rate at 2019-06-10T00:20",
        "abi_c13 within 15 min before 2019-06-10T00:20",
        "static field latitude",
        "static field longitude",
    ]
    archive.write(rate_dataset([DAY + 10 * MIN]))
    archive.write(satellite_dataset(DAY + 4 * MIN))  # 6 min before 00:10, 16 before 00:20
    write_latitude(archive)
    assert archive.missing_inputs(t0, task) == [
        "precipitation_rate at 2019-06-10T00:20",
        "abi_c13 within 15 min before 2019-06-10T00:20",
        "static field longitude",
    ]
    # The forecast time goes to its nearest slot like any other time.
    assert archive.missing_inputs(t0 + np.timedelta64(50, "s"), task) == archive.missing_inputs(t0, task)
    # Only the index is read: without any data chunk the answers are the same.
    before = archive.missing_inputs(t0, task), archive.available_times("abi_c13")
    for chunks in Path(archive.store).glob("level*/*/c"):
        shutil.rmtree(chunks)
    after = archive.missing_inputs(t0, task), archive.available_times("abi_c13")
    assert after[0] == before[0] and np.array_equal(after[1], before[1])


def test_satellite_age_limit_is_inclusive(archive):
    archive.write(satellite_dataset(DAY))
    assert archive.latest_available("abi_c13", DAY + 15 * MIN) == DAY
    assert archive.latest_available("abi_c13", DAY + 16 * MIN) is None
    assert archive.latest_available("abi_c13", DAY - 2 * MIN) is None
    archive.write(satellite_dataset(DAY + 10 * MIN))
    assert archive.latest_available("abi_c13", DAY + 15 * MIN) == DAY + 10 * MIN
    assert archive.latest_available("precipitation_rate", DAY) is None  # not in the archive


@pytest.mark.parametrize(
    "changes",
    [{}, {"history_minutes": 30, "history_interval_minutes": 15}],  # 15 min: off-slot frames
    ids=["on-slot-frames", "off-slot-frames"],
)
def test_complete_times_agrees_with_missing_inputs(archive, changes):
    task = tiny_task(**changes)
    radar = [DAY + k * 2 * MIN for k in range(25) if k not in (7, 8, 15)]
    archive.write(rate_dataset(radar))
    for minutes in (-6, 5, 20, 41):  # scan starts land on their nearest slot
        archive.write(satellite_dataset(DAY + minutes * MIN))
    write_latitude(archive)
    lon = Grid(GRID).lat_lon()[1]
    assert archive.complete_times(task).size == 0  # longitude is missing
    archive.write(Grid(GRID).dataset({"longitude": (("y", "x"), lon, {"units": "degrees_east"})}))
    candidates = DAY + np.arange(-10, 60, 2).astype("timedelta64[m]")
    brute = [t for t in candidates if not archive.missing_inputs(t, task)]
    complete = archive.complete_times(task)
    assert len(brute) > 3
    np.testing.assert_array_equal(complete, brute)


# ----------------------------------------------------------------------------- errors


def test_different_grid_is_refused_naming_the_store_and_keys(tmp_path):
    store = str(tmp_path / "a.zarr")
    Archive.open_or_create(store, GRID)
    assert Archive.open_or_create(store, GRID).grid_config == GRID
    other = dataclasses.replace(GRID, nx=128, crs="EPSG:3857")
    with pytest.raises(ArchiveError) as info:
        Archive.open_or_create(store, other)
    message = str(info.value)
    assert store in message and "different grid" in message
    assert "grid.nx: store 64, requested 128" in message
    assert "grid.crs: store 'EPSG:5070', requested 'EPSG:3857'" in message
    assert "ny" not in message
    with pytest.raises(ArchiveError, match="time_step_minutes: store 2, requested 5"):
        Archive.open_or_create(store, GRID, time_step_minutes=5)


def test_user_errors_name_the_store_and_the_problem(tmp_path, archive):
    missing = str(tmp_path / "nowhere.zarr")
    with pytest.raises(ArchiveError, match=f"{missing}: no archive there"):
        Archive.open(missing)
    with pytest.raises(ArchiveError, match="already exists"):
        Archive.create(archive.store, GRID)
    with pytest.raises(ArchiveError, match="positive divisor of 1440"):
        Archive.create(str(tmp_path / "b.zarr"), GRID, time_step_minutes=7)
    with pytest.raises(ArchiveError, match=r"nx and ny divisible by 4"):
        Archive.create(str(tmp_path / "c.zarr"), dataclasses.replace(GRID, nx=62))

    archive.write(rate_dataset([DAY]))
    with pytest.raises(ArchiveError, match="no variable 'abi_c13'; variables: precipitation_rate"):
        archive.read("abi_c13", [DAY], 0, 0, 8)
    with pytest.raises(ArchiveError, match="no static field 'elevation'; static fields: none"):
        archive.read_static("elevation", 0, 0, 8)
    with pytest.raises(ArchiveError, match="no level 2; levels: 1, 4"):
        archive.read("precipitation_rate", [DAY], 0, 0, 8, level=2)
    with pytest.raises(ArchiveError, match="window size must be positive, got 0"):
        archive.read("precipitation_rate", [DAY], 0, 0, 0)

    wrong_shape = rate_dataset([DAY]).isel(x=slice(0, 60))
    with pytest.raises(ArchiveError, match="60 x cells, the archive grid has 64"):
        archive.write(wrong_shape)
    shifted = rate_dataset([DAY]).assign_coords(x=Grid(GRID).x + 5000.0)
    with pytest.raises(ArchiveError, match="x coordinates .* differ from the archive grid"):
        archive.write(shifted)
    no_units = rate_dataset([DAY])
    no_units["precipitation_rate"].attrs.clear()
    with pytest.raises(ArchiveError, match="'precipitation_rate' has no 'units' attribute"):
        archive.write(no_units)
    with pytest.raises(ArchiveError, match="stored in 'mm/h', the dataset has 'm/s'"):
        archive.write(rate_dataset([DAY]).assign(precipitation_rate=lambda d: d.precipitation_rate.assign_attrs(units="m/s")))
    with pytest.raises(ArchiveError, match=r"'precipitation_rate' has dims \('y', 'x'\); .* dynamic"):
        archive.write(rate_dataset([DAY]).isel(time=0, drop=True))
    with pytest.raises(ArchiveError, match="several times in one 2 minutes slot"):
        archive.write(rate_dataset([DAY, DAY + np.timedelta64(30, "s")]))

    reader = Archive.open(archive.store)
    with pytest.raises(ArchiveError, match="opened read-only"):
        reader.write(rate_dataset([DAY]))


# ----------------------------------------------------------------------------- remote stores


def test_fsspec_url_store_grows_forward_and_refuses_a_prepend():
    store = f"memory://archives/{uuid.uuid4().hex}.zarr"
    archive = Archive.create(store, GRID, chunk_px=CHUNK, storage_options={})
    times = [DAY + 10 * MIN, DAY + 2 * MIN, DAY + np.timedelta64(1, "D")]  # forward growth only
    for t in times:
        archive.write(rate_dataset([t]))
    np.testing.assert_array_equal(archive.available_times("precipitation_rate"), sorted(times))
    got = Archive.open(store).read("precipitation_rate", times, 0, 0, 64)[:, :48]
    for k, t in enumerate(times):
        assert np.nanmax(np.abs(got[k] - rate_field(t))) <= RATE_TOL
    with pytest.raises(ArchiveError, match="refused: reserve\\(\\) the whole period"):
        archive.write(rate_dataset([DAY - 2 * MIN]))
    assert archive.times[0] == DAY  # nothing moved


def test_archive_pickles_by_address(archive):
    archive.write(rate_dataset([DAY]))
    clone = pickle.loads(pickle.dumps(archive))
    assert clone.store == archive.store and clone.variables == archive.variables
    np.testing.assert_array_equal(
        clone.read("precipitation_rate", [DAY], 0, 0, 8), archive.read("precipitation_rate", [DAY], 0, 0, 8)
    )
    assert os.path.exists(archive.store + ".lock")


_CRASHING_PREPEND = """
import os, sys
from metnet.archive import Archive
archive = Archive.open(sys.argv[1], mode="r+")
renames, real_rename = 0, os.rename
def rename(src, dst):  # the process dies for real before its k-th rename
    global renames
    renames += 1
    if renames == int(sys.argv[2]):
        os._exit(3)
    real_rename(src, dst)
os.rename = rename
archive.reserve("2019-06-09T12:00", "2019-06-09T12:00")
"""


@pytest.mark.parametrize("crash_at", [1, 6, 17, 30])
def test_a_prepend_killed_midway_is_completed_by_the_next_writer(tmp_path, crash_at):
    import subprocess
    import sys

    store = str(tmp_path / "a.zarr")
    archive = Archive.create(store, GRID, chunk_px=CHUNK)
    times = DAY + np.array([0, 2, 4, 30], dtype="timedelta64[m]")
    both = rate_dataset(times)
    both["radar_only_qpe_15m"] = both["precipitation_rate"].assign_attrs(units="mm")
    archive.write(both)
    # Each variable has 3 time arrays (level1, level4, availability): 1 + 4 renames each.
    done = subprocess.run([sys.executable, "-c", _CRASHING_PREPEND, store, str(crash_at)], check=False)
    assert done.returncode == 3

    with pytest.raises(ArchiveError, match="extension of the time axis was interrupted; open the archive with mode='r\\+'"):
        Archive.open(store).read("precipitation_rate", times, 0, 0, 8)
    repaired = Archive.open(store, mode="r+")
    assert repaired.times[0] == DAY - np.timedelta64(1, "D") and repaired.time_length == 2 * 720
    for variable in ("precipitation_rate", "radar_only_qpe_15m"):
        np.testing.assert_array_equal(repaired.available_times(variable), times)
        got = Archive.open(store).read(variable, times, 0, 0, 64)[:, :48]  # (4, 48, 64)
        for k, t in enumerate(times):
            assert np.nanmax(np.abs(got[k] - rate_field(t))) <= RATE_TOL
    assert not list(Path(store).rglob("c.old"))

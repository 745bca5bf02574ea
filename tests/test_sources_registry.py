"""One generic test over every registered source, plus the shared file-access helpers."""

from __future__ import annotations

import gzip
import inspect

import fsspec
import numpy as np
import pytest

from metnet.sources import (
    SOURCE_NAMES,
    Source,
    SourceError,
    get_source,
    read_bytes,
    source_class,
)


def test_registry_names_are_lower_case_and_unique():
    assert len(set(SOURCE_NAMES)) == len(SOURCE_NAMES)
    assert all(name == name.lower() for name in SOURCE_NAMES)
    assert {"mrms", "static"} <= set(SOURCE_NAMES)


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_lookup_is_case_insensitive(name):
    assert source_class(name.upper()) is source_class(name)
    assert type(get_source(name.title())) is source_class(name)


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"unknown source 'radar'; valid sources: ") as info:
        get_source("radar")
    for name in SOURCE_NAMES:
        assert name in str(info.value)


def test_invalid_option_lists_the_accepted_ones():
    with pytest.raises(
        ValueError,
        match=r"source 'mrms': invalid options \['colour'\].*accepted options: product, storage_",
    ):
        get_source("mrms", colour="red")


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_every_source_implements_the_protocol(name):
    source = get_source(name)
    assert isinstance(source, Source)
    assert source.name == name
    signatures = {
        "discover": ["location", "start", "end"],
        "time_of": ["path"],
        "read": ["path", "grid"],
    }
    for method, parameters in signatures.items():
        assert list(inspect.signature(getattr(source, method)).parameters) == parameters, method
    assert (source.__doc__ or "").strip(), f"{name}: the source class needs a docstring"


# ----------------------------------------------------------------------------- file helpers


def test_read_bytes_local_gzip_and_fsspec(tmp_path):
    payload = b"GRIB" + bytes(range(256)) * 10 + b"7777"
    plain, zipped = tmp_path / "a.grib2", tmp_path / "a.grib2.gz"
    plain.write_bytes(payload)
    zipped.write_bytes(gzip.compress(payload))
    assert read_bytes(str(plain)) == payload
    assert read_bytes(str(zipped)) == payload
    assert read_bytes(f"file://{zipped}") == payload
    with fsspec.open("memory://bucket/a.grib2.gz", "wb") as f:
        f.write(gzip.compress(payload))
    assert read_bytes("memory://bucket/a.grib2.gz") == payload


def test_read_bytes_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.grib2"
    with pytest.raises(SourceError, match=rf"{missing}: file not found"):
        read_bytes(str(missing))
    with pytest.raises(SourceError, match=r"memory://bucket/none\.grib2: cannot read the URL"):
        read_bytes("memory://bucket/none.grib2")
    bad = tmp_path / "bad.grib2.gz"
    bad.write_bytes(b"plain text")
    with pytest.raises(SourceError, match=rf"{bad}: cannot read the file \(Not a gzipped file"):
        read_bytes(str(bad))


def test_discovered_urls_keep_their_scheme():
    root = "memory://registry-test/CONUS/PrecipRate_00.00"
    for day, t in (("20190610", "000200"), ("20190610", "000000"), ("20190609", "235800")):
        with fsspec.open(f"{root}/{day}/MRMS_PrecipRate_00.00_{day}-{t}.grib2.gz", "wb") as f:
            f.write(gzip.compress(t.encode()))
    try:
        found = get_source("mrms").discover(root, np.datetime64("2019-06-10"), None)
        assert [p.rsplit("/", 1)[1] for p in found] == [
            "MRMS_PrecipRate_00.00_20190610-000000.grib2.gz",
            "MRMS_PrecipRate_00.00_20190610-000200.grib2.gz",
        ]
        assert all(p.startswith("memory://") for p in found)
        assert read_bytes(found[1]) == b"000200"  # the URLs are readable as returned
    finally:
        fsspec.filesystem("memory").rm("/registry-test", recursive=True)

"""Observation sources, one reader per family, registered by name.

``get_source(name, **options)`` returns a :class:`Source`: it finds files
(:meth:`~Source.discover`), tells a file's observation time from its name
(:meth:`~Source.time_of`) and reads one file onto the canonical grid
(:meth:`~Source.read`) as an ``xarray.Dataset`` of float32 ``(time, y, x)`` variables,
NaN = missing, each with a ``units`` attribute.

Files are local paths or fsspec URLs (``s3://``, ``gs://``, ``https://``, ``file://``,
``memory://``...); a ``.gz`` suffix is decompressed on the fly. ``s3://`` URLs are read
anonymously unless ``storage_options`` say otherwise (the NOAA buckets are public).
Every error a user can cause raises :class:`SourceError` naming the file.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import fsspec
import numpy as np

if TYPE_CHECKING:
    import xarray as xr

    from metnet.grid import Grid


class SourceError(ValueError):
    """A file that cannot be found, read or understood; the message names the file."""


@runtime_checkable
class Source(Protocol):
    """What every source implements (see the module docstring)."""

    name: str

    def discover(
        self, location: str, start: np.datetime64 | None, end: np.datetime64 | None
    ) -> list[str]:
        """Files under ``location`` observed in ``[start, end]`` (None = open), sorted by time."""
        ...

    def time_of(self, path: str) -> np.datetime64:
        """Observation time (UTC ``datetime64[ns]``) from the file name, no data read."""
        ...

    def read(self, path: str, grid: Grid) -> xr.Dataset:
        """One file on ``grid``: float32 ``(time, y, x)`` variables, NaN = missing."""
        ...


#: name -> "module:Class"; imported on first use so one broken reader does not break all.
_SOURCES: dict[str, str] = {
    "mrms": "metnet.sources.mrms:MRMSSource",
    "static": "metnet.sources.static:StaticSource",
    "goes": "metnet.sources.goes:GOESSource",
    "synthetic": "metnet.sources.synthetic:SyntheticSource",
    "zarr": "metnet.sources.zarr_source:ZarrSource",
}

SOURCE_NAMES: tuple[str, ...] = tuple(_SOURCES)


def source_class(name: str) -> type:
    """The class registered as ``name`` (case-insensitive)."""
    key = name.lower()
    if key not in _SOURCES:
        raise ValueError(f"unknown source {name!r}; valid sources: {', '.join(SOURCE_NAMES)}")
    module, cls = _SOURCES[key].split(":")
    return getattr(importlib.import_module(module), cls)


def get_source(name: str, **options) -> Source:
    """The source registered as ``name`` (case-insensitive), built with ``options``."""
    cls = source_class(name)
    try:
        inspect.signature(cls).bind(**options)
    except TypeError as exc:
        accepted = ", ".join(inspect.signature(cls).parameters) or "none"
        raise ValueError(
            f"source {name!r}: invalid options {sorted(options)} ({exc}); "
            f"accepted options: {accepted}"
        ) from None
    return cls(**options)


# ----------------------------------------------------------------------------- file access


def is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``scheme://...``) rather than a local path."""
    return "://" in str(path)


def _storage_options(path: str, storage_options: dict | None) -> dict:
    if storage_options is not None:
        return dict(storage_options)
    return {"anon": True} if str(path).startswith(("s3://", "s3a://")) else {}


def read_bytes(path: str, storage_options: dict | None = None) -> bytes:
    """The whole content of a local file or fsspec URL, gunzipped when it ends in ``.gz``."""
    path = str(path)
    compression = "gzip" if path.endswith(".gz") else None
    try:
        with fsspec.open(
            path, "rb", compression=compression, **_storage_options(path, storage_options)
        ) as f:
            return f.read()
    except FileNotFoundError as exc:
        if is_url(path):  # fsspec reports an unreachable server as not found, too
            cause = exc.__cause__ or exc.__context__
            detail = f" ({type(cause).__name__}: {cause})" if cause else ""
            raise SourceError(
                f"{path}: cannot read the URL: not found or unreachable{detail}"
            ) from exc
        raise SourceError(f"{path}: file not found") from None
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise SourceError(f"{path}: cannot read the file ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - remote backends raise their own types
        raise SourceError(f"{path}: cannot read the URL ({type(exc).__name__}: {exc})") from exc


_DATE_DIR = re.compile(r"\d{8}")


def discover_files(
    location: str,
    time_of: Callable[[str], np.datetime64],
    start: np.datetime64 | None,
    end: np.datetime64 | None,
    *,
    match: Callable[[str], bool],
    storage_options: dict | None = None,
) -> list[str]:
    """Files under ``location`` (a local folder or fsspec URL, searched recursively, or a
    single file) whose base name satisfies ``match`` and whose ``time_of`` lies in
    ``[start, end]``, sorted by time.

    Folders named ``YYYYMMDD`` (as in the NOAA buckets) outside the dates of
    ``[start, end]`` are not entered, so a bucket is listed by date prefixes. Returned
    paths have the form of ``location``: local paths stay local, URLs keep their scheme.
    """
    location = str(location)
    start = None if start is None else np.datetime64(start, "ns")
    end = None if end is None else np.datetime64(end, "ns")
    first_day = None if start is None else start.astype("datetime64[D]")
    last_day = None if end is None else end.astype("datetime64[D]")
    try:
        fs, root = fsspec.core.url_to_fs(location, **_storage_options(location, storage_options))
        if not fs.exists(root):
            raise SourceError(f"{location}: no such file or folder")
        found: list[str] = []
        pending = [root]
        while pending:
            folder = pending.pop()
            if not fs.isdir(folder):
                found.append(folder)
                continue
            for entry in fs.ls(folder, detail=True):
                name = PurePosixPath(entry["name"]).name
                if entry["type"] == "directory":
                    if _DATE_DIR.fullmatch(name):
                        day = np.datetime64(f"{name[:4]}-{name[4:6]}-{name[6:]}", "D")
                        if (first_day is not None and day < first_day) or (
                            last_day is not None and day > last_day
                        ):
                            continue
                    pending.append(entry["name"])
                else:
                    found.append(entry["name"])
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - remote backends raise their own types
        raise SourceError(f"{location}: cannot list ({type(exc).__name__}: {exc})") from exc

    timed = []
    for path in found:
        if not match(PurePosixPath(path).name):
            continue
        path = fs.unstrip_protocol(path) if is_url(location) else path
        t = time_of(path)
        if (start is None or t >= start) and (end is None or t <= end):
            timed.append((t, path))
    timed.sort(key=lambda tp: (tp[0].astype(np.int64), tp[1]))  # NaT (static files) first
    return [path for _, path in timed]

"""Ingest observation files into the archive: discover, read onto the grid, write.

:func:`ingest` is what ``metnet ingest`` and the Prefect ingest flow call; it returns an
:class:`IngestSummary` instead of raising, because one bad file must never stop a run:
every failure (a file that cannot be listed, decoded or written) is recorded with its
reason and the run goes on. :func:`ingest_file` is the unit of work for one file, for
callers that spread files over workers.

A file whose time slot is already available in the archive for every variable the file
holds is skipped without being decoded (the variables are known from the file name,
see :func:`expected_variables`), unless ``overwrite`` is set; rewriting is idempotent
anyway, skipping only saves the decoding.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from metnet.archive import Archive
from metnet.sources import Source


@dataclass(frozen=True)
class FileResult:
    """What happened to one file (or to a location that could not be listed)."""

    path: str
    status: str
    """``written``, ``skipped`` (already in the archive) or ``failed``."""
    times: tuple[np.datetime64, ...] = ()
    """Slot times written."""
    reason: str = ""
    """Why it failed."""
    decoded: bool = False
    """Whether the file was read and decoded (a write may still have failed)."""


@dataclass
class IngestSummary:
    """The outcome of one ingest run."""

    archive: str
    source: str
    files_found: int = 0
    """Files discovered in the period."""
    results: list[FileResult] = field(default_factory=list)
    """One per file, plus one per location that could not be listed."""
    static_written: tuple[str, ...] = ()
    """Static fields written because the archive had none."""
    seconds: float = 0.0
    """Wall time of the run."""

    @property
    def files_read(self) -> int:
        """Files decoded."""
        return sum(r.decoded for r in self.results)

    @property
    def times_written(self) -> np.ndarray:
        """Distinct slot times written, sorted ``datetime64[ns]``."""
        times = [t for r in self.results for t in r.times]
        return np.unique(np.array(times, dtype="datetime64[ns]"))

    @property
    def skipped(self) -> list[str]:
        """Files not decoded because their slots were already in the archive."""
        return [r.path for r in self.results if r.status == "skipped"]

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    def format(self) -> str:
        """A human-readable multi-line report."""
        times = self.times_written
        span = f" ({_fmt(times[0])} .. {_fmt(times[-1])})" if times.size else ""
        lines = [
            f"ingest {self.source} -> {self.archive}",
            f"  files found:   {self.files_found}",
            f"  files read:    {self.files_read}",
            f"  times written: {times.size}{span}",
            f"  skipped:       {len(self.skipped)} (already in the archive; --overwrite rewrites)",
            f"  failed:        {len(self.failed)}",
        ]
        lines += [f"    {r.path}: {r.reason}" for r in self.failed]
        if self.static_written:
            lines.append(f"  static fields: {', '.join(self.static_written)}")
        lines.append(f"  elapsed:       {self.seconds:.1f} s")
        return "\n".join(lines)


def _fmt(t: np.datetime64) -> str:
    return np.datetime_as_string(np.datetime64(t, "s"), unit="m")


def _reason(exc: BaseException) -> str:
    # SourceError and ArchiveError messages already name the file or store.
    if isinstance(exc, ValueError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def expected_variables(source: Source, path: str) -> tuple[str, ...] | None:
    """The variables ``path`` will yield, known without decoding it: the source's
    ``variables_of(path)`` if it has one, else its single ``variable``, else the fixed
    ``variables`` tuple a source such as ``synthetic`` declares for every file;
    None = unknown."""
    variables_of = getattr(source, "variables_of", None)
    if callable(variables_of):
        return tuple(variables_of(path))
    variable = getattr(source, "variable", None)
    if isinstance(variable, str):
        return (variable,)
    declared = getattr(source, "variables", None)
    if isinstance(declared, tuple) and all(isinstance(v, str) for v in declared):
        return declared
    return None


def ingest_file(
    archive: Archive, source: Source, path: str, *, overwrite: bool = False
) -> FileResult:
    """Read one file onto the archive grid and write it; never raises for a bad file."""
    try:
        t = source.time_of(path)
        variables = expected_variables(source, path)
        if not overwrite and variables and all(
            archive.is_available(v, [t])[0] for v in variables
        ):
            return FileResult(path, "skipped")
        ds = source.read(path, archive.grid)
    except Exception as exc:  # noqa: BLE001 - recorded, the run goes on
        return FileResult(path, "failed", reason=_reason(exc))
    try:
        times = archive.write(ds)
    except Exception as exc:  # noqa: BLE001
        return FileResult(path, "failed", reason=_reason(exc), decoded=True)
    return FileResult(path, "written", tuple(times), decoded=True)


def discover(
    source: Source,
    locations: Iterable[str],
    start: np.datetime64 | None = None,
    end: np.datetime64 | None = None,
) -> tuple[list[str], list[FileResult]]:
    """Files of ``source`` under every location in ``[start, end]``, sorted by time and
    without duplicates, and a failed result for each location that cannot be listed."""
    found: dict[str, np.datetime64] = {}
    failures = []
    for location in locations:
        try:
            for path in source.discover(str(location), start, end):
                found.setdefault(path, source.time_of(path))
        except Exception as exc:  # noqa: BLE001
            failures.append(FileResult(str(location), "failed", reason=_reason(exc)))
    return sorted(found, key=lambda p: (found[p], p)), failures


def ingest(
    archive: Archive,
    source: Source,
    locations: Sequence[str],
    *,
    start: np.datetime64 | None = None,
    end: np.datetime64 | None = None,
    overwrite: bool = False,
    static_source: Source | None = None,
    progress: bool = False,
) -> IngestSummary:
    """Ingest every file of ``source`` found under ``locations`` in ``[start, end]``.

    The archive's time axis is grown once for the whole period first. When the archive
    has no static fields yet and ``static_source`` is given, its fields (latitude,
    longitude, elevation with a DEM) are written too. ``progress`` shows a progress bar.
    """
    began = time.perf_counter()
    summary = IngestSummary(archive=archive.store, source=getattr(source, "name", str(source)))
    files, summary.results = discover(source, locations, start, end)
    summary.files_found = len(files)
    if files:
        times = [source.time_of(p) for p in files]
        try:
            archive.reserve(min(times), max(times))
        except Exception as exc:  # noqa: BLE001 - every write would fail the same way
            summary.results += [FileResult(p, "failed", reason=_reason(exc)) for p in files]
            files = []
    if static_source is not None and not archive.static_variables:
        try:
            archive.write(static_source.read(None, archive.grid))
            summary.static_written = archive.static_variables
        except Exception as exc:  # noqa: BLE001
            summary.results.append(FileResult("static fields", "failed", reason=_reason(exc)))
    columns = (
        TextColumn("ingest {task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[last]}"), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(summary.source, total=len(files), last="")
        for path in files:
            result = ingest_file(archive, source, path, overwrite=overwrite)
            summary.results.append(result)
            bar.update(task, advance=1, last=f"{result.status} {path.rsplit('/', 1)[-1]}")
    summary.seconds = time.perf_counter() - began
    return summary

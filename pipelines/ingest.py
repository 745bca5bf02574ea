"""Prefect ingest flow: new observation files -> the archive, one retried task per file.

:func:`ingest_flow` discovers the files of a source (``mrms``, ``goes``, ``synthetic``,
...) under local folders or fsspec URLs, for a period or for the newest
``latest_minutes``, and writes each one with :func:`metnet.ingest.ingest_file` in its own
task, :data:`INGEST_THREADS` at a time. Around the library it adds:

- **Skipping**: files whose slot is already in the archive (from the availability
  index and the variables a file holds, `metnet.ingest.expected_variables`) get no task at all.
- **Retries**: a task whose file failed with a *transient* I/O error (see
  :func:`is_transient`: a URL that could not be read or listed, HTTP 5xx, 408 or 429,
  timeouts) is retried ``retries`` times with exponential back-off
  (``backoff_seconds * 2**n`` plus 20 % jitter). Decoding errors, wrong products and
  local files that do not exist are permanent and are not retried.
- **Failure log**: every file that still fails is reported in the flow's return value
  and a table artifact (``ingest-failures``), logged as a warning, and appended with
  its reason to the JSON-lines log ``<archive>.ingest-failures.jsonl`` next to the
  store. Files logged as *permanently* failed are not attempted again by later runs
  (``retry_failed=True`` retries them), so a bad upstream file is decoded once, not
  every two minutes.
- **Atomic per slot**: the archive's own guarantee (a slot is all written or reads as
  missing), so a killed run leaves nothing half-written and re-running is safe.

The archive's time axis is grown once for the whole period and the static fields are
written before the fan-out, so the parallel writers only write data (see
:mod:`metnet.archive`, "Concurrency"). Run at most one ingest flow per store at a time
(the deployments set a concurrency limit of 1).
"""

from __future__ import annotations

import re
import time
from typing import Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import exponential_backoff

from metnet.archive import Archive
from metnet.ingest import (
    FileResult,
    IngestSummary,
    discover,
    expected_variables,
    ingest_file,
)
from metnet.sources import get_source
from pipelines.common import (
    append_jsonl,
    grid_config_of,
    iso,
    parse_time,
    read_jsonl,
    utc_now,
)

#: Files read and written at the same time by one flow run (threads: decoding and
#: zarr compression release the GIL). Change with
#: ``ingest_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=n))``.
INGEST_THREADS = 4
#: Default number of retries of a file that fails with a transient error.
RETRIES = 3
#: Default first retry delay, seconds; the n-th retry waits ``BACKOFF_SECONDS * 2**n``.
BACKOFF_SECONDS = 2.0
#: Suffix of the failure log written next to the archive store.
FAILURE_LOG_SUFFIX = ".ingest-failures.jsonl"

# Messages of metnet.sources for remote I/O that may succeed later (see read_bytes and
# discover_files); anything else (decoding, wrong product, a missing local file) is final.
_TRANSIENT = re.compile(r"cannot read the URL|cannot list|timed out|timeout", re.IGNORECASE)
# aiohttp puts the HTTP status in the message: 4xx other than 408 (timeout) and
# 429 (too many requests) means the request itself is wrong and will fail again.
_HTTP_STATUS = re.compile(r"ClientResponseError: (\d{3})")


def is_transient(reason: str) -> bool:
    """Whether a failure reason (as :func:`metnet.ingest.ingest_file` reports it) is a
    remote I/O error worth retrying: unreadable or unlistable URLs, HTTP 5xx, 408 and
    429, timeouts; not HTTP 4xx otherwise, and nothing about a file's content."""
    status = _HTTP_STATUS.search(reason)
    if status and status[1].startswith("4") and status[1] not in ("408", "429"):
        return False
    return bool(_TRANSIENT.search(reason))


class IngestFileError(RuntimeError):
    """A file that could not be ingested; ``transient`` tells whether a retry may help."""

    def __init__(self, result: FileResult):
        super().__init__(result.reason)
        self.result = result
        self.transient = is_transient(result.reason)


def _retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only :class:`IngestFileError` s that are transient."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, IngestFileError) and exc.transient


def failure_log_path(archive: str) -> str:
    """Where the failures of ingests into ``archive`` are logged: next to the store."""
    return archive.rstrip("/") + FAILURE_LOG_SUFFIX


@task(
    name="ingest-file",
    task_run_name="ingest {path}",
    retries=RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_SECONDS),
    retry_jitter_factor=0.2,
    retry_condition_fn=_retry_if_transient,
    cache_policy=NO_CACHE,  # the archive's availability index is the cache
)
def ingest_file_task(
    archive: str,
    source: str,
    path: str,
    source_options: dict[str, Any] | None = None,
    archive_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> FileResult:
    """Read one file onto the archive grid and write it; raises :class:`IngestFileError`."""
    result = ingest_file(
        Archive.open(archive, mode="r+", storage_options=archive_options),
        get_source(source, **(source_options or {})),
        path,
        overwrite=overwrite,
    )
    if result.status == "failed":
        raise IngestFileError(result)
    return result


@task(
    name="discover-files",
    retries=RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_SECONDS),
    retry_condition_fn=_retry_if_transient,
    cache_policy=NO_CACHE,
)
def discover_task(
    source: str,
    locations: list[str],
    start: np.datetime64 | None,
    end: np.datetime64 | None,
    source_options: dict[str, Any] | None = None,
) -> list[str]:
    """Files of ``source`` under ``locations`` in ``[start, end]``, sorted by time.

    A location that cannot be listed fails the task (retried when transient): without
    its listing the run cannot know what it is missing.
    """
    files, failures = discover(get_source(source, **(source_options or {})), locations, start, end)
    if failures:
        raise IngestFileError(failures[0])
    return files


@task(name="write-static-fields", cache_policy=NO_CACHE)
def static_task(
    archive: str, dem: str | None, archive_options: dict[str, Any] | None = None
) -> tuple[str, ...]:
    """Write latitude, longitude (and elevation with ``dem``) if the archive has none."""
    store = Archive.open(archive, mode="r+", storage_options=archive_options)
    if store.static_variables:
        return ()
    store.write(get_source("static", dem=dem).read(None, store.grid))
    return store.static_variables


def _period(
    start: str | None, end: str | None, latest_minutes: int | None, now: str | None
) -> tuple[np.datetime64 | None, np.datetime64 | None]:
    """``[start, end]`` from explicit bounds, or ``[now - latest_minutes, now]``."""
    if latest_minutes is None:
        return parse_time(start, "start"), parse_time(end, "end")
    if start is not None or end is not None:
        raise ValueError("give either latest_minutes or start/end, not both")
    if latest_minutes <= 0:
        raise ValueError(f"latest_minutes must be positive, got {latest_minutes}")
    t_now = parse_time(now, "now") if now is not None else utc_now()
    return t_now - np.timedelta64(int(latest_minutes), "m"), t_now


def _open_archive(
    archive: str, preset: str | None, config_file: str | None, options: dict | None
) -> Archive:
    grid = grid_config_of(preset, config_file)
    if grid is not None:
        return Archive.open_or_create(archive, grid, storage_options=options)
    try:
        return Archive.open(archive, mode="r+", storage_options=options)
    except ValueError as exc:
        raise ValueError(f"{exc}; give preset or config_file to create it") from None


def _already_ingested(store: Archive, source: Any, files: list[str]) -> set[str]:
    """Files whose slot holds every variable they would write (no data read)."""
    done = set()
    by_variables: dict[tuple[str, ...], list[str]] = {}
    for path in files:
        variables = expected_variables(source, path)
        if variables:
            by_variables.setdefault(variables, []).append(path)
    for variables, paths in by_variables.items():
        times = [source.time_of(p) for p in paths]
        ok = np.logical_and.reduce([store.is_available(v, times) for v in variables])
        done.update(p for p, available in zip(paths, ok) if available)
    return done


def _outcome(path: str, future: Any, retries: int) -> tuple[FileResult, dict[str, Any] | None]:
    """The :class:`FileResult` of a finished ingest task, and its failure record (or None)."""
    future.wait()
    outcome = future.state.result(raise_on_failure=False)
    if isinstance(outcome, FileResult):
        return outcome, None
    if isinstance(outcome, IngestFileError):
        result, transient = outcome.result, outcome.transient
    else:  # an error outside ingest_file (e.g. the archive vanished): keep its text
        result = FileResult(path, "failed", reason=f"{type(outcome).__name__}: {outcome}")
        transient = False
    reason = result.reason + (f" (still failing after {retries} retries)" if transient else "")
    failed = FileResult(path, "failed", reason=reason, decoded=result.decoded)
    return failed, {"path": path, "reason": reason, "transient": transient}


@flow(
    name="metnet-ingest",
    task_runner=ThreadPoolTaskRunner(max_workers=INGEST_THREADS),
    validate_parameters=True,
)
def ingest_flow(
    archive: str,
    locations: list[str],
    source: str = "mrms",
    start: str | None = None,
    end: str | None = None,
    latest_minutes: int | None = None,
    now: str | None = None,
    source_options: dict[str, Any] | None = None,
    archive_options: dict[str, Any] | None = None,
    preset: str | None = None,
    config_file: str | None = None,
    dem: str | None = None,
    overwrite: bool = False,
    retry_failed: bool = False,
    retries: int = RETRIES,
    backoff_seconds: float = BACKOFF_SECONDS,
    failure_log: str | None = None,
) -> dict[str, Any]:
    """Ingest the files of ``source`` under ``locations`` into the ``archive`` store.

    Period: ``start``/``end`` (UTC, either open), or the newest ``latest_minutes`` before
    ``now`` (default: the current time). A new archive needs ``preset`` or
    ``config_file`` for its grid. ``failure_log`` defaults to
    :func:`failure_log_path`. Returns a summary: ``files_found``, ``written``,
    ``skipped``, ``failed`` (``path``, ``reason``, ``transient``), ``times_written``
    (ISO minutes), ``static_written``, ``failure_log`` and ``report`` (the text of
    :meth:`metnet.ingest.IngestSummary.format`).
    """
    logger = get_run_logger()
    began = time.perf_counter()
    t_start, t_end = _period(start, end, latest_minutes, now)
    store = _open_archive(archive, preset, config_file, archive_options)
    log_path = failure_log or failure_log_path(archive)
    source_obj = get_source(source, **(source_options or {}))
    backoff = exponential_backoff(backoff_factor=backoff_seconds)

    summary = IngestSummary(archive=archive, source=source)
    new_failures: list[dict[str, Any]] = []
    try:
        files = discover_task.with_options(retries=retries, retry_delay_seconds=backoff)(
            source, [str(loc) for loc in locations], t_start, t_end, source_options
        )
    except IngestFileError as exc:
        files = []
        summary.results.append(exc.result)
        new_failures.append(
            {"path": exc.result.path, "reason": exc.result.reason, "transient": exc.transient}
        )
    summary.files_found = len(files)

    known_bad = set()
    if not retry_failed:
        known_bad = {r["path"] for r in read_jsonl(log_path) if not r.get("transient")}
    done = set() if overwrite else _already_ingested(store, source_obj, files)
    todo = [p for p in files if p not in done and p not in known_bad]
    summary.results += [FileResult(p, "skipped") for p in files if p in done]
    previously_failed = [p for p in files if p in known_bad and p not in done]
    summary.results += [
        FileResult(p, "failed", reason=f"{p}: failed permanently before, see {log_path}")
        for p in previously_failed
    ]

    if todo:  # grow the time axis once, before the writers fan out
        times = [source_obj.time_of(p) for p in todo]
        store.reserve(min(times), max(times))
    summary.static_written = static_task(archive, dem, archive_options)

    file_task = ingest_file_task.with_options(retries=retries, retry_delay_seconds=backoff)
    futures = [
        file_task.submit(archive, source, path, source_options, archive_options, overwrite)
        for path in todo
    ]
    for path, future in zip(todo, futures):
        result, failure = _outcome(path, future, retries)
        summary.results.append(result)
        if failure:
            new_failures.append(failure)
    summary.seconds = time.perf_counter() - began

    if new_failures:
        stamp_now = iso(utc_now())
        append_jsonl(log_path, [dict(r, logged=stamp_now, source=source) for r in new_failures])
        create_table_artifact(
            key="ingest-failures", table=new_failures,
            description=f"Files that failed to ingest into {archive} (also in {log_path})",
        )  # fmt: skip
        for r in new_failures:
            logger.warning("ingest failed: %s", r["reason"])
    report = summary.format()
    logger.info("%s", report)
    create_markdown_artifact(key="ingest-summary", markdown=f"```\n{report}\n```")
    return {
        "archive": archive,
        "source": source,
        "files_found": summary.files_found,
        "written": [r.path for r in summary.results if r.status == "written"],
        "skipped": summary.skipped,
        "failed": [
            {"path": r.path, "reason": r.reason, "transient": is_transient(r.reason)}
            for r in summary.failed
        ],
        "times_written": [iso(t) for t in summary.times_written],
        "static_written": list(summary.static_written),
        "failure_log": log_path,
        "report": report,
    }

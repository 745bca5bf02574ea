"""Time values from users (CLI, YAML, flow parameters) as UTC ``datetime64[ns]``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np


def to_utc_datetime64(value: Any) -> np.datetime64:
    """``value`` as UTC ``datetime64[ns]``.

    Accepts a ``datetime64``, an ISO 8601 string (a trailing ``Z`` allowed) or a
    ``datetime`` (timezone-aware values are converted to UTC; naive ones are taken as
    UTC). Raises ``ValueError`` for anything else, including NaT; callers re-raise it
    with a message naming their parameter.
    """
    if isinstance(value, datetime) and value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    if isinstance(value, str) and value.endswith("Z"):
        value = value[:-1]
    try:
        t = np.datetime64(value, "ns")
    except (TypeError, ValueError):
        raise ValueError(f"not a time: {value!r}") from None
    if np.isnat(t):
        raise ValueError(f"not a time: {value!r}")
    return t

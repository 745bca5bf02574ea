"""User time values -> UTC datetime64[ns]."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from metnet.times import to_utc_datetime64

T = np.datetime64("2019-06-10T00:30", "ns")


@pytest.mark.parametrize(
    "value",
    [
        "2019-06-10T00:30",
        "2019-06-10T00:30Z",
        "2019-06-10T00:30:00.000",
        np.datetime64("2019-06-10T00:30"),
        datetime(2019, 6, 10, 0, 30),
        datetime(2019, 6, 9, 20, 30, tzinfo=timezone(timedelta(hours=-4))),
    ],
)
def test_accepted_forms_give_the_same_utc_time(value):
    t = to_utc_datetime64(value)
    assert t == T and t.dtype == np.dtype("datetime64[ns]")


@pytest.mark.parametrize("value", ["tomorrow", "", "NaT", None, 3.5])
def test_anything_else_is_a_value_error(value):
    with pytest.raises(ValueError, match="not a time"):
        to_utc_datetime64(value)

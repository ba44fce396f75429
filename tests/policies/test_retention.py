from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from policies.model import Retain
from policies.retention import keep, to_delete

T0 = datetime(2026, 3, 28, 12, tzinfo=timezone.utc)  # spans the EU spring-forward weekend
instants = st.lists(st.integers(0, 14 * 24 * 60).map(lambda m: T0 + timedelta(minutes=m)), max_size=120)
rules = st.builds(Retain, last=st.integers(0, 10), hourly=st.integers(0, 30), daily=st.integers(0, 10),
                  weekly=st.integers(0, 4), monthly=st.integers(0, 3), min=st.integers(1, 12))


@given(instants, rules)
def test_keeps_the_newest_and_min_and_is_idempotent(points, retain):
    kept = keep(points, retain)
    assert kept <= {p.astimezone(timezone.utc) for p in points}
    if points:
        assert max(points) in kept
    assert len(kept) >= min(retain.min, len(set(points)))
    assert keep(kept, retain) == kept
    assert set(to_delete(points, retain)).isdisjoint(kept)


def test_hourly_daily_in_utc_across_a_dst_change():
    # every 15 minutes for 3 days around 2026-03-29 (Europe's clocks jump; UTC does not)
    points = [T0 + timedelta(minutes=15 * i) for i in range(3 * 96)]
    kept = keep(points, Retain(last=4, hourly=24, daily=3, min=2))
    newest = max(points)
    assert sorted(kept, reverse=True)[:4] == [newest - timedelta(minutes=15 * i) for i in range(4)]
    hours = {(p.day, p.hour) for p in kept}
    assert len(hours) == 24 + 1  # 24 hourly buckets; the daily picks add 29th 23:45 (30th and 31st are inside)
    assert len(to_delete(points, Retain(min=5))) == len(points) - 5


def test_local_times_are_judged_in_utc():
    from zoneinfo import ZoneInfo
    berlin = ZoneInfo("Europe/Berlin")
    a = datetime(2026, 10, 25, 2, 30, tzinfo=berlin)  # first 02:30 (CEST)
    b = datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=berlin)  # second 02:30 (CET), an hour later
    assert keep([a, b], Retain(hourly=1, min=1)) == {b.astimezone(timezone.utc)}
    assert len(keep([a, b], Retain(hourly=2, min=1))) == 2

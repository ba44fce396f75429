"""Fire times: strictly increasing, equal to croniter's for cron, aligned for every, and right
across spring-forward and fall-back in several zones. `now` comes from time-machine."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import time_machine
from croniter import croniter
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.schedule.triggers import trigger_for
from policies.errors import Where
from policies.model import Policy

W = Where("test.yaml", 1, 1)
ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "UTC", "Asia/Kolkata"]
starts = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31)).map(
    lambda d: d.replace(tzinfo=timezone.utc))
intervals = st.sampled_from([60, 300, 900, 1800, 3600, 7200, 86400, 90, 7 * 60, 5400])
crons = st.sampled_from(["*/5 * * * *", "0 * * * *", "30 2 * * *", "15 1,2,3 * * *", "0 9 * * mon-fri",
                         "H/10 8-18 * * mon-fri", "H H * * *", "0 0 1 * *"])


def policy(**kw) -> Policy:
    return Policy(name=kw.pop("name", "p"), kind="auto-marker", node="n", where=W, **kw)


@given(starts, intervals, st.sampled_from(ZONES), st.integers(0, 600))
def test_every_is_increasing_and_aligned(start, every, zone, offset):
    offset = offset % every
    times = trigger_for(policy(every=every, offset=offset, timezone=zone)).fire_times(start, 30)
    assert times == sorted(set(times)) and len(times) == 30
    assert all(t >= start for t in times)
    tz = ZoneInfo(zone)
    for t in times:
        local = t.astimezone(tz).replace(tzinfo=None)
        if (t - timedelta(seconds=1)).astimezone(tz).utcoffset() != t.astimezone(tz).utcoffset():
            continue  # the end of a DST gap stands in for the wall times that did not exist
        if 86400 % every == 0:
            midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
            assert ((local - midnight).total_seconds() - offset) % every == 0, (t, local)


@given(starts, crons)
def test_cron_in_utc_matches_croniter(start, expr):
    times = trigger_for(policy(cron=expr, name="erp")).fire_times(start, 20)
    it = croniter(expr, start.replace(tzinfo=None) - timedelta(microseconds=1), hash_id=b"erp")  # at or after start
    assert [t.replace(tzinfo=None) for t in times] == [it.get_next(datetime) for _ in range(20)]


@given(st.sampled_from(ZONES), crons, st.integers(2025, 2028))
def test_cron_across_dst_changes(zone, expr, year):
    """Over the whole year: strictly increasing; no wall time fires twice; a daily time inside a
    spring-forward gap still fires that day (at the end of the gap)."""
    start = datetime(year, 1, 1, tzinfo=timezone.utc)
    tz = ZoneInfo(zone)
    times = trigger_for(policy(cron=expr, timezone=zone, name="erp")).fire_times(start, 400)
    assert times == sorted(set(times))
    walls = [t.astimezone(tz).replace(tzinfo=None) for t in times]
    assert len(walls) == len(set(walls)), "a wall-clock time fired twice (fall back)"


def test_daily_point_survives_spring_forward_and_fall_back_once():
    for zone, spring, fall in (("Europe/Berlin", "2026-03-29", "2026-10-25"),
                               ("America/New_York", "2026-03-08", "2026-11-01"),
                               ("Australia/Sydney", "2026-10-04", "2026-04-05")):
        tz = ZoneInfo(zone)
        t = trigger_for(policy(cron="30 2 * * *", timezone=zone))
        for day, expect_local in ((spring, "03:00"), (fall, "02:30")):
            d = datetime.fromisoformat(day)
            start = (d - timedelta(days=1)).replace(tzinfo=tz)
            fires = [x.astimezone(tz) for x in t.fire_times(start, 4)]
            on_day = [x for x in fires if x.date() == d.date()]
            assert len(on_day) == 1, (zone, day, fires)
            assert on_day[0].strftime("%H:%M") == expect_local, (zone, day, on_day)


def test_every_15m_over_a_day_with_dst_in_berlin():
    tz = ZoneInfo("Europe/Berlin")
    t = trigger_for(policy(every=900, timezone="Europe/Berlin"))
    fires = t.fire_times(datetime(2026, 3, 29, 0, 0, tzinfo=tz), 200)
    day = [f for f in fires if f.astimezone(tz).date().isoformat() == "2026-03-29"]
    assert len(day) == 96 - 4  # 02:00-02:45 do not exist: they fold into the one fire at 03:00
    fires = t.fire_times(datetime(2026, 10, 25, 0, 0, tzinfo=tz), 200)
    day = [f for f in fires if f.astimezone(tz).date().isoformat() == "2026-10-25"]
    assert len(day) == 96  # the repeated hour fires once


def test_window_and_blackout():
    p = policy(every=3600, window=(datetime(2000, 1, 1, 8).time(), datetime(2000, 1, 1, 18).time()),
               blackout=((datetime(2026, 12, 24).date(), datetime(2026, 12, 26).date()),))
    fires = trigger_for(p).fire_times(datetime(2026, 12, 23, tzinfo=timezone.utc), 20)
    assert all(8 <= f.hour < 18 for f in fires)
    assert not any(f.date().isoformat() in ("2026-12-24", "2026-12-25", "2026-12-26") for f in fires)
    assert fires[0] == datetime(2026, 12, 23, 8, tzinfo=timezone.utc)
    assert fires[10].date().isoformat() == "2026-12-27"


def test_next_fire_time_uses_now_from_the_clock():
    t = trigger_for(policy(every=900))
    with time_machine.travel(datetime(2026, 6, 1, 10, 7, tzinfo=timezone.utc), tick=False):
        now = datetime.now(timezone.utc)
        assert t.get_next_fire_time(None, now) == datetime(2026, 6, 1, 10, 15, tzinfo=timezone.utc)
        prev = datetime(2026, 6, 1, 10, 15, tzinfo=timezone.utc)
        assert t.get_next_fire_time(prev, now) == datetime(2026, 6, 1, 10, 30, tzinfo=timezone.utc)

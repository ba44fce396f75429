"""APScheduler triggers compiled from policies: ``every`` (aligned interval) and ``cron`` (croniter,
with ``H`` hashed on the policy name), both in the policy's time zone, with windows and blackouts.

Both produce local wall-clock candidates and map them to instants the same way, which is where
the DST rules live: a wall time that does not exist (spring forward) fires once, at the end of the
gap; an ambiguous one (fall back) fires once, at its first occurrence.
"""

import functools
import math
from collections.abc import Iterator
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from apscheduler.triggers.base import BaseTrigger
from croniter import croniter

from policies.model import Policy

_EPOCH = datetime(1970, 1, 1)
# Local wall times map to instants in order, so candidates need start only this far before the
# floor: a wall time in a DST gap (at most an hour today) maps forward to the gap's end.
LOOKBACK = timedelta(hours=1)
_DAY = 86400


def to_instant(local: datetime, tz: ZoneInfo) -> datetime:
    """The instant of a naive local wall time: its first occurrence if ambiguous, the end of the
    gap if it does not exist."""
    aware = local.replace(tzinfo=tz, fold=0)
    if aware.astimezone(timezone.utc).astimezone(tz).replace(tzinfo=None) == local:
        return aware.astimezone(timezone.utc)
    return _gap_end(local, tz)


def _gap_end(local: datetime, tz: ZoneInfo) -> datetime:
    """The first instant after the DST gap that swallowed ``local``."""
    probe = local.replace(tzinfo=tz, fold=0).astimezone(timezone.utc) - timedelta(hours=3)
    for _ in range(6 * 60):
        probe += timedelta(minutes=1)
        wall = probe.astimezone(tz).replace(tzinfo=None)
        if wall > local:  # the clocks jumped over ``local`` within the last minute: find the second
            lo, hi = probe - timedelta(minutes=1), probe
            while (hi - lo) > timedelta(seconds=1):
                mid = lo + timedelta(seconds=(hi - lo).total_seconds() // 2)
                lo, hi = (mid, hi) if mid.astimezone(tz).utcoffset() == lo.astimezone(tz).utcoffset() else (lo, mid)
            return hi
    return local.replace(tzinfo=tz).astimezone(timezone.utc)


class PolicyTrigger(BaseTrigger):
    """Common ground of the two triggers: local candidates -> filtered -> instants, strictly later."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.tz = ZoneInfo(policy.timezone)
        self._last: tuple[datetime | None, datetime | None] = (None, None)

    def candidates(self, after_local: datetime) -> Iterator[datetime]:
        raise NotImplementedError

    def allowed(self, local: datetime) -> bool:
        p = self.policy
        if p.window:
            start, end = p.window
            t = local.time()
            inside = start <= t < end if start < end else (t >= start or t < end)
            if not inside:
                return False
        d = local.date()
        return not any(a <= d <= b for a, b in p.blackout)

    def _start(self, floor: datetime) -> datetime:
        """Where candidates start: the local time of ``floor``, or an hour earlier when the clocks
        changed within that hour (a wall time in the gap maps forward, past the floor)."""
        back = floor - LOOKBACK
        if back.astimezone(self.tz).utcoffset() != floor.astimezone(self.tz).utcoffset():
            return back.astimezone(self.tz).replace(tzinfo=None)
        return floor.astimezone(self.tz).replace(tzinfo=None)

    def get_next_fire_time(self, previous_fire_time: datetime | None, now: datetime) -> datetime | None:
        """The first fire time after ``previous_fire_time`` (or at or after ``now`` if none)."""
        if previous_fire_time is None:
            return self._next(now.astimezone(timezone.utc), strict=False)
        # APScheduler asks twice per fire with the same previous time (to find the due runs, then
        # to move the job on): the answer depends on that time alone, so the last one is kept
        asked, answer = self._last  # one attribute: a reader in another thread sees a matching pair
        if asked != previous_fire_time:
            answer = self._next(previous_fire_time.astimezone(timezone.utc), strict=True)
            self._last = (previous_fire_time, answer)
        return answer

    def _next(self, floor: datetime, strict: bool) -> datetime | None:
        for n, local in enumerate(self.candidates(self._start(floor))):
            if n > 200000:
                return None  # a window and blackouts that exclude every time (checked at validation too)
            if not self.allowed(local):
                continue
            instant = to_instant(local, self.tz)
            if instant > floor or (not strict and instant == floor):
                return instant.astimezone(self.tz)
        return None

    def fire_times(self, start: datetime, count: int) -> list[datetime]:
        """The next ``count`` fire times at or after ``start``: one pass over the candidates, the
        same rules as :meth:`get_next_fire_time` (what ``plan`` shows is what the scheduler does)."""
        floor = start.astimezone(timezone.utc)
        out: list[datetime] = []
        last = None
        for n, local in enumerate(self.candidates(self._start(floor))):
            if len(out) >= count or n > 200000 + count:
                break
            if not self.allowed(local):
                continue
            instant = to_instant(local, self.tz)
            if instant >= floor and (last is None or instant > last):
                out.append(instant.astimezone(self.tz))
                last = instant
        return out


class EveryTrigger(PolicyTrigger):
    """Every N seconds on the local wall clock, aligned to local midnight when N divides a day
    (15m fires at :00 :15 :30 :45), else to the local epoch; plus ``offset``."""

    def candidates(self, after_local: datetime) -> Iterator[datetime]:
        p = self.policy
        step = timedelta(seconds=p.every)
        if _DAY % p.every == 0:
            base = datetime.combine(after_local.date(), time()) + timedelta(seconds=p.offset % p.every)
        else:
            k = int(((after_local - _EPOCH).total_seconds() - p.offset) // p.every)
            base = _EPOCH + timedelta(seconds=k * p.every + p.offset)
        behind = (after_local - base).total_seconds()
        t = base + step * max(0, math.ceil(behind / p.every))  # straight to the first candidate
        while True:
            yield t
            t += step

    def __str__(self) -> str:
        return f"every {self.policy.every:g}s in {self.policy.timezone}"

    def __getstate__(self):  # pragma: no cover - jobs are rebuilt from the files, never pickled
        raise TypeError("policy triggers are not pickled: the policy files are the source of truth")


@functools.lru_cache(maxsize=4096)
def _expand(expr: str, hash_name: str) -> list:
    """croniter's expansion, shared by the policies whose expressions do not hash (no ``H``)."""
    return croniter.expand(expr, hash_id=hash_name.encode() or b"-")[0][:5]


class CronTrigger(PolicyTrigger):
    """croniter expands the expression (``H`` hashed on the policy name); walking the expanded
    fields day by day is much faster than asking croniter for each time, which ``plan`` over
    thousands of policies notices. Expressions with special days (``L``, ``#``) walk with croniter."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy)
        fields = _expand(policy.cron, policy.name if "h" in policy.cron.lower() else "")
        self.fields = None if any(v != "*" and not isinstance(v, int) for f in fields for v in f) else fields

    def candidates(self, after_local: datetime) -> Iterator[datetime]:
        if self.fields is None:
            it = croniter(self.policy.cron, after_local - timedelta(seconds=1), hash_id=self.policy.name.encode())
            while True:
                yield it.get_next(datetime)
        minutes, hours, doms, months, dows = self.fields
        hours = list(range(24)) if hours == ["*"] else sorted(hours)
        minutes = list(range(60)) if minutes == ["*"] else sorted(minutes)
        any_dom, any_dow = doms == ["*"], dows == ["*"]
        dows = {d % 7 for d in dows} if not any_dow else set()
        day = after_local.date()
        for _ in range(366 * 30):
            if months == ["*"] or day.month in months:
                dom_ok = any_dom or day.day in doms
                dow_ok = any_dow or (day.weekday() + 1) % 7 in dows
                if (dom_ok or dow_ok) if not (any_dom or any_dow) else (dom_ok and dow_ok):
                    for h in hours:
                        for m in minutes:
                            t = datetime(day.year, day.month, day.day, h, m)
                            if t >= after_local:
                                yield t
            day += timedelta(days=1)

    def __str__(self) -> str:
        return f"cron {self.policy.cron!r} in {self.policy.timezone}"


def trigger_for(policy: Policy) -> PolicyTrigger:
    return EveryTrigger(policy) if policy.every is not None else CronTrigger(policy)

"""Which points in time to keep: the rules of a policy's ``retain``, in UTC.

``last`` keeps the newest N; ``hourly``/``daily``/``weekly``/``monthly`` keep the newest point of
each of the N most recent UTC hours/days/ISO weeks/months that have one. The newest point is always
kept, and never fewer than ``min`` (the newest ones). Applying the rules to what they keep keeps it
all (idempotent), so running prune twice deletes nothing the second time.
"""

from collections.abc import Callable, Iterable
from datetime import datetime, timezone

from .model import Retain

_BUCKETS: dict[str, Callable[[datetime], tuple]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
}


def keep(points: Iterable[datetime], retain: Retain) -> set[datetime]:
    newest_first = sorted({p.astimezone(timezone.utc) for p in points}, reverse=True)
    if not newest_first:
        return set()
    kept = set(newest_first[: max(retain.last, 1)])
    for rule, bucket_of in _BUCKETS.items():
        wanted = getattr(retain, rule)
        seen: set[tuple] = set()
        for p in newest_first:
            if len(seen) >= wanted:
                break
            b = bucket_of(p)
            if b not in seen:
                seen.add(b)
                kept.add(p)
    for p in newest_first:
        if len(kept) >= retain.min:
            break
        kept.add(p)
    return kept


def to_delete(points: Iterable[datetime], retain: Retain) -> list[datetime]:
    points = list(points)
    kept = keep(points, retain)
    return sorted(p for p in points if p.astimezone(timezone.utc) not in kept)

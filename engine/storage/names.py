"""Names and times as the node stores them: the rules for volume, snapshot and point names, and
UTC timestamps (ISO 8601 in rows and replies, ISO basic to the millisecond in point names)."""

import re
from collections.abc import Callable
from datetime import datetime, timezone

from ..errors import InvalidInput

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
POINT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def point_stamp(t: datetime) -> str:
    """The default name of a point in time: its UTC time, ISO 8601 basic format, to the millisecond."""
    t = t.astimezone(timezone.utc)
    return t.strftime("%Y%m%dT%H%M%S") + f".{t.microsecond // 1000:03d}Z"


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(f"invalid {kind} name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit")
    return name


def check_label(kind: str, label: str | None, max_length: int = 128) -> None:
    """A point label or marker label (it becomes part of a point's name)."""
    if label is not None and not (isinstance(label, str) and POINT_RE.match(label) and len(label) <= max_length):
        raise InvalidInput(f"invalid {kind} label {label!r}: use 1-{max_length} letters, digits, '.', '_', ':', "
                           "'+' or '-'")

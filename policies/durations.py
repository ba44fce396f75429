"""Durations as operators write them: ``30s``, ``5m``, ``1h``, ``1d``, ``1h30m``, ``250ms``."""

import math
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


MAX_SECONDS = 100 * 365 * 86400  # a century: anything longer is a typo, and overflows datetimes


class DurationError(ValueError):
    def __init__(self, message: str, out_of_range: bool = False) -> None:
        super().__init__(message)
        self.out_of_range = out_of_range  # well formed but negative, infinite or too long


def parse_duration(text: str | int | float) -> float:
    """Seconds in ``text``; a bare number is seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _in_range(text, float(text))
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return _in_range(text, float(s))
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise DurationError(f"invalid duration {text!r}: write e.g. 30s, 5m, 1h, 1d or 1h30m")
    return _in_range(text, total)


def _in_range(text: object, seconds: float) -> float:
    if not math.isfinite(seconds) or seconds < 0:
        raise DurationError(f"invalid duration {text!r}: must be a finite number of seconds, not negative", True)
    if seconds > MAX_SECONDS:
        raise DurationError(f"invalid duration {text!r}: at most 100 years", True)
    return seconds


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds == 0:
        return "0s"
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out

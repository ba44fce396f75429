"""Sizes with binary units, as operators write them: ``64MiB``, ``1GiB``, ``4096``."""

import re

from ..errors import InvalidInput

DEFAULT_BLOCK_SIZE = 64 * 1024  # a volume's tracking and copy granularity unless told

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20,
          "G": 1 << 30, "GIB": 1 << 30, "T": 1 << 40, "TIB": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """Parse ``text`` into bytes. Decimal units (``MB``) are refused: they are a classic
    source of volumes 5 % smaller than intended."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _SIZE.match(str(text))
        if not m:
            raise InvalidInput(f"invalid size {text!r}: write a number with a binary unit, e.g. 64MiB or 1GiB")
        unit = m.group(2).upper()
        if unit not in _UNITS:
            raise InvalidInput(f"invalid size unit {m.group(2)!r} in {text!r}: use B, KiB, MiB, GiB or TiB")
        value = int(m.group(1)) * _UNITS[unit]
    if value <= 0:
        raise InvalidInput(f"invalid size {text!r}: must be greater than zero")
    return value


def format_size(n: int) -> str:
    """The largest binary unit that states ``n`` exactly (``1GiB``, ``1536KiB``)."""
    for unit, mult in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return f"{n}B"

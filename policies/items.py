"""Reading the items of a policy document once the schema has passed: resource entries, sizes,
windows, dates, and the lookups the checks of several kinds share."""

from datetime import date, time

from .loader import Document
from .model import Bundle, Resource

RESOURCE_KINDS = {"volumes": "volume", "snapshots": "snapshot", "snapshot_sets": "snapshot_set",
                  "aim_sets": "aim_set", "groups": "group"}
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KIB": 1 << 10, "M": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GIB": 1 << 30,
          "T": 1 << 40, "TIB": 1 << 40}


def feeding_aim_sets(bundle: Bundle, node: str, volumes: list[str]) -> list[Resource]:
    """The declared AIM sets that replicate into ``volumes`` of ``node`` (what a dr-test verifies)."""
    return [r for r in bundle.resources.values() if r.kind == "aim_set"
            and mapping(r.spec.get("to")).get("node") == node and mapping(r.spec.get("to")).get("volume") in volumes]


def resource_items(doc: Document):
    """(section, kind, index, item) of every declared resource that is a mapping."""
    resources = doc.data.get("resources")
    if not isinstance(resources, dict):
        return
    for section, kind in RESOURCE_KINDS.items():
        items = resources.get(section)
        for i, item in enumerate(items if isinstance(items, list) else []):
            if isinstance(item, dict):
                yield section, kind, i, item


def size_of(bundle: Bundle, r: Resource) -> int | None:
    """Bytes of a declared volume (the schema has checked the form; the node checks the rest)."""
    if r.kind == "snapshot":
        src = bundle.resource("volume", r.node, str(r.spec.get("source")))
        return size_of(bundle, src) if src else None
    text = str(r.spec.get("size", "")).strip().upper()
    digits = "".join(c for c in text if c.isdigit())
    unit = text[len(digits):].strip()
    return int(digits) * _UNITS[unit] if digits and unit in _UNITS else None


def size_text(bundle: Bundle, r: Resource) -> str:
    if r.kind == "snapshot":
        src = bundle.resource("volume", r.node, str(r.spec.get("source")))
        return str(src.spec.get("size")) if src else "?"
    return str(r.spec.get("size"))


def parse_window(text: object) -> tuple[time, time] | None:
    if not isinstance(text, str) or "-" not in text:
        return None
    try:
        a, b = (time.fromisoformat(t.strip()) for t in text.split("-", 1))
    except ValueError:
        return None
    return (a, b) if a != b else None


def dates(text: str) -> tuple[date, date] | None:
    try:
        if ".." in text:
            a, b = (date.fromisoformat(t) for t in text.split("..", 1))
        else:
            a = b = date.fromisoformat(text)
    except ValueError:
        return None
    return (a, b) if a <= b else None


def mapping(value: object) -> dict:
    """A mapping the schema may already have refused as something else: checked as empty."""
    return value if isinstance(value, dict) else {}


def sequence(value: object) -> list:
    return value if isinstance(value, list) else []

"""Checking the ``alerts`` section: receivers (a webhook or an e-mail address, each with its
secret files relative to the policy file) and routes of alert rules to them; and where an
``rpo_objective`` means something (the kinds that make recovery points)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .durations import DurationError, parse_duration
from .items import mapping, sequence
from .loader import Document
from .model import Receiver, Route

if TYPE_CHECKING:
    from .validate import _Semantics

SECRET_KEYS = ("token_file", "user_file", "password_file")
POINT_KINDS = ("source-snapshot", "auto-marker", "group")  # the kinds whose runs make recovery points


def check_alerts(s: _Semantics, doc: Document, build: bool) -> None:
    section = doc.data.get("alerts")
    if not isinstance(section, dict):
        return
    base = os.path.dirname(os.path.abspath(doc.file))
    for i, item in enumerate(sequence(section.get("receivers"))):
        item, p = mapping(item), ("alerts", "receivers", i)
        name = item.get("name")
        kind = next((k for k in ("webhook", "email") if k in item), None)
        if not isinstance(name, str) or kind is None:
            continue  # the schema says what is wrong
        if name in s.b.alerting.receivers:
            s.err(doc, p + ("name",), f"receiver {name!r} is declared twice (also at "
                                      f"{s.b.alerting.receivers[name].where})")
            continue
        spec = dict(mapping(item[kind]))
        for key in SECRET_KEYS:
            if isinstance(spec.get(key), str):
                spec[key] = os.path.join(base, spec[key])
        if kind == "email" and ("user_file" in spec) != ("password_file" in spec):
            s.err(doc, p + ("email",), "an e-mail receiver logs in with both `user_file` and `password_file`, "
                                       "or neither")  # still declared: its routes are not wrong too
        s.b.alerting.receivers[name] = Receiver(name, kind, spec, doc.lazy_where(p))
    for i, item in enumerate(sequence(section.get("routes"))):
        item, p = mapping(item), ("alerts", "routes", i)
        receiver = item.get("receiver")
        if not isinstance(receiver, str):
            continue
        if receiver not in s.b.alerting.receivers:
            s.err(doc, p + ("receiver",), f"unknown receiver {receiver!r}: declare it under `alerts.receivers`"
                  + (f" (declared: {', '.join(sorted(s.b.alerting.receivers))})" if s.b.alerting.receivers else ""))
            continue
        repeat = None
        if item.get("repeat") is not None:
            try:
                repeat = parse_duration(item["repeat"])
            except DurationError as e:
                if e.out_of_range:
                    s.err(doc, p + ("repeat",), str(e))
                continue
        if build:
            s.b.alerting.routes.append(Route(receiver, tuple(str(r) for r in sequence(item.get("on"))), repeat))


def check_objective(s: _Semantics, doc: Document, p: tuple, item: dict, kind: object) -> None:
    """An objective on a kind that makes no recovery points would never be met: said."""
    if "rpo_objective" in item and kind not in POINT_KINDS:
        s.err(doc, p + ("rpo_objective",), f"a {kind} policy makes no recovery points: `rpo_objective` is for "
                                           f"{', '.join(POINT_KINDS)} policies", key=True)

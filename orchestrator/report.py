"""``aimsnap report --html``: one self-contained page (inline SVG, no scripts, no network) with a
timeline of runs by policy and the RPO over time, for people who would rather look than read."""

import html
from datetime import datetime, timezone

from .charts import seconds_label, time_axis, value_axis
from .store import Store, parse_iso

COLORS = {"ok": "#2e7d32", "failed": "#c62828", "timeout": "#ef6c00", "skipped": "#9e9e9e", "missed": "#6a1b9a",
          "interrupted": "#795548", "running": "#1565c0"}


def _dr_tests(runs: list[dict]) -> str:
    """The DR tests: per dr-test run, the point it proved (or not), the check's exit, and why."""
    rows = [r for r in runs if r["kind"] == "dr-test" and r["status"] not in ("running", "skipped")][-50:]
    if not rows:
        return ""
    cells = []
    for r in reversed(rows):
        d = r["details"] or {}
        check = d.get("check") or {}
        verify = ", ".join(f"{a}: {v['mismatched_ranges']} differ" for a, v in (d.get("verify") or {}).items())
        cells.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            r["policy"], r["started_at"], r["status"], d.get("point") or "-", verify or "-",
            check.get("exit", "-"), r["error"] or "")) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("policy", "at", "result", "point tested", "verify", "check exit", "why"))
    return f"<h2>DR tests</h2><table><tr>{head}</tr>{''.join(cells)}</table>"


def _plans(events: list[dict]) -> str:
    """Recovery plans run (failover, failback, switchover): per member, the point, RPO and seconds."""
    rows = [e for e in events if e["kind"].startswith("plan-")][:50]
    if not rows:
        return ""
    cells = []
    for e in rows:
        d = e["details"] or {}
        for m in d.get("members", []):
            r = m.get("result") or {}
            cells.append("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                d.get("plan"), e["at"], d.get("verb"), m.get("aim_set") or m.get("member"), m["status"],
                r.get("point") or "-", r.get("rpo_seconds", "-"), m.get("seconds"), m.get("error") or "")) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("plan", "at", "verb", "member", "result", "point", "RPO s", "seconds",
                                             "why"))
    return f"<h2>Recovery plans</h2><table><tr>{head}</tr>{''.join(cells)}</table>"


def render(store: Store, now: datetime | None = None, limit: int = 20000) -> str:
    now = now or datetime.now(timezone.utc)
    runs = list(reversed(store.history(limit=limit)))
    markers = store.applied_markers()
    sched = {s["policy"]: s for s in store.schedule()}
    policies = sorted({r["policy"] for r in runs})
    if not runs:
        body = "<p>No runs recorded yet.</p>"
    else:
        t0 = parse_iso(runs[0]["started_at"])
        span = max((now - t0).total_seconds(), 1)

        def x(t: datetime) -> float:
            return LEFT + (t - t0).total_seconds() / span * (WIDTH - LEFT - RIGHT)
        series: dict[str, list[datetime]] = {}
        for m in markers:
            series.setdefault(m["policy"], []).append(parse_iso(m["issued_at"]))
        legend = " ".join(f'<span style="color:{c}">&#9632; {s}</span>' for s, c in COLORS.items())
        rpo = "".join(_rpo_chart(p, series[p], runs, (sched.get(p) or {}).get("rpo_objective"), t0, now, x)
                      for p in policies if p in series)
        body = (f"{_summary(policies, runs, series, sched, now)}"
                f"<h2>Runs by policy</h2><p>{legend}</p>{_timeline(policies, runs, t0, now, x)}"
                f"<h2>Recovery point age (RPO) over time</h2><p>Per policy: the age of its newest recovery point "
                f"(it drops to zero when a point lands); dashed red: the objective; red marks: failed runs.</p>"
                f"{f'<div class=charts>{rpo}</div>' if rpo else '<p>No recovery point yet.</p>'}<h2>Per policy</h2>{_table(policies, runs, series, sched, now)}"
                f"{_dr_tests(runs)}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>aimsnap report</title>"
            f"<style>{STYLE}</style></head><body><h1>aimsnap report</h1>"
            f"<p class='muted'>Generated {now.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC from "
            f"{html.escape(store.path)}</p>"
            f"{body}{_plans(store.events(limit=1000))}</body></html>")


WIDTH, LEFT, RIGHT, ROW = 1000, 190, 20, 22
FAILED = ("failed", "timeout")
# the charts scale with the window (a wall screen), their text with them
STYLE = ("body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;background:#fafafa}"
         "h1{margin:0}.muted{color:#6b6b6b}svg{display:block;margin-bottom:8px;width:100%;max-width:1800px;height:auto}"
         "table{border-collapse:collapse;background:#fff}td,th{padding:3px 12px;text-align:left;"
         "border-bottom:1px solid #ddd}th{background:#eaeaea}table.policies td,table.policies th{white-space:nowrap}"
         ".banner{display:inline-block;padding:.3em .9em;border-radius:.3em;color:#fff;font-weight:bold;"
         "font-size:1.2em;background:#1b5e20;margin:.6em 0}.banner.bad{background:#b71c1c}"
         ".tiles{display:flex;gap:.8em;flex-wrap:wrap}.tile{background:#fff;border:1px solid #ddd;"
         "border-radius:.3em;padding:.4em .9em;min-width:8em}.tile b{font-size:1.5em;display:block}"
         ".tile.bad{border-color:#b71c1c;color:#b71c1c}"
         ".charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(860px,1fr));gap:0 2em}")


def _worst_gap(points: list[datetime], now: datetime) -> float | None:
    """The longest time without a newer recovery point (the worst RPO), up to now."""
    return max(((b - a).total_seconds() for a, b in zip(points, points[1:] + [now])), default=None)


def _summary(policies: list[str], runs: list[dict], series: dict, sched: dict, now: datetime) -> str:
    """What a glance should get: did every policy keep its objective, how many runs failed."""
    broke = [p for p in policies if (o := (sched.get(p) or {}).get("rpo_objective"))
             and (w := _worst_gap(series.get(p, []), now)) is not None and w > o]
    failed = sum(r["status"] in FAILED for r in runs)
    tests = [r for r in runs if r["kind"] == "dr-test" and r["status"] not in ("running", "skipped")]
    bad_tests = sum(r["status"] != "ok" for r in tests)
    problems = len(broke) + failed + bad_tests
    text = ("every policy kept its objective, no run failed" if not problems else
            "; ".join(t for t in (broke and f"objective broken: {', '.join(broke[:5])}"
                                  + (f" and {len(broke) - 5} more" if len(broke) > 5 else ""),
                                  failed and f"{failed} failed run(s)", bad_tests and f"{bad_tests} DR test(s) failed")
                      if t))
    tiles = [("policies", len(policies), False), ("runs", len(runs), False), ("failed runs", failed, failed),
             ("recovery points", sum(len(v) for v in series.values()), False),
             ("objective broken", len(broke), broke), ("DR tests passed", len(tests) - bad_tests, False),
             ("DR tests failed", bad_tests, bad_tests)]
    return (f"<div class='banner{' bad' if problems else ''}'>{html.escape(text)}</div><div class='tiles'>"
            + "".join(f"<div class='tile{' bad' if bad else ''}'><b>{n}</b>{label}</div>" for label, n, bad in tiles)
            + "</div>")


def _timeline(policies: list[str], runs: list[dict], t0: datetime, now: datetime, x) -> str:
    bottom = 10 + ROW * len(policies)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {bottom + 34}">',
             time_axis(t0, now, x, 5, bottom, LEFT, WIDTH - RIGHT)]
    for i, p in enumerate(policies):
        parts.append(f'<text x="4" y="{10 + i * ROW + 14}" font-size="12">{html.escape(p)}</text>')
    for r in runs:
        y = 10 + policies.index(r["policy"]) * ROW
        title = html.escape(f"{r['policy']} {r['status']} {r['started_at']} {r['error'] or ''}")
        parts.append(f'<rect x="{x(parse_iso(r["started_at"])):.1f}" y="{y + 3}" width="3" height="14" '
                     f'fill="{COLORS.get(r["status"], "#000")}"><title>{title}</title></rect>')
    return "".join(parts) + "</svg>"


def _rpo_chart(policy: str, points: list[datetime], runs: list[dict], objective: float | None, t0: datetime,
               now: datetime, x) -> str:
    """The sawtooth of one policy's RPO: after each point lands the age restarts from zero."""
    pts, worst = [], 1.0
    for a, b in zip(points, points[1:] + [now]):
        pts += [(a, 0.0), (b, (b - a).total_seconds())]
        worst = max(worst, (b - a).total_seconds())
    top_value = max(worst, objective or 0) * 1.15
    top, height = 8, 110

    def y(v: float) -> float:
        return top + height - v / top_value * height
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {top + height + 34}">',
             f'<text x="4" y="{top + 14}" font-size="12" fill="#1565c0">{html.escape(policy)}</text>',
             f'<text x="4" y="{top + 30}" font-size="11" fill="#555">worst {seconds_label(round(worst))}</text>',
             value_axis(top_value, y, LEFT, WIDTH - RIGHT), time_axis(t0, now, x, top, top + height, LEFT, WIDTH - RIGHT)]
    if objective:
        parts.append(f'<line x1="{LEFT}" y1="{y(objective):.1f}" x2="{WIDTH - RIGHT}" y2="{y(objective):.1f}" '
                     f'stroke="#c62828" stroke-dasharray="6,4"><title>objective {objective:g} s</title></line>')
    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in pts if t >= t0)
    parts.append(f'<polyline fill="none" stroke="#1565c0" stroke-width="1.5" points="{line}"/>')
    for r in runs:
        if r["policy"] == policy and r["status"] in FAILED:
            px = x(parse_iso(r["started_at"]))
            parts.append(f'<rect x="{px - 1:.1f}" y="{top + height - 8}" width="3" height="8" fill="#c62828">'
                         f'<title>{html.escape(r["status"] + ": " + (r["error"] or ""))}</title></rect>')
    return "".join(parts) + "</svg>"


def _table(policies: list[str], runs: list[dict], series: dict, sched: dict, now: datetime) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("policy", "kind", "runs", "ok", "failed", "other", "points",
                                             "worst RPO", "objective", "newest point"))
    rows = []
    for p in policies:
        mine = [r for r in runs if r["policy"] == p]
        points = series.get(p, [])
        objective = (sched.get(p) or {}).get("rpo_objective")
        worst = _worst_gap(points, now)
        late = worst is not None and objective and worst > objective
        cells = (p, (sched.get(p) or {}).get("kind") or (mine[-1]["kind"] if mine else ""), len(mine),
                 sum(r["status"] == "ok" for r in mine), sum(r["status"] in FAILED for r in mine),
                 sum(r["status"] not in ("ok", *FAILED) for r in mine), len(points),
                 seconds_label(round(worst)) if worst is not None else "-",
                 seconds_label(objective) if objective else "-",
                 points[-1].strftime("%Y-%m-%d %H:%M:%S") if points else "-")
        style = ' style="color:#c62828"' if late else ""
        rows.append("<tr>" + "".join(f"<td{style if i == 7 else ''}>{html.escape(str(v))}</td>"
                                     for i, v in enumerate(cells)) + "</tr>")
    return f"<table class='policies'><tr>{head}</tr>{''.join(rows)}</table>"

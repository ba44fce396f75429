"""``aimsnap report --html``: one self-contained page (inline SVG, no scripts, no network) with a
timeline of runs by policy and the RPO over time, for people who would rather look than read."""

import html
from datetime import datetime, timezone

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
    policies = sorted({r["policy"] for r in runs})
    if not runs:
        body = "<p>No runs recorded yet.</p>"
    else:
        t0, t1 = parse_iso(runs[0]["started_at"]), now
        span = max((t1 - t0).total_seconds(), 1)
        width, row_h, left = 1000, 22, 180

        def x(t: datetime) -> float:
            return left + (t - t0).total_seconds() / span * (width - left - 10)

        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{row_h * len(policies) + 40}">']
        for i, p in enumerate(policies):
            y = 20 + i * row_h
            parts.append(f'<text x="4" y="{y + 14}" font-size="12">{html.escape(p)}</text>')
        for r in runs:
            y = 20 + policies.index(r["policy"]) * row_h
            title = html.escape(f"{r['policy']} {r['status']} {r['started_at']} {r['error'] or ''}")
            parts.append(f'<rect x="{x(parse_iso(r["started_at"])):.1f}" y="{y + 3}" width="3" height="14" '
                         f'fill="{COLORS.get(r["status"], "#000")}"><title>{title}</title></rect>')
        parts.append(f'<text x="{left}" y="{row_h * len(policies) + 35}" font-size="11">{html.escape(str(t0))}</text>')
        parts.append(f'<text x="{width - 200}" y="{row_h * len(policies) + 35}" font-size="11">'
                     f'{html.escape(str(t1))}</text></svg>')
        timeline = "".join(parts)
        # RPO over time: after each applied marker the age restarts from zero; sample the sawtooth
        rpo_parts, height = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="220">'], 180
        series = {}
        for m in markers:
            series.setdefault(m["policy"], []).append(parse_iso(m["issued_at"]))
        worst = 1.0
        lines = {}
        for p, points in series.items():
            pts = []
            for a, b in zip(points, points[1:] + [now]):
                pts += [(a, 0.0), (b, (b - a).total_seconds())]
                worst = max(worst, (b - a).total_seconds())
            lines[p] = pts
        palette = ["#1565c0", "#2e7d32", "#c62828", "#6a1b9a", "#ef6c00", "#00838f"]
        for i, (p, pts) in enumerate(sorted(lines.items())):
            path = " ".join(f"{x(t):.1f},{20 + height - v / worst * height:.1f}" for t, v in pts if t >= t0)
            rpo_parts.append(f'<polyline fill="none" stroke="{palette[i % len(palette)]}" points="{path}">'
                             f'<title>{html.escape(p)}</title></polyline>')
            rpo_parts.append(f'<text x="4" y="{20 + 14 * i}" font-size="12" fill="{palette[i % len(palette)]}">'
                             f'{html.escape(p)}</text>')
        rpo_parts.append(f'<text x="{left}" y="14" font-size="11">worst RPO {worst:.0f} s</text></svg>')
        counts = {}
        for r in runs:
            counts.setdefault(r["policy"], {}).setdefault(r["status"], 0)
            counts[r["policy"]][r["status"]] += 1
        table = "".join(f"<tr><td>{html.escape(p)}</td><td>{html.escape(', '.join(f'{k}: {v}' for k, v in sorted(c.items())))}"
                        f"</td></tr>" for p, c in sorted(counts.items()))
        legend = " ".join(f'<span style="color:{c}">&#9632; {s}</span>' for s, c in COLORS.items())
        body = (f"<h2>Runs by policy</h2><p>{legend}</p>{timeline}<h2>Recovery point age (RPO) over time</h2>"
                f"{''.join(rpo_parts)}<h2>Totals</h2><table>{table}</table>{_dr_tests(runs)}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>aimsnap report</title>"
            f"<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 12px;text-align:left}}</style></head><body>"
            f"<h1>aimsnap report</h1><p>Generated {html.escape(str(now))} from {html.escape(store.path)}</p>"
            f"{body}{_plans(store.events(limit=1000))}</body></html>")

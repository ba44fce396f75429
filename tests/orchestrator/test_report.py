"""The HTML report's pictures: a time axis with readable ticks kept inside the chart, the RPO in
seconds on its own axis, the objective as a dashed line, failed runs marked, and a per-policy
table of runs, failures and points."""

import re
from datetime import datetime, timedelta, timezone

from orchestrator.charts import seconds_label, time_ticks, value_ticks
from orchestrator.report import WIDTH, render
from orchestrator.store import Store, iso

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)


def test_ticks_are_round_and_few():
    ticks = time_ticks(T0 + timedelta(seconds=7), T0 + timedelta(minutes=47))
    assert 3 <= len(ticks) <= 8 and all(t.second == 0 and t.minute % 5 == 0 for t in ticks)
    assert len(time_ticks(T0, T0 + timedelta(days=3))) <= 8
    assert value_ticks(380) == [0, 120, 240, 360] and seconds_label(120) == "2 min" and seconds_label(7) == "7 s"


def test_the_report_has_axes_an_objective_line_failures_and_a_table(tmp_path):
    store = Store(str(tmp_path / "o.db"))
    store.set_schedule([{"policy": "db", "kind": "source-snapshot", "trigger": "every 15m", "next_fire": None,
                         "rpo_objective": 1800.0}], T0)
    for i in range(8):
        at = T0 + timedelta(minutes=15 * i)
        status = "failed" if i in (3, 4) else "ok"
        store.record_run("db", "source-snapshot", "schedule", status, at, error="marker timed out" if status != "ok"
                         else None)
        if status == "ok":
            store.record_marker(None, "db", "prod", {"aim_set": "a", "id": i, "state": "applied", "point": f"db.{i}",
                                                     "issued_at": iso(at), "applied_at": iso(at)})
    page = render(store, now=T0 + timedelta(hours=2))
    assert "<div class='banner bad'>objective broken: db; 2 failed run(s)</div>" in page
    assert "<div class='tile bad'><b>2</b>failed runs</div>" in page
    svgs = re.findall(r"<svg.*?</svg>", page, re.S)
    assert len(svgs) == 2  # the timeline and one RPO chart
    labels = re.findall(r'<text x="([\d.]+)"[^>]*text-anchor="(\w+)"[^>]*>(\d\d:\d\d)</text>', svgs[1])
    assert len(labels) >= 3 and all(0 <= float(x) <= WIDTH for x, _a, _t in labels)
    assert any(t == "03:30" for _x, _a, t in labels)
    assert re.search(r'>45 min</text>', svgs[1]) and 'stroke-dasharray' in svgs[1]  # the 45-min gap, the objective
    assert svgs[1].count('fill="#c62828"') == 2  # the two failed runs
    table = page[page.index("<h2>Per policy</h2>"):]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table)[:10]
    assert cells[:7] == ["db", "source-snapshot", "8", "6", "2", "0", "6"] and cells[7] == "45 min"
    assert cells[8] == "30 min"  # the objective, which the worst gap broke (shown red)
    assert 'style="color:#c62828">45 min' in table

"""Recovery plans on real nodes, through the CLI as an operator runs them: a plan with a group of
two volumes and a single AIM set fails over (the group's members at one group point, the single
set at its newest point), its `after` command runs, the outcome is in `history --events`; then
failback and switchover of the plan bring the original direction back."""

import json

from ..aimpair import read_all, read_point
from ..cli import aimsnap
from .test_apply import nodes_yaml

SIZE = 4 << 20


def site(pair, tmp_path, after: str) -> str:
    text = nodes_yaml(pair) + f"""\
resources:
  volumes:
    - {{node: prod, name: db, size: 4MiB}}
    - {{node: prod, name: logs, size: 4MiB}}
    - {{node: prod, name: erp, size: 4MiB}}
    - {{node: dr, name: db-dr, size: 4MiB}}
    - {{node: dr, name: logs-dr, size: 4MiB}}
    - {{node: dr, name: erp-dr, size: 4MiB}}
  snapshots:
    - {{node: dr, name: db-dr-pit, source: db-dr, type: differential}}
    - {{node: dr, name: logs-dr-pit, source: logs-dr, type: differential}}
    - {{node: dr, name: erp-dr-pit, source: erp-dr, type: differential}}
  snapshot_sets:
    - {{node: dr, name: app-set, members: [db-dr-pit, logs-dr-pit]}}
  aim_sets:
    - {{node: prod, name: db-to-dr, source: db, to: {{node: dr, volume: db-dr}}}}
    - {{node: prod, name: logs-to-dr, source: logs, to: {{node: dr, volume: logs-dr}}}}
    - {{node: prod, name: erp-to-dr, source: erp, to: {{node: dr, volume: erp-dr}}}}
  groups:
    - {{node: prod, name: app, members: [db-to-dr, logs-to-dr]}}
recovery_plans:
  - name: site
    node: dr
    members: [{{group: app}}, {{aim_set: erp-to-dr}}]
    point: latest-group-point
    after: [{after}]
    timeout: 30s
"""
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return str(path)


def test_a_plan_with_a_group_fails_over_to_one_group_point_and_back(pair, tmp_path):
    hook = tmp_path / "started"
    path = site(pair, tmp_path, f'["sh", "-c", "echo started > {hook}"]')
    db = str(tmp_path / "o.db")
    assert aimsnap("apply", path).code == 0
    src, dst = pair.src.api, pair.dst.api
    for s in ("db-to-dr", "logs-to-dr", "erp-to-dr"):
        pair.wait_state(s, "replicating")
    for vol in ("db", "logs", "erp"):
        src.write(vol, 0, f"{vol} one".encode())
    g = src.replication.issue_group_marker("app", "app-set", "g1")
    assert src.replication.wait(g["members"][0]["id"], 60)["state"] == "applied"
    at_g1 = {v: read_all(src, v, SIZE) for v in ("db", "logs")}
    m = pair.marker("erp-to-dr", "erp-dr-pit", "e1")
    at_e1 = read_all(src, "erp", SIZE)
    for vol in ("db", "logs", "erp"):  # after the points: a failover to them takes these back
        src.write(vol, 8192, f"{vol} two".encode())
    for s in ("db-to-dr", "logs-to-dr", "erp-to-dr"):
        pair.wait_caught_up(s)

    dry = aimsnap("failover", "--plan", "site", "--dry-run", "--json", path, "--db", db)
    assert dry.code == 0, dry.err
    points = {r["aim_set"]: r["point"] for r in dry.json()["members"]}
    group_point = points["db-to-dr"].split("@")[1]
    assert points["logs-to-dr"] == f"logs-dr-pit@{group_point}" and group_point.startswith("g1.")
    assert points["erp-to-dr"] == f"erp-dr-pit@{m['point']}"
    assert not hook.exists() and dst.replication.info("erp-to-dr")["state"] == "receiving"  # nothing changed

    out = aimsnap("failover", "--plan", "site", "--json", path, "--db", db, timeout=120)
    assert out.code == 0, out.err + out.text
    r = out.json()
    assert r["status"] == "ok" and all(m["status"] == "ok" for m in r["members"])
    assert hook.read_text().strip() == "started"
    for v in ("db", "logs"):
        assert read_all(dst, f"{v}-dr", SIZE) == at_g1[v], f"{v} is not at the group point"
    assert read_all(dst, "erp-dr", SIZE) == at_e1
    events = aimsnap("history", "--events", "--json", "--db", db).json()
    ev = next(e for e in events if e["kind"] == "plan-failover")
    assert ev["details"]["status"] == "ok" and len(ev["details"]["members"]) == 3
    assert all(m["result"]["rpo_seconds"] is not None for m in ev["details"]["members"])

    # the old source is back, fenced; the plan fails back, then switches over to make prod primary
    for s in ("db-to-dr", "logs-to-dr", "erp-to-dr"):
        pair.wait_state(s, "fenced")
    dst.write("erp-dr", 4096, b"written at dr")
    back = aimsnap("failback", "--plan", "site", "--json", path, "--db", db, timeout=120)
    assert back.code == 0, back.err + back.text
    for s in ("db-to-dr", "logs-to-dr", "erp-to-dr"):
        _caught_up(dst, s)
    assert read_all(src, "erp", SIZE) == read_all(dst, "erp-dr", SIZE)
    kept = json.loads(back.text)["members"][2]["result"]["divergent_point"]
    snap, point = kept.split("@")
    assert read_point(src, snap, point, SIZE)[8192:8200] == b"erp two\0"  # prod's own write, kept
    so = aimsnap("switchover", "--plan", "site", "--json", path, "--db", db, timeout=180)
    assert so.code == 0, so.err + so.text
    for s in ("db-to-dr", "logs-to-dr", "erp-to-dr"):
        assert src.replication.info(s)["role"] == "source"
    assert src.replication.group_info("app")["members"] == ["db-to-dr", "logs-to-dr"]  # the group is back
    src.write("db", 0, b"prod again")
    pair.wait_caught_up("db-to-dr")
    assert read_all(dst, "db-dr", SIZE)[:10] == b"prod again"
    kinds = [e["kind"] for e in aimsnap("history", "--events", "--json", "--db", db).json()]
    assert {"plan-failover", "plan-failback", "plan-switchover"} <= set(kinds)
    page = tmp_path / "report.html"
    assert aimsnap("report", "--db", db, "--html", str(page)).code == 0
    html = page.read_text()
    assert "<h2>Recovery plans</h2>" in html and f"db-dr-pit@{group_point}" in html


def _caught_up(node, aim: str) -> None:
    import time
    deadline = time.monotonic() + 60
    while True:
        i = node.replication.info(aim)
        if i["state"] == "replicating" and i["acked_seq"] == i["last_seq"] and not i["queued_entries"]:
            return
        assert time.monotonic() < deadline, i
        time.sleep(0.05)

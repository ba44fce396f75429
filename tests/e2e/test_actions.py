"""The run actions against two real nodes, called directly (the scheduler comes next)."""

import os
import time
from datetime import datetime, timezone

import pytest

from orchestrator.actions import ActionContext, ActionFailed, ActionTimeout, run_action
from orchestrator.apply import reconcile
from orchestrator.nodes import Nodes
from orchestrator.store import Store
from policies.validate import load_policies

from .test_apply import policy_file


def context(bundle, name, store, nodes):
    policy = next(p for p in bundle.policies if p.name == name)
    run_id = store.start_run(policy.name, policy.kind, "manual", datetime.now(timezone.utc))
    return ActionContext(policy, bundle, nodes, store, run_id, lambda: datetime.now(timezone.utc))


def wait_replicating(pair, names):
    for n in names:
        pair.wait_state(n, "replicating")


@pytest.fixture
def site(pair, tmp_path):
    bundle = load_policies([policy_file(pair, tmp_path)])
    assert all(a.action == "created" for a in reconcile(bundle, dry_run=False))
    wait_replicating(pair, ["db01-ci-to-dr", "erp-to-dr"])
    nodes = Nodes(bundle)
    yield bundle, Store(str(tmp_path / "outcomes.db")), nodes
    nodes.close()


def test_source_snapshot_action_ships_the_increment_and_records_it(pair, site):
    bundle, store, nodes = site
    pair.src.api.write("db01", 4096, b"first interval")
    ctx = context(bundle, "db01-15m", store, nodes)
    details = run_action(ctx)
    assert details["increment"]["blocks"] == 1 and details["marker"]["state"] == "applied"
    point = details["marker"]["point"]
    assert pair.dst.api.read_snapshot("db01-dr-pit", point, 4096, 14) == b"first interval"
    rows = store.db.execute("SELECT policy, status, point FROM markers").fetchall()
    assert rows == [("db01-15m", "applied", point)]


def test_group_action_enables_the_snapshot_set(pair, site):
    bundle, store, nodes = site
    pair.src.api.write("erp", 0, b"erp data")
    pair.src.api.write("db01", 0, b"db data")
    pair.src.api.enable_snapshot("db01-ci")
    ctx = context(bundle, "app", store, nodes)
    details = run_action(ctx)
    assert details["marker"]["state"] == "applied"
    point = details["marker"]["point"]
    assert pair.dst.api.read_snapshot("erp-dr-pit", point, 0, 8) == b"erp data"
    assert pair.dst.api.read_snapshot("db01-dr-pit", point, 0, 7) == b"db data"
    assert store.db.execute("SELECT COUNT(*) FROM markers WHERE status='applied'").fetchone()[0] == 2


def test_auto_marker_runs_post_even_when_pre_hangs(pair, site, tmp_path):
    from dataclasses import replace
    bundle, store, nodes = site
    thawed = tmp_path / "thawed"
    base = replace(next(p for p in bundle.policies if p.name == "db01-15m"), name="erp-q", kind="auto-marker",
                   aim_set="erp-to-dr", destination_snapshot="erp-dr-pit", snapshot=None, quiesce_timeout=1.0,
                   quiesce_post=("/bin/sh", "-c", f"echo thawed > {thawed}"))
    hang = replace(base, quiesce_pre=("/bin/sleep", "30"))
    ctx = ActionContext(hang, bundle, nodes, store, store.start_run("erp-q", "auto-marker", "manual",
                        datetime.now(timezone.utc)), lambda: datetime.now(timezone.utc))
    t0 = time.monotonic()
    with pytest.raises(ActionTimeout, match="did not finish within 1s"):
        run_action(ctx)
    assert time.monotonic() - t0 < 10 and thawed.read_text().strip() == "thawed"
    os.unlink(thawed)
    ok = replace(base, quiesce_pre=("/bin/echo", "frozen"))
    ctx = ActionContext(ok, bundle, nodes, store, store.start_run("erp-q", "auto-marker", "manual",
                        datetime.now(timezone.utc)), lambda: datetime.now(timezone.utc))
    details = run_action(ctx)
    assert details["pre"]["stdout"].strip() == "frozen" and details["marker"]["state"] == "applied"
    assert thawed.exists()
    bad = replace(base, destination_snapshot="no-such-pit", quiesce_pre=())
    ctx = ActionContext(bad, bundle, nodes, store, 0, lambda: datetime.now(timezone.utc))
    with pytest.raises(ActionFailed, match="not pre-configured"):
        run_action(ctx)


def test_retention_prunes_destination_points_but_never_the_newest(pair, site):
    from dataclasses import replace

    from orchestrator.actions.retention import prune_destination
    from policies.model import Retain
    bundle, store, nodes = site
    policy = replace(next(p for p in bundle.policies if p.name == "db01-15m"), retain=Retain(last=2, min=2))
    for i in range(5):
        pair.src.api.write("db01", 0, bytes([i + 1]) * 10)
        run_action(ActionContext(policy, bundle, nodes, store, 0, lambda: datetime.now(timezone.utc)))
    points = [p["name"] for p in pair.dst.api.snapshot_info("db01-dr-pit")["points"]]
    assert len(points) == 2
    assert pair.dst.api.read_snapshot("db01-dr-pit", points[-1], 0, 10) == bytes([5]) * 10
    ctx = ActionContext(policy, bundle, nodes, store, 0, lambda: datetime.now(timezone.utc))
    assert prune_destination(ctx, dry_run=True) == []  # idempotent


def test_retention_touches_only_the_policys_own_points_and_prunes_a_set_as_one(pair, site):
    """A group policy's retention deletes its old points from every member of the snapshot set; a
    point made by hand, or by another policy on the same destination snapshot, is never touched."""
    from dataclasses import replace

    from orchestrator.actions.retention import prune_destination
    from policies.model import Retain
    bundle, store, nodes = site
    pair.src.api.enable_snapshot("db01-ci")
    group = replace(next(p for p in bundle.policies if p.name == "app"), retain=Retain(last=2, min=1))
    single = replace(next(p for p in bundle.policies if p.name == "db01-15m"), retain=Retain(last=1, min=1))
    by_hand = pair.src.api.replication.wait(
        pair.src.api.replication.issue_marker("erp-to-dr", "erp-dr-pit", "before-upgrade")["id"], 60)
    singles = [run_action(ActionContext(single, bundle, nodes, store, 0, lambda: datetime.now(timezone.utc)))
               for _ in range(2)]
    made = []
    for i in range(4):
        pair.src.api.write("erp", 0, bytes([i + 1]) * 4)
        made.append(run_action(context(bundle, "app", store, nodes) if i == 0 else
                               ActionContext(group, bundle, nodes, store, 0, lambda: datetime.now(timezone.utc))))
    points = {s: {pt["name"] for pt in pair.dst.api.snapshot_info(s)["points"]} for s in ("erp-dr-pit", "db01-dr-pit")}
    kept = {d["marker"]["point"] for d in made[-2:]}
    assert all(p.startswith("app.") for p in kept)
    assert points["erp-dr-pit"] == kept | {by_hand["point"]}  # the hand-made point stays
    # db01-dr-pit holds the set's points and the single policy's newest (its older one was pruned by it)
    assert points["db01-dr-pit"] == kept | {singles[-1]["marker"]["point"]}
    assert pair.dst.api.read_snapshot("erp-dr-pit", made[-1]["marker"]["point"], 0, 4) == bytes([4]) * 4
    assert prune_destination(ActionContext(group, bundle, nodes, store, 0, lambda: datetime.now(timezone.utc))) == []


def test_retention_keeps_a_point_with_clones_and_says_why(pair, site):
    """A DR test's clone holds its point: retention keeps it (the run's details say why) and prunes
    it at the first run after the clone is gone."""
    from dataclasses import replace

    from policies.model import Retain
    bundle, store, nodes = site
    policy = replace(next(p for p in bundle.policies if p.name == "db01-15m"), retain=Retain(last=1, min=1))

    def run() -> dict:
        return run_action(ActionContext(policy, bundle, nodes, store, 0, lambda: datetime.now(timezone.utc)))
    first = run()["marker"]["point"]
    pair.dst.api.create_clone("dr-test", f"db01-dr-pit@{first}")
    details = run()
    assert details["pruned"] == [] and details["kept"][0]["point"] == first
    assert "dr-test" in details["kept"][0]["reason"]
    assert first in [p["name"] for p in pair.dst.api.snapshot_info("db01-dr-pit")["points"]]
    pair.dst.api.delete_clone("dr-test")
    details = run()
    assert first in details["pruned"] and "kept" not in details

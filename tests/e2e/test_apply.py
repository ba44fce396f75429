"""`aimsnap apply` and `policy validate --check-nodes` against two real nodes."""

from ..cli import aimsnap


def nodes_yaml(pair) -> str:
    """The head of a policy file naming the pair's two nodes as prod and dr."""
    return f"""\
version: 1
nodes:
  prod: {{api: "{pair.src.proc.api}", token_file: {pair.src.proc.token_file}, aim: "{pair.src.proc.aim}"}}
  dr: {{api: "{pair.dst.proc.api}", token_file: {pair.dst.proc.token_file}, aim: "{pair.dst.proc.aim}"}}
"""


def points_site(pair, objective: float) -> str:
    """The pair's nodes, one AIM set v -> v-dr with its pit, and a policy `points` making a point
    every 2 s under an ``objective`` (seconds): what the alert and status-page tests start from."""
    return nodes_yaml(pair) + f"""\
resources:
  volumes: [{{node: prod, name: v, size: 4MiB}}, {{node: dr, name: v-dr, size: 4MiB}}]
  snapshots: [{{node: dr, name: v-dr-pit, source: v-dr, type: differential}}]
  aim_sets: [{{node: prod, name: v-aim, source: v, to: {{node: dr, volume: v-dr}}}}]
policies:
  - {{name: points, kind: auto-marker, node: prod, aim_set: v-aim, every: 2s, rpo_objective: {objective:g}s,
      retries: {{count: 0}}, marker: {{destination_snapshot: v-dr-pit, wait: 3s}}}}
"""


def policy_file(pair, tmp_path, spare="") -> str:
    text = nodes_yaml(pair) + f"""\
resources:
  volumes:
    - {{node: prod, name: db01, size: 64MiB}}{spare}
    - {{node: prod, name: erp, size: 32MiB}}
    - {{node: dr, name: db01-dr, size: 64MiB}}
    - {{node: dr, name: erp-dr, size: 32MiB}}
  snapshots:
    - {{node: prod, name: db01-ci, source: db01, type: complete-image}}
    - {{node: dr, name: db01-dr-pit, source: db01-dr, type: differential}}
    - {{node: dr, name: erp-dr-pit, source: erp-dr, type: differential}}
  snapshot_sets:
    - {{node: dr, name: app-dr-set, members: [db01-dr-pit, erp-dr-pit]}}
  aim_sets:
    - {{node: prod, name: db01-ci-to-dr, source: db01-ci, to: {{node: dr, volume: db01-dr}}}}
    - {{node: prod, name: erp-to-dr, source: erp, to: {{node: dr, volume: erp-dr}}}}
  groups:
    - {{node: prod, name: app, members: [erp-to-dr, db01-ci-to-dr]}}
policies:
  - name: db01-15m
    kind: source-snapshot
    node: prod
    snapshot: db01-ci
    aim_set: db01-ci-to-dr
    every: 15m
    marker: {{destination_snapshot: db01-dr-pit}}
  - name: app
    kind: group
    node: prod
    group: app
    every: 1h
    marker: {{destination_snapshot_set: app-dr-set}}
"""
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return str(path)


def test_apply_creates_what_is_missing_and_reports_drift(pair, tmp_path):
    path = policy_file(pair, tmp_path)
    dry = aimsnap("apply", "--dry-run", "--json", path)
    assert dry.code == 0 and {a["action"] for a in dry.json()} == {"create"} and len(dry.json()) == 11
    assert pair.src.api.list_volumes() == []  # a dry run changes nothing
    res = aimsnap("apply", "--json", path)
    assert res.code == 0, res.err
    assert {a["action"] for a in res.json()} == {"created"}
    again = aimsnap("apply", "--json", path)
    assert {a["action"] for a in again.json()} == {"ok"}
    assert {a["name"] for a in pair.src.api.replication.list()} == {"db01-ci-to-dr", "erp-to-dr"}
    check = aimsnap("policy", "validate", "--check-nodes", path)
    assert check.code == 0 and "ok" in check.text
    pair.dst.api.create_volume("spare", "16MiB")
    drifted = policy_file(pair, tmp_path, spare="\n    - {node: dr, name: spare, size: 8MiB}")
    res = aimsnap("apply", drifted)
    assert res.code == 1 and "size is 16777216 bytes, the policy says 8MiB" in res.err
    assert pair.dst.api.volume_info("spare")["size"] == 16 << 20  # never changed, never deleted
    assert aimsnap("policy", "validate", "--check-nodes", drifted).code == 1

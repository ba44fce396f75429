"""Bad policy files: each gets its exact FILE:LINE:COL and a message that says what to fix, with
exit code 2 and never a traceback."""

import pytest

from policies.errors import PolicyError
from policies.validate import check, load_policies

from ..cli import aimsnap

BASE = """\
version: 1
nodes:
  prod: {api: "http://127.0.0.1:7410", token_file: prod.token, aim: "127.0.0.1:7411"}
  dr: {api: "http://127.0.0.1:7420", token_file: dr.token, aim: "127.0.0.1:7421"}
resources:
  volumes:
    - {node: prod, name: db01, size: 1GiB}
    - {node: dr, name: db01-dr, size: 1GiB}
  snapshots:
    - {node: prod, name: db01-ci, source: db01, type: complete-image}
    - {node: dr, name: db01-dr-pit, source: db01-dr, type: differential}
  aim_sets:
    - {node: prod, name: db01-aim, source: db01-ci, to: {node: dr, volume: db01-dr}}
policies:
  - name: p1
    kind: source-snapshot
    node: prod
    snapshot: db01-ci
    aim_set: db01-aim
    every: 15m
    marker: {destination_snapshot: db01-dr-pit}
"""


DR_TEST = "  - name: t1\n    kind: dr-test\n    node: dr\n    snapshot: db01-dr-pit\n    every: 1h\n"  # lines 22-26
ALERTS = ('alerts:\n  receivers:\n    - {name: hook, webhook: {url: "http://h.example/x"}}\n  routes:\n'
          '    - {receiver: hook, on: [run_failed]}\n')  # lines 22-26
PLAN = "recovery_plans:\n  - name: site\n    node: dr\n    members: [{aim_set: db01-aim}]\n"  # lines 22-25


def variant(old: str, new: str) -> str:
    assert old in BASE, old
    return BASE.replace(old, new, 1)


def extra_policy(body: str) -> str:
    return BASE + body


CASES = [
    # (yaml, line, col, fragment)
    ("version: 1\n  bad: [\n", 2, 6, "YAML syntax error"),
    ("", 1, 1, "the file is empty"),
    ("- just\n- a list\n", 1, 1, "a policy file is a mapping"),
    ("version: 1\n---\nversion: 1\n", 1, 1, "exactly one YAML document"),
    (variant("version: 1", "version: 2"), 1, 10, "unsupported version 2"),
    (variant("version: 1\n", ""), 1, 1, "needs 'version'"),
    (variant("    every: 15m\n", "    every: 15m\n    evry: 5m\n"), 21, 5, "unknown key 'evry': did you mean 'every'?"),
    (variant("    every: 15m\n", "    every: 15m\n    every: 5m\n"), 21, 5, "duplicate key 'every'"),
    (variant("    every: 15m", "    every: !!python/object:os.system ls"), 20, 12, "unsupported YAML tag"),
    (variant("    every: 15m", "    every: !custom 15m"), 20, 12, "unsupported YAML tag"),
    (variant("    every: 15m", "    every: 15 minutes"), 20, 12, "invalid value '15 minutes'"),
    (variant("    every: 15m", "    every: 0.5s"), 20, 12, "under 1 second"),
    (variant("    every: 15m", "    cron: '*/5 * * * *'\n    every: 15m"), 15, 5, "exactly one of `every` or `cron`"),
    (variant("    every: 15m\n", ""), 15, 5, "exactly one of `every` or `cron`"),
    (variant("    every: 15m", "    cron: '61 * * * *'"), 20, 11, "invalid cron expression"),
    (variant("    every: 15m", "    cron: 'every day'"), 20, 11, "invalid cron expression"),
    (variant("    every: 15m", "    every: 15m\n    timezone: Mars/Olympus"), 21, 15, "unknown time zone 'Mars/Olympus'"),
    (variant("    node: prod\n    snapshot", "    node: nowhere\n    snapshot"), 17, 11, "unknown node 'nowhere'"),
    (variant("    snapshot: db01-ci", "    snapshot: db02-ci"), 18, 15, "unknown snapshot 'db02-ci'"),
    (variant("    aim_set: db01-aim", "    aim_set: nope"), 19, 14, "unknown AIM set 'nope'"),
    (variant("name: db01-ci, source: db01, type: complete-image", "name: db01-ci, source: db01, type: differential"),
     18, 15, "a source-snapshot policy increments a complete-image snapshot"),
    (variant("{destination_snapshot: db01-dr-pit}", "{destination_snapshot: missing-pit}"), 21, 36,
     "not declared on the AIM set's destination volume"),
    (variant("    kind: source-snapshot", "    kind: source-snap"), 16, 11, "is not one of"),
    (variant("    snapshot: db01-ci\n", ""), 15, 5, "a source-snapshot policy needs 'snapshot'"),
    (variant("    marker: {destination_snapshot: db01-dr-pit}\n", ""), 15, 5, "needs 'marker'"),
    (variant("{destination_snapshot: db01-dr-pit}", "{wait: 5m}"), 21, 13, "needs 'destination_snapshot'"),
    (variant("  - name: p1", "  - name: p 1"), 15, 11, "invalid value 'p 1'"),
    (extra_policy("  - name: p1\n    kind: auto-marker\n    node: prod\n    aim_set: db01-aim\n    every: 1h\n"
                  "    marker: {destination_snapshot: db01-dr-pit}\n"), 22, 11, "policy 'p1' is defined twice"),
    (variant("    - {node: prod, name: db01, size: 1GiB}", "    - {node: prod, name: db01, size: 1GB}"), 7, 38, "invalid value '1GB'"),
    (variant("{node: dr, name: db01-dr, size: 1GiB}", "{node: dr, name: db01-dr, size: 2GiB}"), 13, 76, "must be the same size"),
    (variant("    - {node: dr, name: db01-dr, size: 1GiB}", "    - {node: dr, name: db01-dr, size: 1GiB}\n"
             "    - {node: dr, name: db01-dr, size: 1GiB}"), 9, 24, "declared twice"),
    (variant("source: db01, type", "source: db09, type"), 10, 43, "unknown volume 'db09'"),
    (variant("    - {node: prod, name: db01, size: 1GiB}", "    - {node: moon, name: db01, size: 1GiB}"), 7, 14, "unknown node 'moon'"),
    (variant(', aim: "127.0.0.1:7421"}', "}"), 13, 64, "give its AIM address"),
    (variant('api: "http://127.0.0.1:7410"', 'api: "127.0.0.1:7410"'), 3, 15, "invalid value '127.0.0.1:7410'"),
    (variant("token_file: prod.token, ", ""), 3, 9, "needs 'token_file'"),
    (variant("    every: 15m", "    every: 15m\n    window: '8-18'"), 21, 13, "invalid value '8-18'"),
    (variant("    every: 15m", "    every: 15m\n    window: '08:00-08:00'"), 21, 13, "invalid window"),
    (variant("    every: 15m", "    every: 15m\n    blackout: ['2026-12-31..2026-12-24']"), 21, 16, "invalid blackout"),
    (variant("    every: 15m", "    every: 15m\n    blackout: ['2026-02-30']"), 21, 16, "invalid blackout"),
    (variant("    every: 15m", "    every: 15m\n    retain: {last: 3, min: 0}"), 21, 28, "less than the minimum of 1"),
    (variant("    every: 15m", "    every: 15m\n    retain: {last: 3, yearly: 2}"), 21, 23, "unknown key 'yearly'"),
    (variant("    every: 15m", "    every: 15m\n    quiesce: {pre: [/bin/true], thaw: [x]}"), 21, 33,
     "unknown key 'thaw'"),
    (variant("    every: 15m", "    every: 15m\n    misfire: {catch_up: all}"), 21, 25, "is not one of: none, once"),
    (variant("    every: 15m", "    every: 15m\n    retries: {count: -1}"), 21, 22, "less than the minimum of 0"),
    (variant("    every: 15m", "    every: [15m]"), 20, 12, "expected a string or a number, got a list"),
    (variant("policies:\n", "policies:\n  - just-a-string\n"), 15, 5, "expected a mapping"),
    (variant("    every: 15m", "    every: 15m\n    kind: group"), 21, 5, "duplicate key 'kind'"),
    (BASE + "  - name: g1\n    kind: group\n    node: prod\n    group: nope\n    every: 1h\n"
            "    marker: {destination_snapshot_set: s}\n", 25, 12, "unknown group 'nope'"),
    (variant("    - {node: prod, name: db01-aim, source: db01-ci, to: {node: dr, volume: db01-dr}}",
             "    - {node: prod, name: db01-aim, source: db01-ci, to: {node: dr, volume: nope}}"), 13, 76, "unknown destination volume 'nope'"),
    # dr-test
    (BASE + DR_TEST + "    marker: {destination_snapshot: db01-dr-pit}\n", 27, 5, "a dr-test policy has no `marker`"),
    (BASE + DR_TEST.replace("    snapshot: db01-dr-pit\n", ""), 22, 5, "needs exactly one of `snapshot` or `snapshot_set`"),
    (BASE + DR_TEST.replace("node: dr", "node: prod").replace("db01-dr-pit", "db01-ci"), 25, 15,
     "is complete-image: a dr-test clones points in time"),
    (BASE + DR_TEST.replace("db01-dr-pit", "nope"), 25, 15, "unknown snapshot 'nope'"),
    (BASE + DR_TEST + "    check: {run: []}\n", 27, 18, "expected at least 1 item(s), got 0"),
    (variant("    every: 15m", "    every: 15m\n    check: {run: [/bin/true]}"), 21, 5, "`check` is for dr-test policies"),
    # alerts and objectives
    (BASE + ALERTS.replace("{receiver: hook", "{receiver: nope"), 26, 18, "unknown receiver 'nope'"),
    (BASE + ALERTS.replace("[run_failed]", "[run_faild]"), 26, 29, "is not one of"),
    (BASE + ALERTS.replace('url: "http://h.example/x"', 'url: "ftp://h"'), 24, 35, "expected an http(s) URL"),
    (BASE + ALERTS.replace("  routes:", "    - {name: hook, webhook: {url: \"http://x/y\"}}\n  routes:"), 25, 14,
     "receiver 'hook' is declared twice"),
    (BASE + ALERTS.replace('webhook: {url: "http://h.example/x"}', 'email: {smtp: "m:25", from: a@b, to: [c@d], '
                                                                    'user_file: u}'), 24, 27, "both `user_file`"),
    (BASE + ALERTS.replace("{name: hook, webhook", "{name: hook, kind: x, webhook"), 24, 7, "exactly one of"),
    (BASE + DR_TEST + "    rpo_objective: 30m\n", 27, 5, "a dr-test policy makes no recovery points"),
    (variant("    every: 15m", "    every: 15m\n    rpo_objective: soon"), 21, 20, "invalid value 'soon'"),
    # recovery plans
    (BASE + PLAN.replace("{aim_set: db01-aim}", "{aim_set: nope}"), 25, 25, "unknown AIM set 'nope'"),
    (BASE + PLAN.replace("{aim_set: db01-aim}", "{group: nope}"), 25, 23, "unknown group 'nope'"),
    (BASE + PLAN.replace("node: dr", "node: prod"), 25, 25, "replicates to node 'dr', not 'prod'"),
    (BASE + PLAN.replace("node: dr", "node: mars"), 24, 11, "unknown node 'mars'"),
    (BASE + PLAN.replace("{aim_set: db01-aim}", "{aim_set: db01-aim}, {aim_set: db01-aim}"), 25, 46,
     "is in recovery plan 'site' twice"),
    (BASE + PLAN + "    point: newest\n", 26, 12, "is not one of: latest-group-point, latest-point, live"),
    (BASE + PLAN + "    after: [/bin/start]\n", 26, 13, "expected a list"),
    (BASE + PLAN + "    after: [1]\n", 26, 13, "expected a list"),  # found by test_generated: was a TypeError
    (BASE + PLAN.replace("{aim_set: db01-aim}", "{aim_set: db01-aim, group: g}"), 25, 15,
     "exactly one of `aim_set: NAME` or `group: NAME`"),
    (BASE + PLAN + PLAN.replace("recovery_plans:\n", ""), 26, 11, "recovery plan 'site' is defined twice"),
]


@pytest.mark.parametrize("text,line,col,fragment", CASES)
def test_bad_policy(tmp_path, text, line, col, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    _, problems = check([str(path)])
    assert problems, "no problem reported"
    rendered = [str(p) for p in problems]
    hit = [r for r in rendered if fragment in r]
    assert hit, rendered
    assert any(r.startswith(f"{path}:{line}:{col}: ") for r in hit), rendered


def test_count_of_cases():
    assert len(CASES) >= 40


def test_cli_prints_every_problem_and_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(variant("    every: 15m", "    every: 15 minutes\n    evry: 1").replace("db01-aim\n", "nope\n", 1))
    res = aimsnap("policy", "validate", str(path))
    assert res.code == 2 and "Traceback" not in res.err
    lines = res.err.strip().splitlines()
    assert len(lines) >= 3, lines  # all errors in one pass
    assert all(line.startswith(f"{path}:") for line in lines)
    assert any("(at $.policies[0].every)" in line for line in lines)


def test_names_are_global_across_files(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(BASE)
    b.write_text("version: 1\npolicies:\n  - name: p2\n    kind: auto-marker\n    node: prod\n    aim_set: db01-aim\n"
                 "    every: 30s\n    marker: {destination_snapshot: db01-dr-pit}\n")
    bundle = load_policies([str(a), str(b)])
    assert [p.name for p in bundle.policies] == ["p1", "p2"]
    assert any("under a minute" in str(w) for w in bundle.warnings)
    with pytest.raises(PolicyError, match="unknown node 'prod'"):
        load_policies([str(b)])


def test_examples_validate():
    import glob
    import os
    files = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "policies", "examples", "*.yaml")))
    assert {os.path.basename(f) for f in files} >= {"production-15m.yaml", "auto-marker.yaml", "group.yaml", "demo.yaml"}
    for f in files:
        res = aimsnap("policy", "validate", f)
        assert res.code == 0, (f, res.err)


def test_the_watchdog_looks_at_every_aim_set_group_members_included():
    import os
    demo = os.path.join(os.path.dirname(__file__), "..", "..", "policies", "examples", "demo.yaml")
    # logs-to-dr and fs01-to-dr are only named as members of the group `app`; db01-direct by no policy
    assert load_policies([demo]).aim_sets() == [("prod", n) for n in (
        "db01-ci-to-dr", "db01-direct", "erp-to-dr", "fs01-to-dr", "logs-to-dr")]

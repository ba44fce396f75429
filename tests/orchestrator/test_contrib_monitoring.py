"""contrib/prometheus/aimsnap-rules.yml passes `promtool check rules` (Debian's prometheus), and
it and the Grafana dashboard (contrib/grafana/aimsnap.json, which must parse) use only metrics
that aimsnap exports: the orchestrator's and a node's, read from their real registries."""

import json
import os
import re
import shutil
import subprocess

import pytest
from prometheus_client import generate_latest

from engine import Node
from engine.aim.receiver import Receiver
from engine.serve.metrics import NodeMetrics
from orchestrator.metrics import registry
from orchestrator.schedule.watchdog import Watchdog
from orchestrator.store import Store

CONTRIB = os.path.join(os.path.dirname(__file__), "..", "..", "contrib")
RULES = os.path.join(CONTRIB, "prometheus", "aimsnap-rules.yml")
DASHBOARD = os.path.join(CONTRIB, "grafana", "aimsnap.json")
BUILTIN = {"up"}  # Prometheus' own series


def exported(tmp_path) -> set[str]:
    store = Store(str(tmp_path / "o.db"))
    text = generate_latest(registry(store, Watchdog(store, list, lambda n: []))).decode()
    node = Node(str(tmp_path / "n"))
    try:
        text += NodeMetrics(node, Receiver(node, "t" * 20)).render().decode()
    finally:
        node.close()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        names.add(name)
        if kind == "counter":
            names.add(f"{name}_total")
        if kind == "histogram":
            names.update(f"{name}_{s}" for s in ("bucket", "sum", "count"))
    return names


def used(expr: str) -> set[str]:
    return {m for m in re.findall(r"\b([a-z_][a-z0-9_]*)\s*(?:\{|\[|\)|$|\s|>|<|=|-|\*)", expr)
            if m.startswith("aimsnap_") or m in BUILTIN}


@pytest.mark.skipif(not shutil.which("promtool"), reason="needs promtool (Debian's prometheus: make deps)")
def test_promtool_checks_the_rules():
    p = subprocess.run(["promtool", "check", "rules", RULES], capture_output=True, text=True)
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


def test_rules_and_dashboard_use_only_exported_metrics(tmp_path):
    import yaml
    names = exported(tmp_path) | BUILTIN
    exprs = [r["expr"] for g in yaml.safe_load(open(RULES))["groups"] for r in g["rules"]]
    dash = json.load(open(DASHBOARD))
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    for e in exprs:
        missing = used(e) - names
        assert used(e) and not missing, (e, missing)
    assert {"aimsnap_rpo_seconds", "aimsnap_rpo_objective_seconds", "aimsnap_aim_stalled"} <= set().union(
        *(used(e) for e in exprs))

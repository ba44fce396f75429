"""Prometheus metrics of the orchestrator, read from the outcome store at scrape time."""

from datetime import datetime, timezone

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .store import Store, parse_iso


class _Collector:
    def __init__(self, store: Store, watchdog) -> None:
        self.store, self.watchdog = store, watchdog

    def collect(self):
        runs = CounterMetricFamily("aimsnap_runs", "Runs by policy and status", labels=["policy", "status"])
        for r in self.store.run_counts():
            runs.add_metric([r["policy"], r["status"]], r["n"])
        yield runs
        dur = GaugeMetricFamily("aimsnap_run_last_duration_seconds", "Duration of the last finished run",
                                labels=["policy"])
        rpo = GaugeMetricFamily("aimsnap_rpo_seconds", "Age of the newest recovery point", labels=["policy"])
        since = GaugeMetricFamily("aimsnap_seconds_since_last_success", "Since the last ok run", labels=["policy"])
        tested = GaugeMetricFamily("aimsnap_dr_test_last_success_timestamp",
                                   "When a dr-test policy last proved its recovery point", labels=["policy"])
        now = datetime.now(timezone.utc)

        def age(t: str | None) -> float | None:
            return (now - parse_iso(t)).total_seconds() if t else None

        for s in self.store.schedule():
            p = s["policy"]
            row = self.store.last_finished_run(p)
            if row:
                dur.add_metric([p], age(row["started_at"]) - age(row["finished_at"]))
            point = self.store.newest_recovery_point(p)
            if point and point.get("issued_at"):
                rpo.add_metric([p], age(point["issued_at"]))
            ok = self.store.last_success_at(p)
            if ok:
                since.add_metric([p], age(ok))
                if s["kind"] == "dr-test":
                    tested.add_metric([p], parse_iso(ok).timestamp())
        objective = GaugeMetricFamily("aimsnap_rpo_objective_seconds", "The policy's rpo_objective",
                                      labels=["policy"])
        for s in self.store.schedule():
            if s["rpo_objective"]:
                objective.add_metric([s["policy"]], s["rpo_objective"])
        firing = GaugeMetricFamily("aimsnap_alert_firing", "1 for every alert firing now (see history --events)",
                                   labels=["rule", "key"])
        for key, a in self.store.open_alerts().items():
            firing.add_metric([a["rule"], key], 1.0)
        yield objective
        yield firing
        yield dur
        yield rpo
        yield since
        yield tested
        stalled = GaugeMetricFamily("aimsnap_aim_stalled", "1 while the watchdog sees the AIM set stalled",
                                    labels=["node", "aim_set"])
        for node, name in sorted(self.watchdog.stalled):
            stalled.add_metric([node, name], 1.0)
        yield stalled


def registry(store: Store, watchdog) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(_Collector(Store(store.path), watchdog))
    return reg


def serve_metrics(addr: str, store: Store, watchdog) -> None:
    host, _, port = addr.rpartition(":")
    start_http_server(int(port), addr=host or "127.0.0.1", registry=registry(store, watchdog))

"""Prometheus metrics of a node, read from the engine's own counters at scrape time."""

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..aim.receiver import Receiver
from ..aim.state import State
from ..node import Node
from ..storage.snapshots import EnableResult

_IO = (("reads", "aimsnap_volume_reads", "Read requests"),
       ("writes", "aimsnap_volume_writes", "Write requests (including increment copies)"),
       ("bytes_read", "aimsnap_volume_read_bytes", "Bytes read"),
       ("bytes_written", "aimsnap_volume_written_bytes", "Bytes written"),
       ("flushes", "aimsnap_volume_flushes", "Flushes"))


class _VolumeCollector:
    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self):
        families = {key: CounterMetricFamily(name, help_, labels=["volume"]) for key, name, help_ in _IO}
        size = GaugeMetricFamily("aimsnap_volume_size_bytes", "Volume size", labels=["volume"])
        for vol in list(self.node.volumes.values()):
            for key, family in families.items():
                family.add_metric([vol.name], getattr(vol.stats, key))
            size.add_metric([vol.name], vol.size)
        yield from families.values()
        yield size


class _AimCollector:
    def __init__(self, node: Node, receiver: Receiver | None = None) -> None:
        self.node, self.receiver = node, receiver

    def collect(self):
        state = GaugeMetricFamily("aimsnap_aim_state", "1 for the AIM set's current state", labels=["aim_set", "state"])
        gauges = {k: GaugeMetricFamily(f"aimsnap_aim_{k}", h, labels=["aim_set"]) for k, h in (
            ("queued_bytes", "Journal bytes not yet acknowledged by the destination"),
            ("queued_entries", "Journal entries not yet acknowledged"),
            ("lag_seconds", "Age of the oldest unacknowledged write"),
            ("dirty_blocks", "Blocks waiting for a resync"),
            ("overflowed", "1 while the journal limit is exceeded (tracking dirty blocks)"))}
        counters = {k: CounterMetricFamily(f"aimsnap_aim_{k}", h, labels=["aim_set"]) for k, h in (
            ("bytes_written", "Bytes written to the source volume (accepted)"),
            ("bytes_sent", "Bytes sent to the destination, framing included"),
            ("errors", "Failed sender attempts (connect, handshake, stream): the reason is in aim status"))}
        markers = CounterMetricFamily("aimsnap_markers", "Markers by AIM set and state", labels=["aim_set", "state"])
        verified = GaugeMetricFamily("aimsnap_aim_verify_last_timestamp_seconds",
                                     "When the last block-exact verify finished", labels=["aim_set"])
        mismatched = GaugeMetricFamily("aimsnap_aim_verify_mismatched_ranges",
                                       "Ranges that differed at the last verify (after its repair, if any)",
                                       labels=["aim_set"])
        generation = GaugeMetricFamily("aimsnap_aim_generation", "The AIM set's generation (bumped by each promotion), "
                                       "by this node's role in it", labels=["aim_set", "role"])
        promoted = GaugeMetricFamily("aimsnap_aim_promoted", "1 when this destination was failed over (its source "
                                     "is fenced)", labels=["aim_set"])
        for t in self.node.replication.targets.all():
            generation.add_metric([t.set_name, "destination"], t.generation)
            promoted.add_metric([t.set_name], 1.0 if t.promoted else 0.0)
        for aim in list(self.node.replication.sets.values()):
            st = aim.status()
            generation.add_metric([aim.name, "source"], st["generation"])
            for s in State:
                state.add_metric([aim.name, s.value], 1.0 if st["state"] == s.value else 0.0)
            for k, g in gauges.items():
                g.add_metric([aim.name], float(st[k]))
            for k, c in counters.items():
                c.add_metric([aim.name], st[k])
            last = self.node.replication.last_verify(aim.name)
            if last and last.get("state") == "done":
                verified.add_metric([aim.name], last["verified_at"])
                mismatched.add_metric([aim.name], last["mismatched_ranges"])
        for row in self.node.meta.query("SELECT aim_set, state, COUNT(*) AS n FROM markers GROUP BY aim_set, state"):
            markers.add_metric([row["aim_set"], row["state"]], row["n"])
        if self.receiver is not None:
            rejected = CounterMetricFamily("aimsnap_aim_rejected_connections",
                                           "Connections to the AIM port refused (authentication, protocol, checksum)")
            rejected.add_metric([], self.receiver.rejected)
            yield rejected
            failed = CounterMetricFamily("aimsnap_aim_receiver_errors",
                                         "Incoming streams that failed at this destination (the reason is in its log)")
            failed.add_metric([], self.receiver.errors)
            yield failed
        yield state
        yield from gauges.values()
        yield from counters.values()
        yield markers
        yield verified
        yield mismatched
        yield generation
        yield promoted


class NodeMetrics:
    def __init__(self, node: Node, receiver: Receiver | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_VolumeCollector(node))
        self.registry.register(_AimCollector(node, receiver))
        self.enables = Histogram("aimsnap_snapshot_enable_seconds", "Snapshot enables and their durations",
                                 ["snapshot", "type"], registry=self.registry,
                                 buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
        node.enable_listeners.append(self.observe_enable)

    def observe_enable(self, result: EnableResult) -> None:
        self.enables.labels(result.snapshot, result.type).observe(result.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

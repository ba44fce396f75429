"""Prometheus metrics of a node, read from the engine's own counters at scrape time."""

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .node import Node
from .snapshots import EnableResult

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


class NodeMetrics:
    def __init__(self, node: Node) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_VolumeCollector(node))
        self.enables = Histogram("aimsnap_snapshot_enable_seconds", "Snapshot enables and their durations",
                                 ["snapshot", "type"], registry=self.registry,
                                 buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300))
        node.enable_listeners.append(self.observe_enable)

    def observe_enable(self, result: EnableResult) -> None:
        self.enables.labels(result.snapshot, result.type).observe(result.seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

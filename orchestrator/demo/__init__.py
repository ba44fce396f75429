"""``aimsnap demo``: two real nodes on loopback, the demo policies run by a real orchestrator, a
write workload through NBD with quiesce hooks, and every destination point verified (``run``,
``workload``, ``verify``; ``localnode`` starts node processes for the demo, tests and benchmarks)."""

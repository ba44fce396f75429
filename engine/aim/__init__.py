"""Asynchronous IO mirroring. Source: the set's record (``state``), its write-path observer
(``observer``, ``journal``, ``backlog``), the sender (``sender``) under a supervisor, the marker
ledger (``markers``) and ``replication``, which owns them all. Destination: the AIM port
(``receiver``), the applier of one stream (``applier``) and group barriers (``barriers``). Both
speak ``frames`` over ``wire``."""

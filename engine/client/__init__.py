"""Clients of a node: its control API (``remote``) and its NBD exports (``nbd``)."""

"""The node server: the control API (one route table), NBD exports, the AIM port, metrics."""

"""Transport: sockets, receive buffers, the threaded listener and TLS contexts. Knows nothing of
storage or replication."""

"""Storage: volumes and their one write path, dirty-block bitmaps, complete-image and
differential snapshots, snapshot sets, the node's metadata and its root directory."""

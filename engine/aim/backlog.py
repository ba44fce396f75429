"""What the destination has not acknowledged yet: entries, bytes, the age of the oldest, and the
ranges in flight. Appends (the write path) and acknowledgements (the sender's turns) move it, both
under the source volume's lock; ``aim status`` and ``/metrics`` read it without a lock."""

import collections

from .journal import Journal


class Backlog:
    def __init__(self, journal: Journal, acked: int) -> None:
        self.journal = journal
        # ranges sent, not yet acknowledged: (last seq, entries, bytes, time_ns of the first)
        self.inflight: collections.deque[tuple[int, int, int, int]] = collections.deque()
        self.reset(acked)

    def reset(self, acked: int) -> None:
        """Everything after ``acked`` is unacknowledged and nothing is in flight (a new session)."""
        self.inflight.clear()
        self.entries, self.bytes, self.oldest_ns = self.journal.backlog(acked)

    def clear(self) -> None:
        """Nothing is owed (the journal was turned into dirty bits)."""
        self.inflight.clear()
        self.entries = self.bytes = self.oldest_ns = 0

    def appended(self, entries: int, size: int, now_ns: int) -> None:
        self.entries += entries
        self.bytes += size
        self.oldest_ns = self.oldest_ns or now_ns

    def sent(self, last: int, entries: int, size: int, first_ns: int) -> None:
        self.inflight.append((last, entries, size, first_ns))

    def acknowledged(self, seq: int) -> None:
        while self.inflight and self.inflight[0][0] <= seq:  # whole ranges the destination has
            _, count, size, _ = self.inflight.popleft()
            self.entries -= count
            self.bytes -= size
        if self.inflight:
            self.oldest_ns = self.inflight[0][3]
        elif self.entries <= 0:
            self.entries = self.bytes = self.oldest_ns = 0

    def lag_seconds(self, now_ns: int) -> float:
        return max(0.0, (now_ns - self.oldest_ns) / 1e9) if self.oldest_ns and self.entries > 0 else 0.0

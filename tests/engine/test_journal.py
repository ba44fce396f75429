"""The AIM journal against a list of entries: random batches of appends, reclaims (segments
kept as spares and reused), reopenings after a torn last append, and resets. Every read from
any sequence number is compared with the model."""

import os
import shutil
import tempfile

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from engine.aim import frames, journal
from engine.aim.journal import Cursor, Journal


class JournalModel(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="aimsnap-journal-")
        self.old_segment_bytes = journal.SEGMENT_BYTES
        journal.SEGMENT_BYTES = 3000  # a few entries per segment: rolls, reclaims and reuse happen
        self.j = Journal(self.dir)
        self.entries: dict[int, tuple[int, int, bytes]] = {}  # seq -> (type, offset, payload)
        self.acked = 0
        self.next = 1  # numbers never go back, whatever happens

    def teardown(self) -> None:
        self.j.close()
        journal.SEGMENT_BYTES = self.old_segment_bytes
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(batch=st.lists(st.tuples(st.booleans(), st.integers(0, 1 << 30), st.binary(max_size=900)),
                         min_size=1, max_size=6))
    def append(self, batch) -> None:
        entries = [(frames.WRITE, off, data, -1) if write else (frames.ZERO, off, b"", len(data) + 1)
                   for write, off, data in batch]
        last, size = self.j.append_many(entries, 1)
        assert size == sum(frames.HEADER_SIZE + len(e[2]) for e in entries)
        for i, (ftype, off, data, _) in enumerate(entries):
            self.entries[last - len(entries) + 1 + i] = (ftype, off, data)
        self.next = last + 1

    @rule(data=st.data())
    def reclaim(self, data) -> None:
        if not self.entries:
            return
        self.acked = data.draw(st.integers(self.acked, max(self.acked, *self.entries)))
        self.j.reclaim(self.acked)
        assert len(self.j.spares) <= journal.SPARES

    @rule(torn=st.integers(1, 60))
    def reopen_after_a_torn_append(self, torn: int) -> None:
        """A kill in the middle of an append: part of one more entry reached the tail segment."""
        self.j.sync()
        tail = self.j.segments[-1] if self.j.segments else None
        if tail is not None:
            raw = frames.Frame(frames.WRITE, self.j.next_seq, 0, 1, b"x" * 100).encode()
            with open(tail.path, "r+b") as f:
                f.seek(tail.size)
                f.write(raw[:torn])
        self.j.close()
        self.j = Journal(self.dir)

    @rule()
    def reopen(self) -> None:
        self.j.close()
        self.j = Journal(self.dir)

    @rule(n=st.integers(0, 5))
    def skip(self, n: int) -> None:
        """At open, past numbers seen elsewhere (the destination's, after a power cut took the tail)."""
        self.j.close()
        self.j = Journal(self.dir)
        self.j.skip_to(self.next + n)
        self.next += n
        self.acked = max(self.acked, self.next - 1)  # the skipped numbers were acknowledged elsewhere

    @rule()
    def reset(self) -> None:
        """An overflow: every entry dropped, numbering goes on."""
        nxt = self.j.next_seq
        self.j.reset(nxt)
        self.entries.clear()
        self.acked = nxt - 1  # what was dropped is in the dirty bitmap now, not owed by the journal

    @invariant()
    def numbering_goes_on(self) -> None:
        assert self.j.next_seq == self.next

    @invariant()
    def reads_match(self) -> None:
        segs = self.j.segments
        kept = segs[0].first if segs else self.j.next_seq
        assert kept <= self.acked + 1 or not any(s > self.acked for s in self.entries), "unacknowledged entry lost"
        for s in [s for s in self.entries if s < kept]:  # reclaimed with their segment
            del self.entries[s]
        got = [(f.seq, f.type, f.offset, f.payload if f.type == frames.WRITE else b"") for f, _raw in
               self.j.read_from(kept)]
        want = [(s, t, o, p if t == frames.WRITE else b"") for s, (t, o, p) in sorted(self.entries.items())]
        assert got == want
        if self.entries:
            assert max(self.entries) < self.j.next_seq
            # a sender's cursor ships the very bytes that were journaled, from the first unacknowledged
            start = max(kept, self.acked + 1)
            cursor = Cursor(self.j, start)
            shipped = b"".join(os.pread(f.fileno(), count, pos) for *_seqs, f, pos, count in
                               cursor.ranges(self.j.next_seq - 1, segs[-1].first, segs[-1].size))
            cursor.close()
            assert shipped == b"".join(raw for f, raw in self.j.read_from(start))


TestJournal = JournalModel.TestCase

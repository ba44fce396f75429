"""Power loss at either site, or both, at random moments of a replication workload with markers.

Both node roots live on the power-loss file system (tests/powerfs.py): a cut kills the node and
then throws away everything the node had not fsynced (file data, and names whose directory was not
synced), and the node starts again as on a rebooted machine (a new boot id). Afterwards: no write
acknowledged to a host is lost, the journal scan keeps every acknowledged entry, every marker is
either applied (its point exists once at the destination and equals the source at the marker) or
failed with a reason, and the replica converges to the source."""

import os
import random

import pytest

from engine import EngineError
from engine.aim.journal import Journal
from engine.client.nbd import NbdClient
from engine.client.remote import RemoteNode

from ..aimpair import Pair, read_all
from ..campaign import SLOT, SLOTS, Campaign
from ..conftest import FULL
from ..powerfs import Mount, missing, new_boot

pytestmark = pytest.mark.skipif(missing() is not None, reason=missing() or "")
CUTS = 50 if FULL else 10


class Site:
    """A node whose root is on its own power-loss file system."""

    def __init__(self, tmp_path, name: str) -> None:
        self.name = name
        self.fs = Mount(str(tmp_path / f"{name}-disk"), str(tmp_path / f"{name}-mnt"))
        self.boots = str(tmp_path)
        self.kwargs = {"boot": lambda: new_boot(self.boots), "log_path": str(tmp_path / f"{name}.log")}

    @property
    def root(self) -> str:
        return os.path.join(self.fs.mountpoint, "node")

    def on_disk(self, *parts: str) -> str:
        """A path of the root as the disk holds it (valid between a cut and the next boot)."""
        return os.path.join(self.fs.backing, "node", *parts)


class PowerCampaign(Campaign):
    def __init__(self, pair: Pair, aim: str, sites: dict[str, Site], seed: int) -> None:
        super().__init__(pair, aim, seed)
        self.sites = sites
        self.cuts = {"src": 0, "dst": 0}
        self.allowed_failures: set[int] = set()  # markers still outstanding when the source lost power
        self.journal_from: int | None = None  # the journal's last seq when this round began (None: not journaling)
        self.entries = self.acked_entries = 0  # entries appended this round; up to the last acknowledged write
        self.unflushed: dict[int, list[bytes]] = {}  # slot -> what it held at the last flush, then each write since
        self.nbd: NbdClient | None = None
        self.src_cut = False

    def round(self, i: int, fault) -> None:
        # each round starts replicating (a cut of the source costs a resync; markers issued during
        # it fail at once, and a campaign of only those would test little)
        info = self.pair.wait_state(self.aim, "replicating", timeout=120)
        self.journal_from = None if info["overflowed"] else info["last_seq"]
        self.entries = self.acked_entries = 0
        super().round(i, fault)

    def write(self) -> None:
        """Half through the API (FUA: durable when answered), half through NBD without FUA and
        flushed now and then: what a power cut may take back."""
        if self.rng.random() < 0.5:
            super().write()  # every journal entry before it is durable too
            self.entries += 1
            self.acked_entries = self.entries
            self.unflushed.clear()
            return
        slot = self.rng.randrange(SLOTS)
        data = self.rng.randbytes(SLOT)
        self.unflushed.setdefault(slot, [bytes(self.model[slot * SLOT:(slot + 1) * SLOT])]).append(data)
        try:
            if self.nbd is None:
                self.nbd = NbdClient(self.pair.src.proc.nbd, "v")
            assert self.nbd.write(slot * SLOT, data)[0] == 0
            self.model[slot * SLOT:(slot + 1) * SLOT] = data
            self.entries += 1
            if self.rng.random() < 0.25:
                assert self.nbd.flush()[0] == 0
                self.unflushed.clear()
                self.acked_entries = self.entries
        except (OSError, AssertionError) as e:  # the source died under us
            self.nbd = None
            raise EngineError(f"NBD: {e}") from None

    def resolve(self) -> None:
        """After the source lost power: a write since the last flush is there or not, each slot
        holding one of the values it was given since (or the one before)."""
        if self.src_cut:
            for slot, options in self.unflushed.items():
                if slot in self.uncertain:
                    options.append(self.uncertain.pop(slot))
                got = self.pair.src.api.read("v", slot * SLOT, SLOT)
                assert got in options, f"slot {slot} holds a value it was never given"
                self.model[slot * SLOT:(slot + 1) * SLOT] = got
            self.unflushed.clear()
            self.src_cut = False
        super().resolve()

    def marker(self, label: str) -> dict:
        m = super().marker(label)
        if m["state"] == "failed":  # refused at once: the set is resynchronising after a power loss
            assert "resynchronising" in m["error"], m
            self.allowed_failures.add(m["id"])
        else:
            self.entries += 1
        return m

    def power_cut(self, which: tuple[str, ...]) -> None:
        sides = {"src": self.pair.src, "dst": self.pair.dst}
        if "src" in which:  # what a resync after the cut may fail: markers not yet answered
            known = set(self.expected)
            own = RemoteNode(self.pair.src.proc.api, self.pair.src.proc.token)  # the writer uses the other
            try:
                outstanding = {m["id"] for m in own.replication.markers(self.aim) if m["state"] == "issued"}
            finally:
                own.close()
        for w in which:  # the power goes at once: every node dies before any disk is looked at
            sides[w].kill()
        for w in which:
            self.sites[w].fs.cut()
            self.cuts[w] += 1
        if "src" in which:
            self.src_cut = True
            self.check_journal()
            self.allowed_failures |= outstanding | (set(self.expected) - known)
        for w in which:
            self.sites[w].fs.boot()
            sides[w].start()

    def check_journal(self) -> None:
        """The disk after the cut: the journal's entries run without a gap and include every entry
        up to the last acknowledged write (what the scan at the next start will find)."""
        journal = Journal(self.sites["src"].on_disk("aim", self.aim, "journal"))
        try:
            seqs = [f.seq for f, _raw in journal.read_from(0)]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) if seqs else True, "the journal has a gap"
            if self.journal_from is not None:
                assert journal.next_seq - 1 >= self.journal_from + self.acked_entries, \
                    f"acknowledged journal entries lost: {journal.next_seq - 1} < {self.journal_from} + {self.acked_entries}"
        finally:
            journal.close()


def test_power_loss_at_either_site(tmp_path):
    sites = {w: Site(tmp_path, w) for w in ("src", "dst")}
    pair = Pair(tmp_path, src_root=sites["src"].root, dst_root=sites["dst"].root,
                src=sites["src"].kwargs, dst=sites["dst"].kwargs)
    c = None
    try:
        rng = random.Random(11)
        c = PowerCampaign(pair, pair.replicate("v", SLOTS * SLOT), sites, seed=11)
        for i in range(CUTS):
            which = rng.choice((("src",), ("dst",), ("src",), ("dst",), ("src", "dst")))
            c.round(i, lambda: c.power_cut(which))
        applied = c.verify(may_fail=c.allowed_failures)
        assert applied >= CUTS // 3, (applied, c.cuts, [m["error"] for m in c.failed_markers])
        points = [p["name"] for p in pair.dst.api.snapshot_info("v-dr-pit")["points"]]
        assert len(points) == len(set(points)) == applied, \
            f"points {points} for {applied} applied markers; failed: {[(m['id'], m['error']) for m in c.failed_markers]}"
        reports = [r for s in sites.values() for r in s.fs.reports]
        print(f"power-loss campaign: cuts {c.cuts}, markers applied {applied}, failed with a reason "
              f"{len(c.failed_markers)}; reverted files {sum(r['files_reverted'] for r in reports)}, "
              f"pages {sum(r['pages_reverted'] for r in reports)}, names {sum(r['names_reverted'] for r in reports)}")
        assert sum(r["files_reverted"] for r in reports) > CUTS // 2, "the cuts lost nothing: the test tested nothing"
    finally:
        if c is not None and c.nbd is not None:
            c.nbd.close()
        pair.stop()
        for s in sites.values():
            s.fs.close()


def _lose_journal_from(root: str, aim: str, seq: int) -> None:
    """What a power cut does to a journal whose tail was never synced: entries from ``seq`` on
    are gone (the segment cut at that entry, later segments removed)."""
    from engine.aim import journal as journal_mod

    directory = os.path.join(root, "aim", aim, "journal")
    for name in sorted(os.listdir(directory), key=lambda n: int(n.split(".")[0])):
        path = os.path.join(directory, name)
        if not name.endswith(".seg"):
            continue
        if int(name.split(".")[0]) >= seq:
            os.truncate(path, 0)
            continue
        pos = 0
        for entry_seq, _time, size in journal_mod._scan_headers(path, os.path.getsize(path)):
            if entry_seq >= seq:
                os.truncate(path, pos)
                break
            pos += size


def test_a_marker_the_power_cut_took_from_the_source_journal_is_settled_by_the_destination(tmp_path):
    """The sender may ship a marker between its journal append and the sync that follows; a
    power cut then takes it from the source's disk, and its acknowledgement never came. If the
    destination applied it, the restarted source says applied (with the destination's point),
    not failed; one the destination never got fails once a handshake has asked."""
    import sqlite3

    boot = {"boot": lambda: new_boot(str(tmp_path))}
    pair = Pair(tmp_path, src=boot)
    try:
        aim = pair.replicate("v", SLOTS * SLOT)
        api = pair.src.api
        api.write("v", 0, b"a" * SLOT)
        applied = pair.marker(aim, "v-dr-pit", "shipped")
        assert applied["state"] == "applied", applied
        api.replication.pause(aim)
        api.write("v", SLOT, b"b" * SLOT)
        unshipped = api.replication.issue_marker(aim, "v-dr-pit", "unshipped")
        assert unshipped["state"] == "issued", unshipped
        pair.src.kill()
        # the disk after the cut: both markers' journal entries gone, the first one's answer too
        _lose_journal_from(pair.src.root, aim, applied["seq"])
        db = sqlite3.connect(os.path.join(pair.src.root, "node.db"))
        with db:
            db.execute("UPDATE markers SET state='issued', applied_at=NULL, point=NULL WHERE id=?", (applied["id"],))
            db.execute("UPDATE aim_sets SET acked_seq=? WHERE name=?", (applied["seq"] - 1, aim))
        db.close()
        pair.src.start()  # a new boot id: the page cache was lost
        api = pair.src.api
        assert api.replication.show(str(applied["id"]))["state"] == "issued"  # not yet known
        api.replication.resume(aim)
        pair.wait_caught_up(aim, timeout=120)
        settled = api.replication.wait(str(applied["id"]), 30)
        assert settled["state"] == "applied" and settled["point"] == applied["point"], settled
        lost = api.replication.wait(str(unshipped["id"]), 30)
        assert lost["state"] == "failed" and "lost in a power loss" in lost["error"], lost
        points = [p["name"] for p in pair.dst.api.snapshot_info("v-dr-pit")["points"]]
        assert points == [applied["point"]], points
        assert read_all(pair.dst.api, "v-dr", SLOTS * SLOT) == read_all(api, "v", SLOTS * SLOT)
    finally:
        pair.stop()

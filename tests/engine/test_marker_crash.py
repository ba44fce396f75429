"""A marker that reached the journal when the process died, before its row got its sequence
number: the destination will apply it, so the reopened node must keep it issued (with its seq),
not fail it. The source is killed at exactly that moment (os._exit in the child)."""

import subprocess
import sys
import textwrap

from engine import Node

CHILD = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {repo!r})
    from engine import Node
    from engine.aim.markers import Markers
    from engine.aim.receiver import Receiver
    from tests.aimlink import Link, Recorder

    dst = Node({dst!r}); dst.create_volume("v-dr", 1 << 20, "4KiB")
    dst.create_snapshot("v-dr-pit", "v-dr", "differential")
    link = Link(Receiver(dst, "t" * 20))
    src = Node({src!r}, connect=link.connect, delay=Recorder()); src.create_volume("v", 1 << 20, "4KiB")
    src.replication.start()
    src.replication.create("v-aim", "v", "dr.example:7411/v-dr", "t" * 20)
    while src.replication.info("v-aim")["state"] != "replicating" or src.replication.info("v-aim")["overflowed"]:
        time.sleep(0.01)
    src.write("v", 0, b"x" * 4096)
    Markers.sequenced = lambda self, marker_id, seq: os._exit(9)  # dies between the journal and the row
    src.replication.issue_marker("v-aim", "v-dr-pit", "cut")
""")


def test_a_journaled_marker_survives_a_kill_before_its_row_is_sequenced(tmp_path):
    import os
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    child = subprocess.run([sys.executable, "-c", CHILD.format(repo=repo, src=src, dst=dst)],
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 9, child.stderr
    with Node(src) as node:  # not serving: nothing is shipped, only loaded
        [m] = node.replication.markers("v-aim")
        assert m["label"] == "cut" and m["state"] == "issued" and m["seq"] is not None, m

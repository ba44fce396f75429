"""The orchestrator's node clients across a reload: a client is closed only by the thread that
uses it (between its requests), never under another thread's request."""

import threading

from orchestrator.nodes import Nodes
from policies.validate import load_policies

from .test_scheduler import POLICY


def _bundle(tmp_path, api: str):
    (tmp_path / "t").write_text("token-token-token-token\n")
    (tmp_path / "t").chmod(0o600)
    f = tmp_path / "p.yaml"
    f.write_text(POLICY.format(tz="UTC", catch_up="once", retries=0, timeout="10m").replace("http://127.0.0.1:1", api))
    return load_policies([str(f)])


def test_update_leaves_other_threads_clients_open_until_they_call_again(tmp_path):
    nodes = Nodes(_bundle(tmp_path, "http://127.0.0.1:1"))
    mine = nodes("prod")
    theirs: list = []
    go, called_again = threading.Event(), threading.Event()

    def other() -> None:
        theirs.append(nodes("prod"))
        go.wait(10)
        theirs.append(nodes("prod"))
        called_again.set()
    t = threading.Thread(target=other)
    t.start()
    while not theirs:
        pass
    closed: list = []
    for c in (mine, theirs[0]):
        real = c.close
        c.close = lambda real=real, c=c: (closed.append(c), real())
    nodes.update(_bundle(tmp_path, "http://127.0.0.1:9"))  # a reload that moves the node
    assert closed == []  # nobody's request is cut
    new = nodes("prod")
    assert new is not mine and new.url == "http://127.0.0.1:9" and closed == [mine]
    go.set()
    called_again.wait(10)
    t.join(10)
    assert theirs[1] is not theirs[0] and closed == [mine, theirs[0]]  # closed by its own thread
    nodes.close()

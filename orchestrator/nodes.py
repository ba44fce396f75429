"""The orchestrator's clients of the nodes a policy file declares, and their token files."""

import threading

from engine import InvalidInput
from engine.client.remote import RemoteNode
from engine.interface import NodeAPI
from policies.model import Bundle


def read_token(path: str | None) -> str:
    if not path:
        raise InvalidInput("--node needs --token-file (or $AIMSNAP_TOKEN_FILE): the node's API token")
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as e:
        raise InvalidInput(f"cannot read token file {path}: {e.strerror}") from None
    if not token:
        raise InvalidInput(f"token file {path} is empty")
    return token


class Nodes:
    """API clients for the declared nodes, one per node and thread (an HTTP connection is not
    shared between threads), opened on first use."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._local = threading.local()
        self._all: list[RemoteNode] = []
        self._lock = threading.Lock()

    def __call__(self, name: str) -> NodeAPI:
        clients = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        if name not in clients:
            spec = self.bundle.nodes[name]
            clients[name] = RemoteNode(spec.api, read_token(spec.token_file))
            with self._lock:
                self._all.append(clients[name])
        return clients[name]

    def close(self) -> None:
        with self._lock:
            for c in self._all:
                c.close()

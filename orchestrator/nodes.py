"""The orchestrator's clients of the nodes a policy file declares, and their token files."""

import threading

from engine import InvalidInput
from engine.client.remote import RemoteNode
from engine.net.secretfile import read_secret
from engine.interface import NodeAPI
from policies.model import Bundle


def read_file(path: str, what: str) -> str:
    """A small file the operator names (a token, a CA certificate), or a clear error."""
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise InvalidInput(f"cannot read {what} {path}: {e.strerror}") from None


def read_token(path: str | None) -> str:
    if not path:
        raise InvalidInput("--node needs --token-file (or $AIMSNAP_TOKEN_FILE): the node's API token")
    token = read_secret(path, "token file").strip()
    if not token:
        raise InvalidInput(f"token file {path} is empty")
    return token


class Nodes:
    """API clients for the declared nodes, one per node and thread (an HTTP connection is not
    shared between threads), opened on first use.

    A client is only ever closed by the thread that uses it, between its requests (a reload must
    not cut a run's long-poll of its marker): :meth:`update` starts a new generation, and each
    thread replaces its clients of an older one at its next call. :meth:`close`, at shutdown,
    after every run has ended, closes them all."""

    def __init__(self, bundle: Bundle, role: str = "operator") -> None:
        """``role``: ``operator`` takes a node's ``operator_token_file`` where declared (the
        scheduler, trigger, prune, plans: least privilege), ``admin`` its ``token_file`` (apply)."""
        self.bundle, self.role = bundle, role
        self.generation = 0
        self._local = threading.local()
        self._all: set[RemoteNode] = set()
        self._lock = threading.Lock()

    def update(self, bundle: Bundle) -> None:
        """New node declarations (a reload): threads take new clients at their next call."""
        with self._lock:
            self.bundle = bundle
            self.generation += 1

    def __call__(self, name: str) -> NodeAPI:
        local = self._local
        if getattr(local, "generation", None) != self.generation:
            self._drop(getattr(local, "clients", {}).values())  # this thread's own, idle between calls
            local.clients, local.generation = {}, self.generation
        clients = local.clients
        if name not in clients:
            spec = self.bundle.nodes[name]
            token_file = spec.operator_token_file if self.role == "operator" and spec.operator_token_file \
                else spec.token_file
            clients[name] = RemoteNode(spec.api, read_token(token_file), ca=spec.api_tls_ca)
            with self._lock:
                self._all.add(clients[name])
        return clients[name]

    def _drop(self, clients) -> None:
        for c in list(clients):
            c.close()
            with self._lock:
                self._all.discard(c)

    def close(self) -> None:
        with self._lock:
            clients, self._all = list(self._all), set()
        for c in clients:
            c.close()

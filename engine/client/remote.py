"""A client of a node's control API that satisfies the same interface as :class:`engine.Node`
(:class:`engine.interface.NodeAPI`), so every CLI verb and action works the same against a local
root or a remote node. Its methods are generated from the route table: one per route, with the
interface method's signature; nothing here re-types the API by hand."""

from __future__ import annotations

import http.client
import inspect
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable

from .. import errors
from ..errors import EngineError
from ..net.tls import client_tls, plaintext_peer
from ..routes import MAX_WAIT, ROUTES, Route


class NodeUnreachable(EngineError):
    """No answer from the node (exit code 3)."""

    exit_code = 3


_ERRORS = {cls.__name__: cls for cls in (errors.InvalidInput, errors.NotFound, errors.AlreadyExists,
                                          errors.Conflict, errors.Forbidden, errors.EngineError)}


class Http:
    """One keep-alive HTTP(S) connection to a node, with its token; errors become engine errors.

    Over ``https://`` the node must present a certificate signed by ``ca`` (a CA file, or the
    node's own certificate), else by the system's trusted CAs, and naming the URL's host (a DNS
    name or an IP address among its subjectAltNames): the token goes only to that node."""

    def __init__(self, url: str, token: str, timeout: float, ca: str | None = None) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise errors.InvalidInput(f"invalid node address {url!r}: write https://HOST:PORT (or http://)")
        self.url = f"{parsed.scheme}://{parsed.netloc}"
        self.token = token
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if parsed.scheme == "https":
            try:
                # the host name (or IP) in the URL must be in the certificate: a CA signs many
                context = client_tls(ca, check_hostname=True) if ca else ssl.create_default_context()
            except (OSError, ssl.SSLError) as e:
                raise errors.InvalidInput(f"cannot load the node CA file {ca}: {getattr(e, 'strerror', None) or e}") \
                    from None
            self.conn: http.client.HTTPConnection = http.client.HTTPSConnection(parsed.hostname, port,
                                                                                 timeout=timeout, context=context)
        else:
            self.conn = http.client.HTTPConnection(parsed.hostname, port, timeout=timeout)

    def call(self, route: Route, params: dict) -> object:
        """Send one route's request: path parameters, query, then the JSON body or raw data."""
        params = dict(params)
        path = route.path
        for name in route.path_params:
            path = path.replace("{" + name + "}", urllib.parse.quote(str(params.pop(name)), safe=""))
        query = {k: params.pop(k) for k in list(params) if k in route.query}
        data = params.pop("data") if route.raw_body else None
        body = {k: v for k, v in params.items() if v is not None} if route.body is not None else None
        return self.request(route.method, path, query=query, body=body, data=data)

    def request(self, method: str, path: str, *, query: dict | None = None, body: object = None,
                data: bytes | None = None) -> object:
        if query:
            path += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {"Authorization": f"Bearer {self.token}"}
        payload: bytes | None = data
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif data is not None:
            headers["Content-Type"] = "application/octet-stream"
        try:
            self.conn.request(method, path, body=payload, headers=headers)
            resp = self.conn.getresponse()
            raw = resp.read()
        except (ConnectionError, socket.timeout, socket.gaierror, OSError, http.client.HTTPException) as e:
            self.conn.close()
            raise NodeUnreachable(self._unreachable(e)) from None
        if resp.status == 401:
            raise EngineError(f"node {self.url} refused the token (401): check --token-file")
        if resp.status >= 400:
            try:
                err = json.loads(raw)["error"]
                kind, message = err["type"], err["message"]
            except (ValueError, KeyError, TypeError):
                kind, message = "", raw[:200].decode(errors="replace")
            cls = _ERRORS.get(kind)
            raise cls(message) if cls else EngineError(f"node {self.url} answered {resp.status}: {message}")
        if resp.status == 204:
            return None
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(raw)
        return raw

    def _unreachable(self, e: Exception) -> str:
        """Why, in the operator's words: a certificate not trusted, TLS spoken to a plain port or
        plain HTTP to a TLS port, or the network."""
        if isinstance(e, ssl.SSLCertVerificationError):
            return (f"node {self.url} presented a certificate that is not trusted ({e.verify_message}): "
                    "give its CA or certificate with --node-ca (or $AIMSNAP_NODE_CA; api_tls_ca in policies)")
        if isinstance(e, ssl.SSLError):
            hint = " (is it an http:// node?)" if plaintext_peer(e) else ""
            return f"node {self.url}: TLS failed: {e.reason or e}{hint}"
        if self.url.startswith("http://") and isinstance(e, (http.client.RemoteDisconnected, http.client.BadStatusLine,
                                                              ConnectionResetError)):
            return f"node {self.url} closed the connection without an HTTP answer (is it an https:// node?)"
        return f"node {self.url} is unreachable: {getattr(e, 'strerror', None) or e}"

    def close(self) -> None:
        self.conn.close()


def _method(route: Route) -> Callable:
    sig = inspect.signature(route.protocol_method)

    def call(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        return self._http.call(route, {k: v for k, v in bound.arguments.items() if k != "self"})

    call.__name__ = call.__qualname__ = route.op.rpartition(".")[2]
    call.__signature__ = sig  # type: ignore[attr-defined]
    call.__doc__ = route.protocol_method.__doc__ or route.summary
    return call


class RemoteReplication:
    """The node's ``replication`` methods over the control API."""

    def __init__(self, http_: Http) -> None:
        self._http = http_

    def wait(self, ref: str, timeout: float) -> dict:
        """Long-polls in pieces of at most 30 s (the server's bound on one request)."""
        deadline = time.monotonic() + timeout
        while True:
            m = self._wait_once(ref, max(0, int(min(MAX_WAIT, deadline - time.monotonic()))))
            if m["state"] != "issued" or time.monotonic() >= deadline:
                return m


class RemoteAccess:
    """The node's ``access`` methods (tokens, audit) over the control API."""

    def __init__(self, http_: Http) -> None:
        self._http = http_


class RemoteNode:
    def __init__(self, url: str, token: str, timeout: float = 60.0, ca: str | None = None) -> None:
        self._http = Http(url, token, timeout, ca)
        self.url = self._http.url
        self.replication = RemoteReplication(self._http)
        self.access = RemoteAccess(self._http)

    def metrics(self) -> str:
        """The node's Prometheus exposition (not a route of the interface: a local root has none)."""
        return self._http.request("GET", "/metrics").decode()  # type: ignore[union-attr]

    def close(self) -> None:
        self._http.close()


_OWNERS = {"": RemoteNode, "replication": RemoteReplication, "access": RemoteAccess}
for _route in ROUTES:
    _owner, _, _name = _route.op.rpartition(".")
    _cls = _OWNERS[_owner]
    setattr(_cls, "_wait_once" if _route.op == "replication.wait" else _name, _method(_route))

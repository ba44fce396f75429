"""A client of a node's control API with the same methods as :class:`engine.Node`, so every CLI
verb (and later every action) works the same against a local root or a remote node."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse

import engine.errors as errors
from engine import EngineError


class NodeUnreachable(EngineError):
    """No answer from the node (exit code 3)."""

    exit_code = 3


_ERRORS = {cls.__name__: cls for cls in (errors.InvalidInput, errors.NotFound, errors.AlreadyExists,
                                          errors.Conflict, errors.EngineError)}


class RemoteNode:
    def __init__(self, url: str, token: str, timeout: float = 60.0) -> None:
        parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise errors.InvalidInput(f"invalid node address {url!r}: write http://HOST:PORT")
        self.url = f"{parsed.scheme}://{parsed.netloc}"
        self.token = token
        cls = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
        self.conn = cls(parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80), timeout=timeout)
        self.replication = RemoteReplication(self)

    def close(self) -> None:
        self.conn.close()

    def _request(self, method: str, path: str, *, query: dict | None = None, body: object = None,
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
            raise NodeUnreachable(f"node {self.url} is unreachable: {getattr(e, 'strerror', None) or e}") from None
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
        if resp.getheader("Content-Type", "").startswith("application/json"):
            return json.loads(raw)
        return raw

    @staticmethod
    def _q(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    # -- the engine's methods ------------------------------------------------------------------------
    def node_info(self) -> dict:
        return self._request("GET", "/v1/node")

    def create_volume(self, name: str, size: str | int, block_size: str | int = 65536) -> dict:
        return self._request("POST", "/v1/volumes", body={"name": name, "size": size, "block_size": block_size})

    def list_volumes(self) -> list[dict]:
        return self._request("GET", "/v1/volumes")

    def volume_info(self, name: str) -> dict:
        return self._request("GET", f"/v1/volumes/{self._q(name)}")

    def delete_volume(self, name: str) -> None:
        self._request("DELETE", f"/v1/volumes/{self._q(name)}")

    def read(self, name: str, offset: int, length: int) -> bytes:
        return self._request("GET", f"/v1/volumes/{self._q(name)}/data", query={"offset": offset, "length": length})

    def write(self, name: str, offset: int, data: bytes) -> None:
        self._request("PUT", f"/v1/volumes/{self._q(name)}/data", query={"offset": offset}, data=data)

    def flush(self, name: str) -> None:
        self._request("POST", f"/v1/volumes/{self._q(name)}/flush")

    def create_snapshot(self, name: str, source: str, type: str) -> dict:
        return self._request("POST", "/v1/snapshots", body={"name": name, "source": source, "type": type})

    def list_snapshots(self) -> list[dict]:
        return self._request("GET", "/v1/snapshots")

    def snapshot_info(self, name: str) -> dict:
        return self._request("GET", f"/v1/snapshots/{self._q(name)}")

    def enable_snapshot(self, name: str, point: str | None = None) -> dict:
        return self._request("POST", f"/v1/snapshots/{self._q(name)}/enable",
                             body={"point": point} if point else {})

    def delete_snapshot(self, name: str) -> None:
        self._request("DELETE", f"/v1/snapshots/{self._q(name)}")

    def delete_point(self, name: str, point: str) -> None:
        self._request("DELETE", f"/v1/snapshots/{self._q(name)}/points/{self._q(point)}")

    def read_snapshot(self, name: str, point: str | None, offset: int, length: int) -> bytes:
        return self._request("GET", f"/v1/snapshots/{self._q(name)}/data",
                             query={"point": point, "offset": offset, "length": length})

    def create_snapshot_set(self, name: str, members: list[str]) -> dict:
        return self._request("POST", "/v1/snapshot-sets", body={"name": name, "members": members})

    def list_snapshot_sets(self) -> list[dict]:
        return self._request("GET", "/v1/snapshot-sets")

    def snapshot_set_info(self, name: str) -> dict:
        return self._request("GET", f"/v1/snapshot-sets/{self._q(name)}")

    def enable_snapshot_set(self, name: str, point: str | None = None) -> dict:
        return self._request("POST", f"/v1/snapshot-sets/{self._q(name)}/enable",
                             body={"point": point} if point else {})

    def delete_snapshot_set(self, name: str) -> None:
        self._request("DELETE", f"/v1/snapshot-sets/{self._q(name)}")


class RemoteReplication:
    """The node's ``replication`` methods over the control API."""

    def __init__(self, node: RemoteNode) -> None:
        self.node = node

    def _r(self, *a, **kw):
        return self.node._request(*a, **kw)

    def create(self, name: str, source: str, to: str, token: str, journal_limit: str | int | None = None,
               tls_ca: str | None = None) -> dict:
        body = {"name": name, "source": source, "to": to, "token": token}
        if tls_ca:
            body["tls_ca"] = tls_ca
        if journal_limit is not None:
            body["journal_limit"] = journal_limit
        return self._r("POST", "/v1/aim-sets", body=body)

    def list(self) -> list[dict]:
        return self._r("GET", "/v1/aim-sets")

    def info(self, name: str) -> dict:
        return self._r("GET", f"/v1/aim-sets/{self.node._q(name)}")

    def delete(self, name: str) -> None:
        self._r("DELETE", f"/v1/aim-sets/{self.node._q(name)}")

    def pause(self, name: str, paused: bool = True) -> dict:
        return self._r("POST", f"/v1/aim-sets/{self.node._q(name)}/{'pause' if paused else 'resume'}")

    def issue_marker(self, aim_set: str, snapshot: str | None, label: str | None = None) -> dict:
        body = {"snapshot": snapshot, **({"label": label} if label else {})}
        return self._r("POST", f"/v1/aim-sets/{self.node._q(aim_set)}/markers", body=body)

    def issue_group_marker(self, group: str, snapshot_set: str, label: str | None = None) -> dict:
        body = {"snapshot_set": snapshot_set, **({"label": label} if label else {})}
        return self._r("POST", f"/v1/groups/{self.node._q(group)}/markers", body=body)

    def markers(self, aim_set: str | None = None, limit: int = 100) -> list[dict]:
        return self._r("GET", "/v1/markers", query={"aim_set": aim_set, "limit": limit})

    def show(self, ref: str) -> dict:
        return self._r("GET", f"/v1/markers/{self.node._q(str(ref))}")

    def wait(self, ref: str, timeout: float) -> dict:
        import time
        deadline = time.monotonic() + timeout
        while True:  # long-poll in pieces of at most 30 s
            left = max(0, int(min(30, deadline - time.monotonic())))
            m = self._r("GET", f"/v1/markers/{self.node._q(str(ref))}", query={"wait": left})
            if m["state"] != "issued" or time.monotonic() >= deadline:
                return m

    def create_group(self, name: str, members: list[str]) -> dict:
        return self._r("POST", "/v1/groups", body={"name": name, "members": members})

    def list_groups(self) -> list[dict]:
        return self._r("GET", "/v1/groups")

    def group_info(self, name: str) -> dict:
        return self._r("GET", f"/v1/groups/{self.node._q(name)}")

    def delete_group(self, name: str) -> None:
        self._r("DELETE", f"/v1/groups/{self.node._q(name)}")

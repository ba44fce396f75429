"""Least privilege and the audit trail at a real node: tokens with roles made through the CLI,
every route of the route table tried with each role (the table is the specification: exactly
the allowed ones pass), 401 for everything without a token (nothing revealed), and every
state-changing request in `node audit` with who, what, from where and the result."""

import json
import re

import pytest

from engine.access import ROLES, allows
from engine.routes import ROUTES

from ..cli import aimsnap
from .test_node_server import cli, http, node  # noqa: F401 - the fixture

@pytest.fixture
def tokens(node):  # noqa: F811 - the fixture
    made = {}
    for role in ROLES:
        res = cli(node, "node", "token", "create", f"t-{role}", "--role", role, "--json")
        assert res.code == 0, res.err
        made[role] = res.json()
        assert made[role]["role"] == role and len(made[role]["token"]) >= 40
    return {role: m["token"] for role, m in made.items()}


def _path(route) -> str:
    """The route's path with names that exist nowhere: nothing is changed, whatever the role."""
    return re.sub(r"\{[^}]+\}", "no-such-thing", route.path)


def test_every_route_with_every_role(node, tokens):  # noqa: F811
    tried = 0
    for route in ROUTES:
        for role, token in tokens.items():
            body = b"" if route.raw_body else (b"{}" if route.body is not None else None)
            code, raw = http(node, route.method, _path(route), token=token, data=body,
                             headers={"Content-Type": "application/octet-stream" if route.raw_body
                                      else "application/json"})
            tried += 1
            if allows(role, route.role):
                assert code not in (401, 403), (route.method, route.path, role, code, raw)
            else:
                assert code == 403, (route.method, route.path, role, code, raw)
                msg = json.loads(raw)["error"]["message"]
                assert f"has role {role}" in msg and f"needs {route.role}" in msg
    assert tried == 3 * len(ROUTES)
    assert {r.role for r in ROUTES} == set(ROLES)
    # and the paths outside the table: /metrics and the OpenAPI document for every role
    for token in tokens.values():
        assert http(node, "GET", "/metrics", token=token)[0] == 200
        assert http(node, "GET", "/v1/openapi.json", token=token)[0] == 200


def test_the_table_gives_a_scheduler_what_it_does_and_no_more():
    role = {r.op: r.role for r in ROUTES}
    for op in ("replication.issue_marker", "replication.issue_group_marker", "enable_snapshot", "delete_point",
               "create_clone", "delete_clone", "replication.failover", "replication.failback",
               "replication.switchover", "restore_volume", "replication.verify"):
        assert role[op] == "operator", op
    for op in ("delete_volume", "replication.delete", "replication.create", "create_volume", "delete_snapshot",
               "access.create_token", "access.revoke_token", "access.audit", "access.list_tokens"):
        assert role[op] == "admin", op
    assert role["read"] == role["read_snapshot"] == "operator"  # data is not status
    assert role["list_volumes"] == role["replication.list"] == "read"


def test_without_a_token_nothing_is_revealed(node):  # noqa: F811
    assert cli(node, "volume", "create", "secret-db", "--size", "1MiB").code == 0
    answers = {http(node, "GET", p, token=False) for p in
               ("/v1/volumes/secret-db", "/v1/volumes/no-such", "/v1/no/such/path", "/metrics")}
    assert len(answers) == 1 and next(iter(answers))[0] == 401  # the same answer whether it exists or not
    assert http(node, "GET", "/v1/volumes/secret-db", token="wrong-token-0123456789")[0] == 401


def test_tokens_revoked_and_the_audit_trail(node, tokens, tmp_path):  # noqa: F811
    op = tokens["operator"]
    assert cli(node, "volume", "create", "v", "--size", "1MiB").code == 0
    assert cli(node, "snapshot", "create", "v-pit", "--source", "v", "--type", "differential").code == 0
    assert http(node, "POST", "/v1/snapshots/v-pit/enable", token=op, body={"point": "p1"})[0] == 200
    code, raw = http(node, "DELETE", "/v1/volumes/v", token=op)
    assert code == 403
    assert http(node, "POST", "/v1/tokens", token=tokens["admin"], body={"name": "x", "role": "root"})[0] == 400
    listed = cli(node, "node", "token", "list", "--json").json()
    assert [t["name"] for t in listed] == ["t-admin", "t-operator", "t-read"]
    assert all("token" not in t and "sha256" not in t for t in listed)
    assert cli(node, "node", "token", "revoke", "t-operator").code == 0
    assert http(node, "GET", "/v1/volumes", token=op)[0] == 401  # from the next request on
    res = cli(node, "node", "audit", "--json")
    assert res.code == 0, res.err
    trail = res.json()
    mine = [(e["token"], e["method"], e["path"], e["status"]) for e in trail]
    assert ("t-operator", "POST", "/v1/snapshots/v-pit/enable", 200) in mine
    assert ("t-operator", "DELETE", "/v1/volumes/v", 403) in mine
    assert ("node-token", "POST", "/v1/volumes", 201) in mine
    assert ("node-token", "DELETE", "/v1/tokens/t-operator", 204) in mine
    refused = next(e for e in trail if e["status"] == 403)
    assert "needs admin" in refused["error"] and refused["remote"] == "127.0.0.1" and refused["role"] == "operator"
    assert not any(e["method"] == "GET" for e in trail)  # reads are not state changes
    text = json.dumps(trail) + open(f"{node.root}/audit.log").read()
    assert all(t not in text for t in tokens.values()) and node.token not in text
    assert cli(node, "node", "audit", "--since", "1h").code == 0
    (tmp_path / "read.token").write_text(tokens["read"] + "\n")
    (tmp_path / "read.token").chmod(0o600)
    as_read = aimsnap("node", "audit", env={"AIMSNAP_NODE": node.api, "AIMSNAP_TOKEN_FILE": str(tmp_path / "read.token")})
    assert as_read.code == 1 and "needs admin" in as_read.err


def test_the_trail_names_what_was_made_and_a_refused_token_cannot_flush_it(node, tokens):  # noqa: F811
    from engine.access.audit import REFUSALS_PER_MINUTE
    admin, read = tokens["admin"], tokens["read"]
    assert http(node, "POST", "/v1/tokens", token=admin, body={"name": "backup", "role": "operator"})[0] == 201
    for _ in range(REFUSALS_PER_MINUTE + 15):  # a read token POSTing in a loop
        assert http(node, "POST", "/v1/volumes", token=read, body={"name": "x", "size": "1MiB"})[0] == 403
    secret = "SECRET-TOKEN-0123456789abcdef"
    code, raw = http(node, "POST", "/v1/aim-sets", token=admin, data=json.dumps([secret]).encode(),
                     headers={"Content-Type": "application/json"})
    assert code == 400 and secret.encode() not in raw  # the whole body of the wrong type is not echoed
    assert http(node, "POST", "/v1/tokens", token=read, body={"name": "y", "role": "admin"})[0] == 403
    trail = cli(node, "node", "audit", "--json").json()
    made = [e for e in trail if e["path"] == "/v1/tokens" and e["status"] == 201]
    assert made[-1]["request"] == {"name": "backup", "role": "operator"} and made[-1]["role"] == "admin"
    refused = [e for e in trail if e["token"] == "t-read"]
    counted = sum(e.get("refusals_not_recorded", 0) for e in refused)
    assert len(refused) <= REFUSALS_PER_MINUTE + 2 and len(refused) + counted >= REFUSALS_PER_MINUTE + 16
    assert secret not in json.dumps(trail)


def test_leaf_certificate_pins_the_server_itself_never_a_chain_or_a_key():
    from engine.net.tls import leaf_certificate
    leaf = "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n"
    chain = leaf + "-----BEGIN CERTIFICATE-----\nINTERMEDIATE\n-----END CERTIFICATE-----\n"
    key = "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n"
    assert leaf_certificate(chain) == leaf and leaf_certificate(key + chain) == leaf
    assert leaf_certificate(key) is None

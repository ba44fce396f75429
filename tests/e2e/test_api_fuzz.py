"""A property-based fuzzer over the node's own OpenAPI document (schemathesis), over HTTPS (the
node serves a certificate of a private CA): whatever it sends, with or without the token, the
node never answers 5xx and keeps serving."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from engine.serve.api import openapi

from ..conftest import FULL
from orchestrator.demo.localnode import start_node

schema = schemathesis.openapi.from_dict(openapi())


@pytest.fixture(scope="module")
def fuzzed_node(tmp_path_factory, pki):
    n = start_node(str(tmp_path_factory.mktemp("fuzz") / "node"),
                   extra=("--api-tls-cert", pki["server"].cert, "--api-tls-key", pki["server"].key))
    n.ca = pki["ca"].cert
    assert n.api.startswith("https://")
    yield n
    assert n.stop() == 0, n.log()


@schema.parametrize()
@settings(max_examples=200 if FULL else 25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_no_server_errors(case, fuzzed_node):
    response = case.call(base_url=fuzzed_node.api, headers={"Authorization": f"Bearer {fuzzed_node.token}"},
                         verify=fuzzed_node.ca)
    assert response.status_code < 500, (case.method, case.formatted_path, response.status_code, response.text[:300])
    if response.status_code >= 400:
        assert response.json()["error"]["message"]
    assert fuzzed_node.proc.poll() is None


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_token_no_entry(case, fuzzed_node):
    if case.path == "/healthz":
        return
    response = case.call(base_url=fuzzed_node.api, verify=fuzzed_node.ca)
    assert response.status_code == 401

"""One typed node interface: the local Node, its replication, the remote client and the route
table agree with :mod:`engine.interface` method by method, parameter by parameter."""

import inspect

import pytest

from engine import Node
from engine.aim.replication import Replication
from engine.client.remote import RemoteNode, RemoteReplication
from engine.interface import ReplicationAPI, StorageAPI
from engine.routes import ROUTES


def _methods(proto: type) -> list[str]:
    return sorted(n for n, v in vars(proto).items() if callable(v) and not n.startswith("_"))


def _params(fn) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(fn).parameters.values() if p.name != "self"]


INTERFACES = [(StorageAPI, Node, RemoteNode, ""), (ReplicationAPI, Replication, RemoteReplication, "replication.")]


@pytest.mark.parametrize("proto,local,remote,prefix", INTERFACES)
def test_every_method_has_exactly_one_route(proto, local, remote, prefix):
    ops = [r.op for r in ROUTES]
    for name in _methods(proto):
        if name == "close":
            continue
        assert ops.count(prefix + name) == 1, f"{prefix}{name} has {ops.count(prefix + name)} routes"


def test_every_route_carries_exactly_the_method_parameters():
    for r in ROUTES:
        carried = set(r.path_params) | set(r.query) | (set(r.body["properties"]) if r.body else set())
        if r.raw_body:
            carried.add("data")
        assert carried == set(r.parameters()), (r.method, r.path, carried, r.parameters())
        for p in _params(r.protocol_method):  # an optional parameter is optional on the wire too
            if p.default is inspect.Parameter.empty:
                continue
            if p.name in r.query:
                assert "default" in r.query[p.name], (r.path, p)
            elif r.body and p.name in r.body["properties"]:
                assert p.name not in r.body["required"], (r.path, p)


@pytest.mark.parametrize("proto,local,remote,prefix", INTERFACES)
def test_local_and_remote_satisfy_the_interface(proto, local, remote, prefix):
    for name in _methods(proto):
        want = _params(getattr(proto, name))
        for impl in (local, remote):
            got = _params(getattr(impl, name))
            # the same parameters in the same order; an implementation may add keyword-only extras
            # with defaults (Node.write's fua), never a required one
            assert [p.name for p in got[:len(want)]] == [p.name for p in want], (impl, name)
            assert all(p.default is not inspect.Parameter.empty for p in got[len(want):]), (impl, name)
            for w, g in zip(want, got):
                assert (w.default is inspect.Parameter.empty) == (g.default is inspect.Parameter.empty), (impl, name)
                if w.default is not inspect.Parameter.empty:
                    assert w.default == g.default, (impl, name, w)
        assert inspect.signature(getattr(remote, name)).parameters.keys() == \
            inspect.signature(getattr(proto, name)).parameters.keys()


def test_a_real_node_is_an_instance_of_the_protocols(tmp_path):
    with Node(str(tmp_path / "n")) as node:
        assert isinstance(node, StorageAPI) and isinstance(node.replication, ReplicationAPI)
    remote = RemoteNode("http://127.0.0.1:1", "t" * 20)
    assert isinstance(remote, StorageAPI) and isinstance(remote.replication, ReplicationAPI)
    remote.close()

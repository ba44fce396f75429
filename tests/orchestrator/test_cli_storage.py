import hashlib
import os

import pytest

from ..cli import aimsnap


@pytest.fixture
def r(tmp_path):
    root = str(tmp_path / "node")

    def run(*args, **kw):
        return aimsnap("--root", root, *args, **kw)
    return run


def test_volume_lifecycle_and_json(r, tmp_path):
    assert r("volume", "create", "db01", "--size", "64MiB").code == 0
    res = r("volume", "list", "--json")
    assert res.code == 0 and [v["name"] for v in res.json()] == ["db01"] and res.json()[0]["size"] == 64 << 20
    payload = os.urandom(300_000)
    src = tmp_path / "payload"
    src.write_bytes(payload)
    assert r("volume", "write", "db01", str(src), "--offset", "12345").code == 0
    res = r("volume", "read", "db01", "--offset", "12345", "--length", "300000")
    assert res.code == 0 and res.out == payload
    res = r("volume", "read", "db01")
    assert len(res.out) == 64 << 20
    assert hashlib.sha256(res.out[12345:312345]).digest() == hashlib.sha256(payload).digest()
    assert r("volume", "info", "db01", "--json").json()["allocated"] >= 300_000
    assert "db01" in r("volume", "list").text
    assert r("volume", "delete", "db01").code == 0
    assert r("volume", "list", "--json").json() == []


def test_write_from_stdin_is_checked_before_writing(r):
    r("volume", "create", "v", "--size", "1MiB")
    assert r("volume", "write", "v", "--offset", "1MiB", input=b"").code == 0  # empty write at the end: fine
    res = r("volume", "write", "v", "--offset", str((1 << 20) - 10), input=b"x" * 11)
    assert res.code == 2 and "beyond its size" in res.err and "Traceback" not in res.err
    assert r("volume", "read", "v", "--offset", str((1 << 20) - 10)).out == bytes(10)
    assert r("volume", "write", "v", "--offset", "4KiB", input=b"hello").code == 0
    assert r("volume", "read", "v", "--offset", "4096", "--length", "5").out == b"hello"


def test_snapshots_and_sets(r):
    r("volume", "create", "a", "--size", "1MiB")
    r("volume", "create", "b", "--size", "1MiB")
    r("volume", "write", "a", input=b"A1")
    assert r("snapshot", "create", "a-ci", "--source", "a", "--type", "complete-image").code == 0
    assert r("snapshot", "create", "a-pit", "--source", "a", "--type", "differential").code == 0
    assert r("snapshot", "create", "b-pit", "--source", "b", "--type", "differential").code == 0
    res = r("snapshot", "enable", "a-ci", "--json")
    assert res.code == 0 and res.json()["blocks"] == 1
    assert r("snapshot", "enable", "a-pit", "--point", "first").text.strip() == "enabled a-pit@first"
    r("volume", "write", "a", input=b"A2")
    assert r("snapshot", "read", "a-pit@first", "--length", "2").out == b"A1"
    assert r("snapshot", "read", "a-ci", "--length", "2").out == b"A1"
    assert r("snapshot-set", "create", "ab", "--members", "a-pit,b-pit").code == 0
    res = r("snapshot-set", "enable", "ab", "--point", "s1", "--json")
    assert res.code == 0 and res.json()["point"] == "s1" and len(res.json()["members"]) == 2
    assert r("snapshot", "read", "a-pit@s1", "--length", "2").out == b"A2"
    sets = r("snapshot-set", "list", "--json").json()
    assert sets[0]["name"] == "ab" and sets[0]["enables"] == 1
    info = r("snapshot", "info", "a-pit", "--json").json()
    assert [p["name"] for p in info["points"]] == ["first", "s1"] and info["snapshot_sets"] == ["ab"]
    assert "first" in r("snapshot", "info", "a-pit").text
    assert {s["name"] for s in r("snapshot", "list", "--json").json()} == {"a-ci", "a-pit", "b-pit"}
    assert r("snapshot", "delete", "a-pit@first").code == 0
    assert r("snapshot", "read", "a-pit@s1", "--length", "2").out == b"A2"
    res = r("snapshot", "delete", "a-pit")
    assert res.code == 1 and "member of snapshot set" in res.err


@pytest.mark.parametrize("args,code,fragment", [
    (["volume", "create", "v", "--size", "12GB"], 2, "unit"),
    (["volume", "create", "bad/name", "--size", "1MiB"], 2, "invalid volume name"),
    (["volume", "create", "v"], 2, "Missing option '--size'"),
    (["volume", "info", "nope"], 1, "volume 'nope' does not exist"),
    (["volume", "read", "v", "--offset", "2MiB"], 2, "beyond its size"),
    (["volume", "read", "v", "--offset", "banana"], 2, "invalid size"),
    (["snapshot", "create", "s", "--source", "v", "--type", "full"], 2, "Invalid value for '--type'"),
    (["snapshot", "read", "nope@"], 2, "point name after '@'"),
    (["snapshot", "enable", "nope"], 1, "snapshot 'nope' does not exist"),
    (["snapshot-set", "enable", "nope"], 1, "snapshot set 'nope' does not exist"),
    (["frobnicate"], 2, "No such command"),
])
def test_errors_are_one_line_with_exit_codes(r, args, code, fragment):
    r("volume", "create", "v", "--size", "1MiB")
    res = r(*args)
    assert res.code == code, res.err
    assert fragment in res.err
    assert "Traceback" not in res.err


def test_root_from_environment_and_missing_root(tmp_path):
    res = aimsnap("volume", "list", env={"AIMSNAP_ROOT": str(tmp_path / "none")})
    assert res.code == 1 and "not an aimsnap node root" in res.err
    assert not (tmp_path / "none" / "node.db").exists()
    assert aimsnap("volume", "create", "v", "--size", "1MiB", env={"AIMSNAP_ROOT": str(tmp_path / "r")}).code == 0
    assert aimsnap("--root", str(tmp_path / "r"), "volume", "list", "--json").json()[0]["name"] == "v"


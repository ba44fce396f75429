"""Every CLI verb with generated flag values: the exit code is one the README promises (0, 1, 2,
3) and the error is one line, never a traceback or an "internal error". Verbs run in-process
(``orchestrator.cli.run``) on a scratch node root and outcome store, or against an unreachable
node."""

import os

import click
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.cli import cli, run

SKIP = {"node serve", "run", "demo", "demo-quiesce"}  # they serve or run until stopped (tested elsewhere)
VALUES = ["", "0", "-1", "1", "4096", "64KiB", "1GiB", "1PiB", "9" * 30, "1.5", "abc", "☃", "-", "..", "/",
          "/dev/null", "a@b", "a@", "@", "x" * 200, "15m", "-5m", "2026-13-45", "2026-01-01T00:00:00Z",
          "nonexistent.yaml", "10.0.0.1:99999/v", "127.0.0.1:1/v", "\t", "--json"]


def _leaves(cmd: click.Command, path: tuple[str, ...] = ()):
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _leaves(sub, path + (name,))
    elif " ".join(path) not in SKIP:
        yield path, cmd


LEAVES = list(_leaves(cli))


@st.composite
def invocations(draw):
    path, cmd = draw(st.sampled_from(LEAVES))
    argv = list(path)
    for p in cmd.params:
        if isinstance(p, click.Argument):
            n = 1 if p.nargs == 1 else draw(st.integers(0, 2))
            argv += [draw(st.sampled_from(VALUES)) for _ in range(n)] if draw(st.booleans()) or p.required else []
        elif draw(st.booleans()):
            flag = p.opts[0]
            argv += [flag] if getattr(p, "is_flag", False) else [flag, draw(st.sampled_from(VALUES))]
    return argv


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AIMSNAP_ROOT", str(tmp_path / "root"))
    for var in ("AIMSNAP_NODE", "AIMSNAP_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(argv=invocations(), remote=st.booleans())
def test_every_verb_with_generated_flags_fails_cleanly(scratch, capsys, argv, remote):
    if remote:  # a node that is not there: exit 3, said in one line
        token = scratch / "token"
        token.write_text("t" * 20)
        token.chmod(0o600)
        argv = ["--node", "http://127.0.0.1:1", "--token-file", str(token), *argv]
    code = run(argv)
    err = capsys.readouterr().err
    assert code in (0, 1, 2, 3), (argv, code, err)
    assert "Traceback" not in err and "internal error" not in err, (argv, err)


def test_the_fuzz_reaches_every_verb():
    assert {" ".join(p) for p, _ in LEAVES} >= {"volume create", "aim create", "marker issue", "plan", "history"}
    assert os.environ.get("AIMSNAP_DEBUG") is None

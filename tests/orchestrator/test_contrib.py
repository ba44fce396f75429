"""The shipped systemd units: valid unit files whose command lines the CLI accepts."""

import glob
import os
import shlex
import shutil
import subprocess
import sys
import warnings

import click
import pytest

from orchestrator.cli import cli

UNITS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "contrib", "systemd", "*.service")))


def exec_start(path: str) -> list[str]:
    text = open(path).read().replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


def test_units_exist():
    assert {os.path.basename(u) for u in UNITS} == {"aimsnap-node.service", "aimsnap-run.service"}


@pytest.mark.parametrize("unit", UNITS, ids=os.path.basename)
def test_exec_start_parses(unit):
    argv = exec_start(unit)
    assert argv[0].endswith("/aimsnap")
    assert parse(argv[1:]) == []


def parse(argv: list[str]) -> list[str]:
    """Walk the command groups as click would, without running anything; what is left over."""
    cmd, ctx = cli, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # protected_args: click 8.2 names
        ctx = cli.make_context("aimsnap", list(argv))
        while isinstance(cmd, click.Group):
            name, cmd, rest = cmd.resolve_command(ctx, [*ctx.protected_args, *ctx.args])
            ctx = cmd.make_context(name, rest, parent=ctx)  # raises on an unknown option or a bad value
        return list(ctx.args)


def test_parse_would_notice_a_bad_option():
    with pytest.raises(click.UsageError):
        parse(["node", "serve", "--no-such-option"])


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed here")
def test_units_verify(tmp_path):
    for unit in UNITS:
        text = open(unit).read().replace("/opt/aimsnap/.venv/bin/aimsnap", os.path.join(os.path.dirname(sys.executable), "aimsnap"))
        (tmp_path / os.path.basename(unit)).write_text(text)
    res = subprocess.run(["systemd-analyze", "verify", *map(str, tmp_path.glob("*.service"))],
                         capture_output=True, text=True)
    assert res.returncode == 0 and "aimsnap" not in res.stderr, res.stderr

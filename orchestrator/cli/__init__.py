"""The ``aimsnap`` command: one click group, and one place that turns errors into exit codes.

Exit codes: 0 ok, 1 operation failed, 2 invalid input or usage, 3 node unreachable. Errors are one
line on stderr; ``AIMSNAP_DEBUG=1`` adds the traceback for bug reports.
"""

import os
import sys
import traceback

import click

from engine import EngineError
from policies.errors import PolicyError

from . import aim, alerts, demo, node, plans, policy, recovery, roles, run, storage  # noqa: F401 - roles adds aim verbs

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
@click.option("--root", envvar="AIMSNAP_ROOT", default="./aimsnap-data", show_default=True,
              type=click.Path(file_okay=False), help="The node root directory for local verbs ($AIMSNAP_ROOT).")
@click.option("--node", "node_url", envvar="AIMSNAP_NODE", default=None,
              help="Act on a node's control API instead, e.g. https://10.1.0.21:7410 ($AIMSNAP_NODE).")
@click.option("--token-file", envvar="AIMSNAP_TOKEN_FILE", default=None, type=click.Path(dir_okay=False),
              help="The node's API token file, with --node ($AIMSNAP_TOKEN_FILE).")
@click.option("--node-ca", envvar="AIMSNAP_NODE_CA", default=None, type=click.Path(dir_okay=False),
              help="The CA (or self-signed certificate) an https:// node must present ($AIMSNAP_NODE_CA).")
@click.version_option(package_name="aimsnap")
@click.pass_context
def cli(ctx: click.Context, root: str, node_url: str | None, token_file: str | None, node_ca: str | None) -> None:
    """aimsnap: policy-based disaster recovery of block volumes (asynchronous IO mirroring with snapshots)."""
    ctx.obj = storage.Target(root=root, node_url=node_url, token_file=token_file, node_ca=node_ca)


for command in (*storage.COMMANDS, *recovery.COMMANDS, *aim.COMMANDS, *plans.COMMANDS, *alerts.COMMANDS,
                *policy.COMMANDS, *run.COMMANDS, node.node, demo.demo, demo.demo_quiesce, demo.demo_check):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="aimsnap", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aimsnap: aborted", err=True)
        return 130
    except EngineError as e:
        click.echo(f"aimsnap: error: {e}", err=True)
        return e.exit_code
    except PolicyError as e:
        for problem in e.problems:
            click.echo(str(problem), err=True)
        return e.exit_code
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (e.g. `| head`): not an error worth a message
        return 0
    except KeyboardInterrupt:
        click.echo("aimsnap: interrupted", err=True)
        return 130
    except OSError as e:
        click.echo(f"aimsnap: error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}", err=True)
        return 1
    except Exception as e:  # a bug: still one line, the traceback on request
        if os.environ.get("AIMSNAP_DEBUG"):
            traceback.print_exc()
        click.echo(f"aimsnap: internal error: {type(e).__name__}: {e} (set AIMSNAP_DEBUG=1 for a traceback)",
                   err=True)
        return 1

"""``aimsnap node``: run a storage node; its API tokens and its audit trail."""

from datetime import datetime, timedelta, timezone

import click

from engine.access import ROLES
from engine.storage.names import iso
from policies.durations import DurationError, parse_duration

from .output import print_json, print_table
from .storage import json_option, pass_target


@click.group()
def node() -> None:
    """Run a storage node; manage its API tokens; read its audit trail."""


@node.command("serve")
@click.option("--root", "node_root", default=None, type=click.Path(file_okay=False),
              help="The node root directory [default: the global --root].")
@click.option("--api", default="127.0.0.1:7410", show_default=True, help="Control API address (port 0: any free port).")
@click.option("--nbd", default="127.0.0.1:10809", show_default=True, help="NBD address.")
@click.option("--aim", default="127.0.0.1:7411", show_default=True, help="AIM replication address.")
@click.option("--token-file", "serve_token_file", default=None, type=click.Path(dir_okay=False),
              help="API token file (role admin); created with a random token (mode 0600) if absent "
                   "[default: ROOT/api.token].")
@click.option("--aim-tls-cert", default=None, type=click.Path(dir_okay=False), help="Serve the AIM port over TLS.")
@click.option("--aim-tls-key", default=None, type=click.Path(dir_okay=False), help="The certificate's key.")
@click.option("--api-tls-cert", default=None, type=click.Path(dir_okay=False),
              help="Serve the control API over HTTPS (clients: https:// and --node-ca).")
@click.option("--api-tls-key", default=None, type=click.Path(dir_okay=False), help="Its key (mode 0600).")
@click.option("--insecure-http", is_flag=True,
              help="Allow a plain-HTTP control API on a non-loopback address while other ports have TLS.")
@click.option("--nbd-tls", "nbd_tls_mode", type=click.Choice(["off", "on", "require"]), default="off",
              show_default=True, help="NBD over TLS (STARTTLS): on = offered, plain clients still served; "
              "require = every client must start TLS first.")
@click.option("--nbd-tls-cert", default=None, type=click.Path(dir_okay=False), help="The NBD server certificate (PEM).")
@click.option("--nbd-tls-key", default=None, type=click.Path(dir_okay=False), help="Its private key (PEM).")
@click.option("--nbd-tls-client-ca", default=None, type=click.Path(dir_okay=False),
              help="Require NBD clients to present a certificate signed by this CA (PEM; needs require).")
@click.option("--nbd-tls-clients", default=None, type=click.Path(dir_okay=False),
              help='JSON map of client certificate CN to the exports it may open (globs), e.g. '
              '{"host1.example": ["db01", "erp*"]}; needs --nbd-tls-client-ca.')
@click.option("--nbd-max-connections", default=64, show_default=True, type=click.IntRange(1, 4096),
              help="NBD connections served at once (one thread each); one more is refused and logged.")
@click.option("--aim-stream-timeout", default=120.0, show_default=True, type=click.FloatRange(1, 3600),
              metavar="SECONDS", help="An AIM peer silent this long has gone: the stream ends, the source says "
              "why in its status and reconnects (heartbeats go every 2 s; set the same at both sites).")
@click.pass_obj
def serve(target, node_root: str | None, api: str, nbd: str, aim: str, serve_token_file: str | None,
          aim_tls_cert: str | None, aim_tls_key: str | None, api_tls_cert: str | None, api_tls_key: str | None,
          insecure_http: bool, nbd_tls_mode: str, nbd_tls_cert: str | None, nbd_tls_key: str | None,
          nbd_tls_client_ca: str | None, nbd_tls_clients: str | None, nbd_max_connections: int,
          aim_stream_timeout: float) -> int:
    """Serve the control API, NBD exports and the AIM port of a node root until SIGTERM."""
    # imported here: aiohttp is heavy, only the node process needs it
    from engine.serve import nbdtls, server
    nbd_tls = nbdtls.configure(nbd_tls_mode, nbd_tls_cert, nbd_tls_key, nbd_tls_client_ca, nbd_tls_clients)
    return server.run(node_root or target.root, api, nbd, aim, serve_token_file or target.token_file,
                      aim_tls_cert, aim_tls_key, api_tls_cert, api_tls_key, insecure_http, nbd_tls,
                      nbd_max_connections, aim_stream_timeout)


@node.group()
def token() -> None:
    """API tokens with roles: read < operator < admin (an admin token is needed)."""


@token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES))
@json_option
@pass_target
def token_create(target, name: str, role: str, as_json: bool) -> int:
    """Make a token; it is printed this once (the node keeps only its hash)."""
    with target.node() as n:
        made = n.access.create_token(name, role)
    if as_json:
        print_json(made)
    else:
        click.echo(f"token {made['name']} (role {made['role']}), shown only now: keep it in a file of mode 0600\n"
                   f"{made['token']}")
    return 0


@token.command("list")
@json_option
@pass_target
def token_list(target, as_json: bool) -> int:
    """The tokens made at the node (names, roles, when), never the tokens."""
    with target.node() as n:
        rows = n.access.list_tokens()
    if as_json:
        print_json(rows)
    else:
        print_table(rows, [("name", "NAME"), ("role", "ROLE"), ("created_at", "CREATED")], empty="no tokens made")
    return 0


@token.command("revoke")
@click.argument("name")
@pass_target
def token_revoke(target, name: str) -> int:
    """Revoke a token: refused (401) from the next request on."""
    with target.node() as n:
        n.access.revoke_token(name)
    click.echo(f"revoked token {name}")
    return 0


@node.command("audit")
@click.option("--since", default=None, help="How far back (24h, 7d) or an ISO time.")
@click.option("--limit", default=1000, show_default=True, type=click.IntRange(1, 100000))
@json_option
@pass_target
def audit(target, since: str | None, limit: int, as_json: bool) -> int:
    """Every state-changing request to the node's control API: who, what, when, from where, result."""
    with target.node() as n:
        rows = n.access.audit(_since(since), limit)
    if as_json:
        print_json(rows)
    else:
        print_table([{**r, "what": f"{r['method']} {r['path']}", "result": r["status"]} for r in rows],
                    [("at", "AT"), ("token", "TOKEN"), ("role", "ROLE"), ("remote", "FROM"), ("what", "WHAT"),
                     ("result", "RESULT"), ("error", "WHY")], empty="no state-changing request recorded")
    return 0


def _since(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return iso(datetime.now(timezone.utc) - timedelta(seconds=parse_duration(text)))
    except DurationError:
        try:
            return iso(datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc))
        except ValueError:
            raise click.BadParameter(f"{text!r}: write a duration (24h, 7d) or an ISO time", param_hint="--since")

"""``aimsnap node serve``: run a storage node."""

import click


@click.group()
def node() -> None:
    """Run a storage node."""


@node.command("serve")
@click.option("--root", "node_root", default=None, type=click.Path(file_okay=False),
              help="The node root directory [default: the global --root].")
@click.option("--api", default="127.0.0.1:7410", show_default=True, help="Control API address (port 0: any free port).")
@click.option("--nbd", default="127.0.0.1:10809", show_default=True, help="NBD address.")
@click.option("--aim", default="127.0.0.1:7411", show_default=True, help="AIM replication address.")
@click.option("--token-file", "serve_token_file", default=None, type=click.Path(dir_okay=False),
              help="API token file; created with a random token (mode 0600) if absent [default: ROOT/api.token].")
@click.option("--aim-tls-cert", default=None, type=click.Path(dir_okay=False), help="Serve the AIM port over TLS.")
@click.option("--aim-tls-key", default=None, type=click.Path(dir_okay=False), help="The certificate's key.")
@click.pass_obj
def serve(target, node_root: str | None, api: str, nbd: str, aim: str, serve_token_file: str | None,
          aim_tls_cert: str | None, aim_tls_key: str | None) -> int:
    """Serve the control API, NBD exports and the AIM port of a node root until SIGTERM."""
    from engine.serve import server  # aiohttp is heavy: only the node process needs it
    return server.run(node_root or target.root, api, nbd, aim, serve_token_file or target.token_file,
                      aim_tls_cert, aim_tls_key)

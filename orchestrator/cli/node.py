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
@click.pass_obj
def serve(target, node_root: str | None, api: str, nbd: str, aim: str, serve_token_file: str | None,
          aim_tls_cert: str | None, aim_tls_key: str | None, nbd_tls_mode: str, nbd_tls_cert: str | None,
          nbd_tls_key: str | None, nbd_tls_client_ca: str | None, nbd_tls_clients: str | None) -> int:
    """Serve the control API, NBD exports and the AIM port of a node root until SIGTERM."""
    # imported here: aiohttp is heavy, only the node process needs it
    from engine.serve import nbdtls, server
    nbd_tls = nbdtls.configure(nbd_tls_mode, nbd_tls_cert, nbd_tls_key, nbd_tls_client_ca, nbd_tls_clients)
    return server.run(node_root or target.root, api, nbd, aim, serve_token_file or target.token_file,
                      aim_tls_cert, aim_tls_key, nbd_tls)

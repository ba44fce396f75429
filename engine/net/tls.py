"""TLS contexts for the node's channels (today the AIM port; the same rules for every channel)."""

import ssl


def client_tls(ca_file: str) -> ssl.SSLContext:
    """Trust exactly the destination's certificate authority (or self-signed certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False  # the pinned CA is the identity; AIM ports are often addressed by IP
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca_file)
    return ctx


def server_tls(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx

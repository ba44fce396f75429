"""TLS contexts for the node's channels (the AIM port and NBD; the same rules for every channel:
TLS 1.2 or later, certificates from PEM files)."""

import ssl

from ..errors import InvalidInput
from .secretfile import check_private


def plaintext_peer(e: ssl.SSLError) -> bool:
    """Whether a client's TLS handshake failed because the peer answered in plain text (a port
    serving no TLS): OpenSSL's "wrong version number"."""
    return e.reason == "WRONG_VERSION_NUMBER" or "wrong version" in str(e).lower()


def leaf_certificate(pem: str) -> str | None:
    """The first certificate of a PEM file (a server's own, in a chain file), and nothing else:
    what a peer may pin. Never an intermediate (pinned, it would trust whatever it signs) nor a
    private key (a combined cert+key file)."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    start = pem.find(begin)
    stop = pem.find(end, start)
    if start < 0 or stop < 0:
        return None
    return pem[start:stop + len(end)] + "\n"


def client_tls(ca_file: str | None = None, *, pem: str | None = None, check_hostname: bool = False) -> ssl.SSLContext:
    """Trust exactly the peer's certificate authority, or the peer's own certificate (self-signed
    or not: a pinned certificate is a trust anchor by itself, OpenSSL's partial-chain rule), from
    a file or PEM text."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = check_hostname  # AIM: the pinned CA is the identity (ports are often addressed by IP)
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.load_verify_locations(ca_file, cadata=pem)
    return ctx


def server_tls(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def require_client_certificates(ctx: ssl.SSLContext, ca_file: str) -> None:
    """Make a server context refuse, at the handshake, a client without a certificate signed by
    ``ca_file`` (the certificate's subject is then the client's identity)."""
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(ca_file)


def common_names(cert: dict | None) -> tuple[str, ...]:
    """The subject commonName(s) of a peer certificate as ``SSLSocket.getpeercert()`` gives it."""
    return tuple(value for rdn in (cert or {}).get("subject", ()) for key, value in rdn if key == "commonName")


def load_server_tls(cert: str | None, key: str | None, what: str, flag: str) -> ssl.SSLContext | None:
    """A server TLS context from ``--FLAG-tls-cert/--FLAG-tls-key``, or None; a clear error now,
    at start, for a missing half, a key others may read, or files that do not load."""
    if bool(cert) != bool(key):
        raise InvalidInput(f"TLS on the {what} needs both --{flag}-tls-cert and --{flag}-tls-key")
    if not cert or not key:
        return None
    check_private(key, f"the {what}'s TLS key file")
    try:
        return server_tls(cert, key)
    except (OSError, ValueError, ssl.SSLError) as e:
        raise InvalidInput(f"cannot load the {what}'s TLS certificate or key: {e}") from None

"""NBD over TLS (``NBD_OPT_STARTTLS``, as nbdkit and qemu-nbd do it): the node's TLS policy for
the NBD port, and the start of TLS on one connection.

Modes (``node serve --nbd-tls``): ``off`` (STARTTLS is unsupported), ``on`` (the protocol's
SELECTIVETLS with every export available both ways: a client may start TLS, a plain client is
served) and ``require`` (FORCEDTLS: every option but STARTTLS and ABORT is refused with
``NBD_REP_ERR_TLS_REQD`` until TLS is up, and ``NBD_OPT_EXPORT_NAME`` closes the connection).

Client certificates (``require`` only, since a plain client would bypass them under ``on``):
with a client CA the TLS handshake fails without a certificate it signed; with a clients map, a
JSON object from a certificate's subject CN to the exports it may open (``fnmatch`` globs)::

    {"host1.example": ["db01", "erp*"], "backup.example": ["*"]}

an export the map does not give the connection's certificate is answered as if it did not exist
(``NBD_REP_ERR_UNKNOWN``, left out of ``NBD_OPT_LIST``): a client learns nothing of exports it may
not open. A CN the map does not name opens nothing.
"""

import fnmatch
import json
import socket
import ssl
from dataclasses import dataclass

from ..errors import InvalidInput
from ..net.secretfile import check_private
from ..net.tls import common_names, require_client_certificates, server_tls

MODES = ("off", "on", "require")
HANDSHAKE_TIMEOUT = 30.0


class TlsFailed(Exception):
    """The TLS handshake on one connection failed: close that connection."""


@dataclass(frozen=True)
class NbdTls:
    mode: str  # "on" or "require"
    context: ssl.SSLContext
    clients: dict[str, tuple[str, ...]] | None = None  # CN -> export globs; None: every export
    handshake_timeout: float = HANDSHAKE_TIMEOUT

    @property
    def required(self) -> bool:
        return self.mode == "require"

    def start(self, conn: socket.socket) -> ssl.SSLSocket:
        """TLS on ``conn`` (after the ACK to STARTTLS). The handshake is bounded: a client that
        starts TLS and stalls must not hold its thread; the TLS socket is blocking afterwards,
        as the transmission phase expects."""
        conn.settimeout(self.handshake_timeout)
        try:
            tls = self.context.wrap_socket(conn, server_side=True)
        except TimeoutError:
            raise TlsFailed(f"TLS handshake failed: no handshake within {self.handshake_timeout:g} s") from None
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise TlsFailed(f"TLS handshake failed: {e}") from None
        tls.settimeout(None)
        return tls

    def may_open(self, conn: socket.socket, name: str) -> bool:
        """Whether the client on ``conn`` may see and open export ``name`` (the clients map)."""
        if self.clients is None:
            return True
        cns = common_names(conn.getpeercert()) if isinstance(conn, ssl.SSLSocket) else ()
        return any(fnmatch.fnmatchcase(name, glob) for cn in cns for glob in self.clients.get(cn, ()))


def configure(mode: str, cert: str | None, key: str | None, client_ca: str | None = None,
              clients_file: str | None = None) -> NbdTls | None:
    """The NBD TLS policy from ``node serve``'s options, every file loaded now (None: ``off``);
    InvalidInput, naming the option or file, for anything that would not work."""
    if mode not in MODES:
        raise InvalidInput(f"invalid --nbd-tls {mode!r}: write off, on or require")
    given = [f"--nbd-tls-{name}" for name, value in (("cert", cert), ("key", key), ("client-ca", client_ca),
                                                      ("clients", clients_file)) if value]
    if mode == "off":
        if given:
            raise InvalidInput(f"{', '.join(given)} given but --nbd-tls is off: add --nbd-tls on or require")
        return None
    if not cert or not key:
        raise InvalidInput(f"--nbd-tls {mode} needs both --nbd-tls-cert and --nbd-tls-key (PEM files)")
    if (client_ca or clients_file) and mode != "require":
        raise InvalidInput("--nbd-tls-client-ca and --nbd-tls-clients need --nbd-tls require "
                           "(with 'on', a plain client would bypass them)")
    if clients_file and not client_ca:
        raise InvalidInput("--nbd-tls-clients needs --nbd-tls-client-ca (a client's CN is trusted only "
                           "from a certificate that CA signed)")
    for option, path in (("cert", cert), ("key", key), ("client-ca", client_ca)):
        _readable(option, path)
    check_private(key, "--nbd-tls-key")
    try:
        ctx = server_tls(cert, key)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise InvalidInput(f"--nbd-tls-key {key} is not the key of --nbd-tls-cert {cert}") from None
        raise InvalidInput(f"cannot load --nbd-tls-cert {cert} and --nbd-tls-key {key}: they must be a PEM "
                           f"certificate (chain) and its unencrypted PEM private key ({e})") from None
    if client_ca:
        try:
            require_client_certificates(ctx, client_ca)
        except ssl.SSLError as e:
            raise InvalidInput(f"cannot load --nbd-tls-client-ca {client_ca}: it must hold PEM CA "
                               f"certificates ({e})") from None
    return NbdTls(mode, ctx, load_clients(clients_file) if clients_file else None)


def _readable(option: str, path: str | None) -> None:
    """Name the file that cannot be read (OpenSSL's own errors do not)."""
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise InvalidInput(f"cannot read --nbd-tls-{option} {path}: {e.strerror}") from None


def load_clients(path: str) -> dict[str, tuple[str, ...]]:
    """The clients map file: ``{"CN": ["export or glob", ...], ...}``."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except OSError as e:
        raise InvalidInput(f"cannot read the NBD TLS clients map {path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidInput(f"the NBD TLS clients map {path} is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"the NBD TLS clients map {path} must be a JSON object of certificate CN to a list "
                           'of exports, e.g. {"host1.example": ["db01", "erp*"]}')
    for cn, globs in raw.items():
        if not isinstance(globs, list) or not all(isinstance(g, str) and g for g in globs):
            raise InvalidInput(f"the NBD TLS clients map {path}: {cn!r} must map to a list of export names or "
                               "globs (non-empty strings)")
    return {cn: tuple(globs) for cn, globs in raw.items()}

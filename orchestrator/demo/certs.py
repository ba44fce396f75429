"""A private certificate authority made with the ``openssl`` command: what the demo serves its
nodes' HTTPS control APIs with, and the tests' TLS channels (API, AIM, NBD). Keys are written
mode 0600 (aimsnap refuses any other)."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass


class CertsUnavailable(RuntimeError):
    """No ``openssl`` command on this machine."""


@dataclass(frozen=True)
class Pem:
    cert: str
    key: str


def _openssl(*args: str) -> None:
    if not shutil.which("openssl"):
        raise CertsUnavailable("no openssl command (Debian: apt-get install openssl)")
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def make_ca(directory: str, name: str = "ca", cn: str = "aimsnap test CA") -> Pem:
    """A self-signed CA certificate (``NAME-cert.pem``) and its key (``NAME-key.pem``)."""
    os.makedirs(directory, exist_ok=True)
    pem = Pem(os.path.join(directory, f"{name}-cert.pem"), os.path.join(directory, f"{name}-key.pem"))
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
             "-subj", f"/CN={cn}", "-keyout", pem.key, "-out", pem.cert,
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(pem.key, 0o600)
    return pem


def make_cert(directory: str, ca: Pem, name: str, cn: str, *, client: bool = False,
              hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Pem:
    """A certificate signed by ``ca``: for a server (``hosts`` as subjectAltNames) or a client."""
    pem = Pem(os.path.join(directory, f"{name}-cert.pem"), os.path.join(directory, f"{name}-key.pem"))
    csr, ext = os.path.join(directory, f"{name}.csr"), os.path.join(directory, f"{name}.ext")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={cn}",
             "-keyout", pem.key, "-out", csr)
    os.chmod(pem.key, 0o600)
    sans = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    with open(ext, "w") as f:
        f.write("basicConstraints=CA:FALSE\n"
                + ("extendedKeyUsage=clientAuth\n" if client else f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n"))
    _openssl("x509", "-req", "-in", csr, "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial", "-days", "3650",
             "-out", pem.cert, "-extfile", ext)
    return pem

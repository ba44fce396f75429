"""Secret files (API tokens, TLS keys, SMTP passwords, webhook tokens): refused when the group or
others may read or write them, as ssh refuses a private key with such a mode, so that a secret
left world-readable by an ``echo > file`` is found on the first start, not after a breach."""

from __future__ import annotations

import os
import stat

from ..errors import InvalidInput


def _check_mode(path: str, what: str, mode: int) -> None:
    if stat.S_IMODE(mode) & 0o077:
        raise InvalidInput(f"{what} {path} has mode {stat.S_IMODE(mode):04o}: a secret must not be readable or "
                           f"writable by the group or others (chmod 600 {path})")


def check_private(path: str, what: str) -> None:
    """Raise :class:`InvalidInput` naming the file and its mode unless only its owner may use it
    (a file another program reads by name: a TLS key)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise InvalidInput(f"cannot read {what} {path}: {e.strerror}") from None
    _check_mode(path, what, mode)


def read_secret(path: str, what: str) -> str:
    """The file's text, if only its owner may use it: the mode of the file opened is checked
    (no window between the check and the read; a symlink, as Kubernetes mounts secrets, is
    judged by the file it names)."""
    try:
        with open(path) as f:
            _check_mode(path, what, os.fstat(f.fileno()).st_mode)
            return f.read()
    except OSError as e:
        raise InvalidInput(f"cannot read {what} {path}: {e.strerror}") from None

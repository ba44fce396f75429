"""Secret files (API tokens, TLS keys, SMTP passwords, webhook tokens): refused when the group or
others may read or write them, as ssh refuses a private key with such a mode, so that a secret
left world-readable by an ``echo > file`` is found on the first start, not after a breach."""

from __future__ import annotations

import os
import stat

from ..errors import InvalidInput


def check_private(path: str, what: str) -> None:
    """Raise :class:`InvalidInput` naming the file and its mode unless only its owner may use it."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise InvalidInput(f"cannot read {what} {path}: {e.strerror}") from None
    if stat.S_IMODE(mode) & 0o077:
        raise InvalidInput(f"{what} {path} has mode {stat.S_IMODE(mode):04o}: a secret must not be readable or "
                           f"writable by the group or others (chmod 600 {path})")


def read_secret(path: str, what: str) -> str:
    """The file's text once :func:`check_private` passes."""
    check_private(path, what)
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        raise InvalidInput(f"cannot read {what} {path}: {e.strerror}") from None

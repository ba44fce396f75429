"""The engine's error types.

Every error carries one line for the operator. The class says who is at fault, which is what
the CLI turns into an exit code and the control API into an HTTP status.
"""


class EngineError(Exception):
    """The operation failed; nothing was changed (exit code 1)."""

    exit_code = 1
    http_status = 409


class InvalidInput(EngineError):
    """The request itself is wrong: bad name, bad size, out-of-range IO (exit code 2)."""

    exit_code = 2
    http_status = 400


class NotFound(EngineError):
    """A named volume, snapshot, point in time or snapshot set does not exist."""

    http_status = 404


class AlreadyExists(EngineError):
    """The name is taken."""

    http_status = 409


class Conflict(EngineError):
    """The state of the node does not allow the operation (in use, read-only, incomplete)."""

    http_status = 409


class Forbidden(EngineError):
    """The token's role does not allow the operation (HTTP 403; exit code 1)."""

    http_status = 403

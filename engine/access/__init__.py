"""Who may do what on a node: API tokens with roles, and the audit trail of every state-changing
request. The node's own token file (``node serve --token-file``) is the ``admin`` token named
``node-token``; more tokens are made with ``node token create NAME --role ROLE``.

Roles, each including the ones before it:

- ``read``: every GET of the control API but the data of volumes and points, and ``/metrics``;
- ``operator``: what a scheduler and a DR operator do: markers, enables, point deletion
  (retention), clones, restores, verifies, pause/resume, failover/failback/switchover, and data;
- ``admin``: everything, creating and deleting volumes, snapshots, AIM sets and groups, tokens
  and the audit trail included.
"""

from .access import Access
from .roles import NODE_TOKEN, ROLES, allows

__all__ = ["Access", "NODE_TOKEN", "ROLES", "allows"]

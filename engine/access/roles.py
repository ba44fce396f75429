"""The roles, in the order of what they may do (each includes the ones before it)."""

ROLES = ("read", "operator", "admin")
NODE_TOKEN = "node-token"  # the name of the node's own token file, always admin


def allows(have: str, need: str) -> bool:
    return ROLES.index(have) >= ROLES.index(need)

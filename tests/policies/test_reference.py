"""The README's policy reference is checked against the schema: every key is described."""

import os
import re

from policies.schema import schema


def _keys(node, out):
    if isinstance(node, dict):
        for k, v in node.get("properties", {}).items():
            out.add(k)
            _keys(v, out)
        for v in node.values():
            if isinstance(v, (dict, list)):
                _keys(v, out)
    elif isinstance(node, list):
        for v in node:
            _keys(v, out)
    return out


def test_every_schema_key_is_in_the_readme():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    section = readme[readme.index("## Policies"):readme.index("## CLI reference")]
    missing = sorted(k for k in _keys(schema(), set()) if not re.search(rf"`[^`]*\b{re.escape(k)}\b", section))
    assert not missing, f"README policy reference lacks: {missing}"

"""The loader's two paths (fast: no positions; careful: every position) must agree on the data,
and a position found on demand must be the one the careful path records."""

import glob
import os

import yaml
from hypothesis import given
from hypothesis import strategies as st

from policies.loader import _load_careful, load_text

EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "policies", "examples", "*.yaml")))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.text(max_size=12),
                    st.floats(allow_nan=False, allow_infinity=False))
plain = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(min_size=1, max_size=8), inner,
                                                                      max_size=4)), max_leaves=20)


def test_examples_agree():
    for path in EXAMPLES:
        text = open(path).read()
        fast, problems = load_text(path, text)
        careful, careful_problems = _load_careful(path, text)
        assert problems == careful_problems == []
        assert fast._values is None, "a valid file should take the fast path"
        assert fast.data == careful.data
        for where_path in list(careful.values)[::7]:
            assert fast.where(where_path) == careful.where(where_path)


@given(st.dictionaries(st.text(min_size=1, max_size=8), plain, min_size=1, max_size=5))
def test_random_documents_agree(doc):
    text = yaml.safe_dump(doc, sort_keys=False)
    fast, problems = load_text("f.yaml", text)
    careful, careful_problems = _load_careful("f.yaml", text)
    assert problems == careful_problems
    assert fast.data == careful.data


def test_what_the_fast_path_refuses_reaches_the_careful_one():
    for text, message in (("a: 1\na: 2\n", "duplicate key"), ("x: &b {k: 1}\ny: {<<: *b}\n", "mapping key"),
                          ("a: !!python/object:os.system {}\n", "unsupported YAML tag"),
                          ("when: 2026-12-24\n", "unsupported YAML tag"), ("{1: a}\n", None)):
        doc, problems = load_text("f.yaml", text)
        if message:
            assert problems and message in problems[0].message, (text, problems)
            assert problems[0].where.line >= 1

"""Read YAML policy files into plain data plus the position of every value.

Only plain YAML is accepted (no ``!!python/object``, no custom tags, no merge keys, no duplicate
keys). Two paths give the same data: the fast one lets libyaml and a strict constructor build the
values and records no positions; the careful one composes the node graph (with marks) and builds
every value itself, keeping each key's and value's line and column. A file takes the careful path
when the fast one meets anything it would have to report, and a valid file only when something
asks where one of its values is (a warning, a later error): most valid files never need positions,
and composing with marks costs twice the load.
"""

import functools
from dataclasses import dataclass

import yaml

from .errors import Problem, Where, json_path

_PLAIN = {"tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
          "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"}
_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml composes nodes, with marks, much faster


class _NeedsPositions(Exception):
    """The fast path met something the careful path reports with its position."""


def _refuse(loader: yaml.BaseLoader, node: yaml.Node) -> object:
    raise _NeedsPositions


def _mapping(loader: yaml.BaseLoader, node: yaml.Node) -> dict:
    out: dict = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _PLAIN or key_node.value == "<<" \
                or key_node.value in out:
            raise _NeedsPositions
        out[key_node.value] = loader.construct_object(value_node, deep=True)
    return out


class _StrictLoader(_LOADER):  # type: ignore[misc, valid-type]
    """libyaml's parser with a constructor that builds exactly what :func:`_build` would, or gives up."""

    yaml_constructors = {tag: _LOADER.yaml_constructors[tag] for tag in _PLAIN}
    yaml_constructors[_MAP] = _mapping
    yaml_constructors[_SEQ] = lambda loader, node: [loader.construct_object(n, deep=True) for n in node.value]
    yaml_constructors[None] = _refuse
    yaml_multi_constructors: dict = {}


@dataclass
class Document:
    """One policy file: its data, and where each value (and each mapping key) is (found on demand)."""

    file: str
    data: object = None
    text: str | None = None  # kept until positions are needed
    _values: dict[tuple, Where] | None = None
    _keys: dict[tuple, Where] | None = None

    @property
    def values(self) -> dict[tuple, Where]:
        self._locate()
        return self._values  # type: ignore[return-value]

    @property
    def keys(self) -> dict[tuple, Where]:
        self._locate()
        return self._keys  # type: ignore[return-value]

    def _locate(self) -> None:
        if self._values is None:
            self._values, self._keys = {}, {}
            if self.text is not None:
                node = yaml.compose(self.text, Loader=_LOADER)  # loaded before: it composes
                _build(self, node, (), [], yaml.SafeLoader(""))
                self.text = None

    def lazy_where(self, path: tuple, key: bool = False) -> "LazyWhere":
        return LazyWhere(self, path, key)

    def where(self, path: tuple, key: bool = False) -> Where:
        """The position of the value at ``path`` (or of its key), else of the nearest parent."""
        table = self.keys if key else self.values
        while path:
            if path in table:
                return table[path]
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), Where(self.file, 1, 1))


def load_file(path: str) -> tuple[Document, list[Problem]]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        return Document(path), [Problem(Where(path, 0, 0), f"cannot read the file: {getattr(e, 'strerror', None) or e}")]
    return load_text(path, text)


class LazyWhere:
    """A position that is looked up only when printed: the model keeps one per policy and resource."""

    def __init__(self, doc: Document, path: tuple, key: bool) -> None:
        self.doc, self.path, self.key = doc, path, key

    @functools.cached_property
    def resolved(self) -> Where:
        return self.doc.where(self.path, self.key)

    file = property(lambda self: self.resolved.file)
    line = property(lambda self: self.resolved.line)
    col = property(lambda self: self.resolved.col)

    def __str__(self) -> str:
        return str(self.resolved)

    def __repr__(self) -> str:
        return f"LazyWhere({self.resolved!s})"


def load_text(name: str, text: str) -> tuple[Document, list[Problem]]:
    try:
        docs = list(yaml.load_all(text, Loader=_StrictLoader))
    except (_NeedsPositions, yaml.YAMLError):
        docs = []
    if len(docs) == 1 and docs[0] is not None:
        return Document(name, docs[0], text), []
    return _load_careful(name, text)


def _load_careful(name: str, text: str) -> tuple[Document, list[Problem]]:
    doc = Document(name, _values={}, _keys={})
    try:
        nodes = list(yaml.compose_all(text, Loader=_LOADER))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = Where(name, mark.line + 1, mark.column + 1) if mark else Where(name, 1, 1)
        return doc, [Problem(where, f"YAML syntax error: {e.problem or e.context}")]
    except yaml.YAMLError as e:
        return doc, [Problem(Where(name, 1, 1), f"YAML error: {e}")]
    if len(nodes) != 1 or nodes[0] is None:
        return doc, [Problem(Where(name, 1, 1), "a policy file holds exactly one YAML document"
                             if len(nodes) > 1 else "the file is empty: write at least `version: 1`")]
    problems: list[Problem] = []
    doc.data = _build(doc, nodes[0], (), problems, yaml.SafeLoader(""))
    return doc, problems


def _build(doc: Document, node: yaml.Node, path: tuple, problems: list[Problem], loader: yaml.SafeLoader) -> object:
    where = Where(doc.file, node.start_mark.line + 1, node.start_mark.column + 1)
    doc.values[path] = where
    if isinstance(node, yaml.MappingNode):
        if node.tag != _MAP:
            problems.append(Problem(where, f"unsupported YAML tag {node.tag!r}", json_path(path)))
        out: dict = {}
        for key_node, value_node in node.value:
            kwhere = Where(doc.file, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _PLAIN:
                problems.append(Problem(kwhere, "a mapping key must be a plain string", json_path(path)))
                continue
            key = key_node.value
            if key == "<<":
                problems.append(Problem(kwhere, "YAML merge keys (<<) are not supported: write the keys out",
                                        json_path(path)))
                continue
            if key in out:
                problems.append(Problem(kwhere, f"duplicate key {key!r} (first at line {doc.keys[path + (key,)].line})",
                                        json_path(path)))
                continue
            doc.keys[path + (key,)] = kwhere
            out[key] = _build(doc, value_node, path + (key,), problems, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        if node.tag != _SEQ:
            problems.append(Problem(where, f"unsupported YAML tag {node.tag!r}", json_path(path)))
        return [_build(doc, item, path + (i,), problems, loader) for i, item in enumerate(node.value)]
    if node.tag not in _PLAIN:
        problems.append(Problem(where, f"unsupported YAML tag {node.tag!r}: only plain strings, numbers, "
                                       "booleans and null are allowed", json_path(path)))
        return None
    return loader.construct_object(node)

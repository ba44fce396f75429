"""Read YAML policy files into plain data plus the position of every value.

PyYAML composes the node graph (with marks); we build the Python values ourselves so that every
key and value keeps its line and column, duplicate keys are caught, and only plain YAML types are
accepted (no ``!!python/object``, no custom tags).
"""

from dataclasses import dataclass, field

import yaml

from .errors import Problem, Where, json_path

_PLAIN = {"tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
          "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"}
_MAP, _SEQ = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml composes nodes, with marks, much faster


@dataclass
class Document:
    """One policy file: its data, and where each value (and each mapping key) is."""

    file: str
    data: object = None
    values: dict[tuple, Where] = field(default_factory=dict)
    keys: dict[tuple, Where] = field(default_factory=dict)

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


def load_text(name: str, text: str) -> tuple[Document, list[Problem]]:
    doc = Document(name)
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

"""The JSON Schema of the policy language, and schema errors turned into operator messages."""

import difflib
import json
from functools import cache
from importlib import resources

import fastjsonschema
import jsonschema

from .errors import Problem, json_path
from .loader import Document

_TYPES = {"string": "a string", "integer": "a whole number", "number": "a number", "object": "a mapping",
          "array": "a list", "boolean": "true or false", "null": "null"}


@cache
def schema() -> dict:
    return json.loads(resources.files("policies").joinpath("schema.json").read_text())


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema())


@cache
def _fast():
    """The same schema compiled to Python by fastjsonschema: a quick yes for valid files. It
    reads the schema as draft 7, which covers every keyword the schema uses."""
    return fastjsonschema.compile({**schema(), "$schema": "http://json-schema.org/draft-07/schema#"})


def schema_problems(doc: Document) -> list[Problem]:
    try:
        _fast()(doc.data)
        return []
    except fastjsonschema.JsonSchemaException:
        pass  # explain every error, with positions, the thorough way
    out: list[Problem] = []
    for error in _validator().iter_errors(doc.data):
        out.extend(_explain(doc, error))
    return out


def _leaves(error: jsonschema.ValidationError):
    """The most specific errors: an ``if/then`` or ``$ref`` failure is explained by its context."""
    if error.context:
        for sub in error.context:
            yield from _leaves(sub)
    else:
        yield error


def _explain(doc: Document, error: jsonschema.ValidationError) -> list[Problem]:
    path = tuple(error.absolute_path)
    where = doc.where(path)
    v, inst, sch = error.validator, error.instance, error.schema
    if v == "additionalProperties" and isinstance(inst, dict):
        allowed = sorted(sch.get("properties", {}))
        out = []
        for key in inst:
            if key in allowed:
                continue
            hint = difflib.get_close_matches(key, allowed, n=1)
            msg = f"unknown key {key!r}" + (f": did you mean {hint[0]!r}?" if hint else
                                            f" (allowed: {', '.join(allowed)})")
            out.append(Problem(doc.where(path + (key,), key=True), msg, json_path(path + (key,))))
        return out
    if v == "required":
        missing = [r for r in sch["required"] if isinstance(inst, dict) and r not in inst]
        kind = inst.get("kind") if isinstance(inst, dict) else None
        owner = f"a {kind} policy" if kind and "kind" not in missing and path[:1] == ("policies",) else "this entry"
        return [Problem(where, f"{owner} needs {m!r}", json_path(path)) for m in missing]
    if v == "const" and path == ("version",):
        return [Problem(where, f"unsupported version {inst!r}: this aimsnap reads version 1", json_path(path))]
    if v == "enum":
        options = ", ".join(str(o) for o in sch["enum"])
        hint = difflib.get_close_matches(str(inst), [str(o) for o in sch["enum"]], n=1)
        return [Problem(where, f"{inst!r} is not one of: {options}" + (f" (did you mean {hint[0]!r}?)" if hint else ""),
                        json_path(path))]
    if v == "pattern":
        what = sch.get("description") or f"the pattern {sch['pattern']}"
        return [Problem(where, f"invalid value {inst!r}: expected {what}", json_path(path))]
    if v == "type":
        want = sch["type"] if isinstance(sch["type"], list) else [sch["type"]]
        return [Problem(where, f"expected {' or '.join(_TYPES.get(t, t) for t in want)}, got {_kind(inst)}",
                        json_path(path))]
    if v == "minItems":
        return [Problem(where, f"expected at least {sch['minItems']} item(s), got {len(inst)}", json_path(path))]
    if v in ("minProperties", "maxProperties"):  # the one-of-a-kind mappings: a plan's members
        keys = " or ".join(f"`{k}: NAME`" for k in sorted(sch.get("properties", {})))
        return [Problem(where, f"an entry here is exactly one of {keys}", json_path(path))]
    if v in ("minimum", "maximum", "minLength", "maxLength"):
        return [Problem(where, f"{inst!r}: {error.message.split(' is ', 1)[-1]}", json_path(path))]
    return [Problem(where, error.message, json_path(path))]


def _kind(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "nothing (null)"}.get(type(value), type(value).__name__)

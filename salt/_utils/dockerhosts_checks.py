"""
The checker kit: every problem of an input at once, each with its full key path and, for an
unknown key or value, the nearest known one (``__utils__["dockerhosts_checks.<function>"]``;
the formula's pillar check, the swarm validator and the runners share it).

- ``validate(value, schema, path)``: the problems of ``value`` against a schema written as data
  (a YAML/JSON file next to what it checks) in a subset of JSON Schema (draft 2020-12):
  ``type``, ``enum``, ``const``, ``pattern``, ``minimum``/``maximum``,
  ``minLength``/``maxLength``, ``minItems``, ``min/maxProperties``, ``properties``, ``required``,
  ``dependentRequired``, ``additionalProperties``, ``propertyNames``, ``items``, ``anyOf``,
  ``not``, ``$ref`` to ``#/$defs/...``. ``description`` is how a value that does not fit is
  named in the message; ``writeOnly: true`` (a secret) keeps the value itself out of it.
  Why not the jsonschema package: Salt does not ship it, and the check runs at a fresh node's
  first render, before anything is installed (its current releases also need a Rust
  extension, rpds-py). The tests run every schema through jsonschema as well
  (tests/unit/test_bad_pillars.py): both give the same verdict on the whole corpus.
- ``unknown``, ``describe``, ``suggestion``: message parts for checks written in Python.
- ``refusal``: the one error that lists every problem.

A problem is ``"<key path>: <what is wrong>"``; key paths join keys with ``:``, as Salt's
``pillar.get`` does.
"""

import difflib
import re

# JSON Schema's types: the Python types of each, and how a message names it.
TYPES = {
    "string": (str, "a string"),
    "integer": (int, "a whole number"),
    "number": ((int, float), "a number"),
    "boolean": (bool, "true or false"),
    "object": (dict, "a mapping"),
    "array": (list, "a list"),
    "null": (type(None), "null"),
}
# How each kind of value reads in a message (bool before int: True is an int).
_DESCRIPTIONS = (
    (bool, lambda value: f"the boolean {str(value).lower()}"),
    ((int, float), lambda value: f"the number {value!r}"),
    (str, lambda value: f"the string {value[:80]!r}"),
    (list, lambda value: "a list"),
    (dict, lambda value: "a mapping"),
)


def describe(value, secret=False):
    """How a value reads in a message; ``secret``: its kind only."""
    if value is None:
        return "null"
    if secret:
        return f"a {type(value).__name__} value"
    for kinds, text in _DESCRIPTIONS:
        if isinstance(value, kinds):
            return text(value)
    return type(value).__name__


def suggestion(word, candidates, cutoff=0.6):
    """`` (did you mean x?)`` with the nearest candidate, or an empty string; ties go to the
    candidate listed first."""
    scored = []
    for index, candidate in enumerate(str(c) for c in candidates):
        ratio = difflib.SequenceMatcher(None, str(word), candidate).ratio()
        if ratio >= cutoff:
            scored.append((-ratio, index, candidate))
    return f" (did you mean {min(scored)[2]}?)" if scored else ""


def unknown(path, key, known):
    """The problem of an unknown key ``key`` under ``path``."""
    return f"{path}:{key}: unknown key{suggestion(key, known)}"


def refusal(problems, what="bad pillar"):
    """The text of the error that refuses an input for all its ``problems``."""
    return f"{what}, nothing was changed:\n  " + "\n  ".join(problems)


def validate(value, schema, path, root=None):
    """Every problem of ``value`` against ``schema`` (``root``: where ``$ref`` looks)."""
    problems = []
    _check(value, schema, path, root if root is not None else schema, problems)
    return problems


def _target(schema, root):
    """What a ``$ref`` schema refers to (``#/$defs/<name>``), itself otherwise."""
    while "$ref" in schema and len(schema) == 1:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _is_type(value, name):
    if isinstance(value, bool) and name in ("integer", "number"):
        return False
    return isinstance(value, TYPES[name][0]) and not (
        name == "integer" and isinstance(value, float)
    )


def _what(schema, types):
    return schema.get("description") or " or ".join(TYPES[name][1] for name in types)


def _check(value, schema, path, root, problems):
    schema = _target(schema, root)
    before = len(problems)
    if "$ref" in schema:  # with keywords beside it: both apply
        _check(value, {"$ref": schema["$ref"]}, path, root, problems)
        if len(problems) > before:
            return
    types = schema.get("type")
    types = [types] if isinstance(types, str) else types
    if types and not any(_is_type(value, name) for name in types):
        shown = describe(value, schema.get("writeOnly"))
        problems.append(f"{path}: must be {_what(schema, types)}, not {shown}")
        return
    for index, (keywords, check) in enumerate(KEYWORDS):
        if any(keyword in schema for keyword in keywords):
            check(value, schema, path, root, problems)
            if len(problems) > before and index < STOP_AFTER:
                return


def _enum(value, schema, path, root, problems):
    choices = schema["enum"]
    if not any(value == c and type(value) is type(c) for c in choices):
        shown = ", ".join(str(c) for c in choices)
        hint = suggestion(value, choices) if isinstance(value, str) else ""
        problems.append(f"{path}: {describe(value)} is not one of {shown}{hint}")


def _const(value, schema, path, root, problems):
    if value != schema["const"]:
        problems.append(f"{path}: must be {schema['const']!r}, not {describe(value)}")


def _pattern(value, schema, path, root, problems):
    if isinstance(value, str) and not re.search(schema["pattern"], value):
        what = schema.get("description") or f"matching {schema['pattern']}"
        shown = "the value" if schema.get("writeOnly") else repr(value[:80])
        problems.append(f"{path}: {shown} is not {what}")


def _range(value, schema, path, root, problems):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = schema.get("minimum"), schema.get("maximum")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"{low}..{high}" if None not in (low, high) else f"at least {low}"
        bounds = f"at most {high}" if low is None else bounds
        problems.append(f"{path}: {value} is out of range ({bounds})")


def _length(value, schema, path, root, problems):
    if isinstance(value, str):
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        if len(value) < low:
            problems.append(f"{path}: must not be empty" if low == 1 else f"{path}: too short")
        elif high is not None and len(value) > high:
            problems.append(f"{path}: longer than {high} characters")
    if isinstance(value, list) and len(value) < schema.get("minItems", 0):
        problems.append(f"{path}: needs at least {schema['minItems']} item(s)")
    low, high = schema.get("minProperties", 0), schema.get("maxProperties")
    if isinstance(value, dict) and (len(value) < low or (high is not None and len(value) > high)):
        problems.append(f"{path}: must have {low}..{high} key(s), not {len(value)}")


def _object(value, schema, path, root, problems):
    if not isinstance(value, dict):
        return
    known = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    names = schema.get("propertyNames")
    for key, item in value.items():
        where = f"{path}:{key}"
        if names is not None:
            _check(key, names, where, root, problems)
        if key in known:
            _check(item, known[key], where, root, problems)
        elif extra is False:
            problems.append(unknown(path, key, known))
        elif isinstance(extra, dict):
            _check(item, extra, where, root, problems)
    _required(value, schema, path, problems)


def _required(value, schema, path, problems):
    problems += [
        f"{path}:{key}: is missing" for key in schema.get("required", ()) if key not in value
    ]
    for key, needed in schema.get("dependentRequired", {}).items():
        for missing in [name for name in needed if key in value and name not in value]:
            problems.append(f"{path}:{missing}: is missing (needed with {key})")


def _items(value, schema, path, root, problems):
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, schema["items"], f"{path}:{index}", root, problems)


def _any_of(value, schema, path, root, problems):
    attempts = [validate(value, option, path, root) for option in schema["anyOf"]]
    if all(attempts):
        if schema.get("description"):
            problems.append(f"{path}: must be {schema['description']}, not {describe(value)}")
        else:  # the alternative that got furthest (its problem is deepest) says why
            problems.extend(max(attempts, key=lambda found: (found[0].count(":"), -len(found))))


def _not(value, schema, path, root, problems):
    if not validate(value, schema["not"], path, root):
        reason = _target(schema["not"], root).get("description", "is not allowed here")
        shown = f"{value!r} " if isinstance(value, str) and len(value) <= 80 else ""
        problems.append(f"{path}: {shown}{reason}")


# Each check runs once when its schema has any of its keywords, in this order; after one of
# the first seven found a problem, the rest would only repeat it.
KEYWORDS = (
    (("enum",), _enum),
    (("const",), _const),
    (("minLength", "maxLength", "minItems", "minProperties", "maxProperties"), _length),
    (("pattern",), _pattern),
    (("minimum", "maximum"), _range),
    (("anyOf",), _any_of),
    (("not",), _not),
    (
        ("properties", "additionalProperties", "propertyNames", "required", "dependentRequired"),
        _object,
    ),
    (("items",), _items),
)
STOP_AFTER = 7

"""Schema errors a person can read: the key, the problem and the config file, in the first line.

Snakemake's own `validate` reports a schema error followed by the whole schema (over a thousand
lines) and, for `oneOf`, a sentence no one can act on. `schema_problem` runs the same JSON schema
first (jsonschema, Draft 2020-12) and turns its most relevant error into one message:

    configs/bad.yaml: studies.iris.train.lr: '1e-3' is a string, not a number: YAML reads 1e-3 as
    text (a YAML float needs a dot and a signed exponent): write 1.0e-3 or 0.001

Torch-free and Snakemake-free (the workflow passes the files it read).
"""

from __future__ import annotations

import re

NUMERIC_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class ConfigError(ValueError):
    """A config value the schema refuses; the message starts with the file and the key."""


def key_path(parts) -> str:
    """("studies", "iris", "select", "rules", 0) → "studies.iris.select.rules[0]"."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _lookup(raw, parts) -> bool:
    for part in parts:
        if isinstance(part, int) and isinstance(raw, list) and part < len(raw):
            raw = raw[part]
        elif isinstance(raw, dict) and part in raw:
            raw = raw[part]
        else:
            return False
    return True


def file_of(parts, files) -> str | None:
    """The last config file (the one whose value won the merge) that writes the key `parts`."""
    for name, raw in reversed(list(files)):
        if _lookup(raw, parts):
            return name
    return None


def _type_names(expected) -> str:
    names = expected if isinstance(expected, list) else [expected]
    return " or ".join("null" if n == "null" else f"a{'n' if n[0] in 'aeiou' else ''} {n}" for n in names)


def describe(error) -> tuple[list, str]:
    """(key path parts, problem) for one jsonschema ValidationError."""
    parts = list(error.absolute_path)
    kind, value = error.validator, error.instance
    if kind == "additionalProperties":
        known = sorted((error.schema.get("properties") or {}))
        unexpected = sorted(set(value) - set(known)) if isinstance(value, dict) else []
        if unexpected:
            parts = parts + [unexpected[0]]
            return parts, (f"unknown key '{unexpected[0]}'" + (f"; the keys here are {', '.join(known)}" if known else ""))
    if kind == "type":
        expected = error.validator_value
        wants_number = "number" in (expected if isinstance(expected, list) else [expected]) or "integer" in (
            expected if isinstance(expected, list) else [expected])
        if isinstance(value, str) and wants_number and NUMERIC_TEXT.match(value.strip()):
            mantissa, _, exponent = value.strip().lower().partition("e")
            if not exponent:
                return parts, f"'{value}' is a string, not a number: write it without quotes"
            exponent = exponent if exponent[:1] in ("+", "-") else "+" + exponent
            fixed = f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}"
            return parts, (f"'{value}' is a string, not a number: YAML reads {value} as text (a YAML float needs a "
                           f"dot and a signed exponent): write {fixed} or {float(value):g}")
        return parts, f"{value!r} is not {_type_names(expected)}"
    if kind == "enum":
        return parts, f"{value!r} is not one of {', '.join(map(str, error.validator_value))}"
    if kind == "required":
        missing = [key for key in error.validator_value if not isinstance(value, dict) or key not in value]
        return parts, f"missing the required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
    if kind == "pattern" and error.schema.get("description"):
        return parts, f"{value!r} is not {error.schema['description']}"
    if kind in ("oneOf", "anyOf"):
        return parts, f"{_short(value)} matches none of the accepted forms ({kind} in the schema)"
    message = error.message
    return parts, message if len(message) < 300 else message[:300] + " …"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 120 else text[:120] + " …"


def schema_problem(config: dict, schema: dict, files=()) -> str | None:
    """The first schema problem of `config` as one readable message (None when it is valid)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import best_match

    error = best_match(Draft202012Validator(schema).iter_errors(config))
    if error is None:
        return None
    parts, problem = describe(error)
    name = file_of(parts, files) or file_of(parts[:-1], files)
    return (f"{name}: " if name else "") + f"{key_path(parts)}: {problem}"


def parts_of(key: str) -> list:
    """"studies.iris.select.rules[0]" → ["studies", "iris", "select", "rules", 0]."""
    out = []
    for piece in key.split("."):
        name, *indices = re.split(r"\[(\d+)\]", piece)
        out += [name] + [int(i) for i in indices if i != ""]
    return [p for p in out if p != ""]


def with_file(message: str, files) -> str:
    """Prefix a check's message, which starts with the key (`studies.….key: …`), with the config
    file that writes that key (or the nearest enclosing key it writes)."""
    match = re.match(r"(studies\.[^:\s]+):", message)
    if not match or any(message.startswith(name + ":") for name, _ in files):
        return message
    parts = parts_of(match.group(1))
    for depth in range(len(parts), 1, -1):
        name = file_of(parts[:depth], files)
        if name:
            return f"{name}: {message}"
    return message


def check_schema(config: dict, schema_path: str, files=()) -> None:
    """ConfigError with `schema_problem`'s message when `config` breaks the schema."""
    import yaml

    with open(schema_path) as handle:
        schema = yaml.safe_load(handle)
    problem = schema_problem(config, schema, files)
    if problem:
        raise ConfigError(problem)

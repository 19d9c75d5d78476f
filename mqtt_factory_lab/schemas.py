"""The factory's payload contract, checked: JSON Schemas in ``schemas/`` and sentences about them.

Every JSON payload the factory publishes has a schema in ``schemas/<name>.schema.json``
(draft 2020-12). This module loads them all into one :class:`referencing.Registry`, so
the ``$ref`` between files resolve offline, and turns validation failures into sentences
a student can act on instead of a jsonschema traceback::

    >>> validate("command", b'{"command": "stop", "reason": "manual"}')
    {'command': 'stop', 'reason': 'manual'}
    >>> validate("state", {"ts": 1767225600.0, "device_id": "press", "kind": "press",
    ...     "state": "paused", "setpoints": {}, "counters": {"produced": 0,
    ...     "alarms_raised": 0, "commands_accepted": 0, "commands_rejected": 0}})
    Traceback (most recent call last):
      ...
    mqtt_factory_lab.schemas.PayloadError: the state payload is invalid: field 'state' must be one of \
'running', 'stopped', 'fault', but it is 'paused'

Which schema applies to a message follows from its topic (:func:`schema_for_topic`), so
:func:`validate_message` checks whatever arrived on ``<root>/#``.

Numbers must be finite. JSON has no NaN or Infinity, but Python's ``json`` reads and writes
them by default; the validator here treats them as "not a number" whether they arrive as
text or inside a dict.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import numbers
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match, relevance
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from mqtt_factory_lab.paths import SCHEMA_DIR

SUFFIX = ".schema.json"
MAX_PROBLEMS = 3
SHARED = "common"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# topic kind (the level after the root) -> (schema name, names of the levels after the kind)
TOPIC_SCHEMAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "telemetry": ("telemetry", ("<device_id>", "<sensor>")),
    "alarms": ("alarm", ("<device_id>", "<sensor>")),
    "commands": ("command", ("<publisher>", "<device_id>")),
    "state": ("state", ("<device_id>",)),
    "status": ("status", ("<device_id>",)),
    "events": ("event", ("<component_id>",)),
    "replies": ("setpoints_reply", ("<device_id>", "<requester>")),
}

# The chocolate line (sim/chocolate, lesson 07) has its own namespace, as in its seed:
# <root>/<site>/<line>/<step>/<machine>/<message_type>. Five levels after the root and a
# step name at the third, so it cannot be mistaken for a virtual-factory topic.
CHOCOLATE_SCHEMAS: dict[str, str] = {
    "telemetry": "chocolate_telemetry",
    "state": "chocolate_state",
    "alarm": "chocolate_alarm",
    "quality": "chocolate_quality",
    "batch": "chocolate_batch",
}
#: batch events exist in two versions; ``schema_version`` in the payload picks one (absent: 1)
CHOCOLATE_BATCH_VERSIONS: dict[int, str] = {1: "chocolate_batch_legacy", 2: "chocolate_batch"}
CHOCOLATE_LAYOUT = "<site>/<line>/<step>/<machine>/<message_type>"

_TYPE_WORDS = {
    "number": "a finite number",
    "integer": "a whole number",
    "string": "a string",
    "object": "a JSON object",
    "array": "a list",
    "boolean": "true or false",
    "null": "null",
}


class PayloadError(ValueError):
    """A payload that breaks the contract; ``str()`` is a sentence that says how.

    :param message: the whole sentence, e.g. ``"the state payload is invalid: ..."``.
    :param schema_name: the schema checked against, or None when none applies (unknown topic).
    :param problems: one sentence per problem, most relevant first (the message shows
        up to three of them).
    :param errors: the underlying :class:`jsonschema.ValidationError` objects, most relevant
        first; empty when the payload could not even be parsed.
    :param payload: what was given: the raw bytes/str, or the parsed object.
    """

    def __init__(
        self,
        message: str,
        *,
        schema_name: str | None,
        problems: Iterable[str] = (),
        errors: Iterable[ValidationError] = (),
        payload: Any = None,
    ) -> None:
        super().__init__(message)
        self.schema_name = schema_name
        self.problems = list(problems)
        self.errors = list(errors)
        self.payload = payload


def _is_finite_number(checker: Any, instance: Any) -> bool:
    """JSON numbers only: no booleans, no NaN, no infinities."""
    if isinstance(instance, bool) or not isinstance(instance, numbers.Number):
        return False
    try:
        return math.isfinite(instance)  # type: ignore[arg-type]
    except OverflowError:  # an int too large for a float is still a finite number
        return True
    except TypeError:  # complex and other exotic numbers are not JSON numbers
        return False


FactoryValidator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine("number", _is_finite_number),
)
"""Draft 2020-12, except that ``"type": "number"`` also rejects NaN and ±Infinity."""


def _without_dialect(contents: dict[str, Any]) -> dict[str, Any]:
    """A copy without ``$schema``, for validation only.

    jsonschema picks the validator class for a ``$ref``'d document by its ``$schema``
    (``evolve`` calls ``validator_for``), which would swap :data:`FactoryValidator` for the
    plain Draft202012Validator and let NaN through in referenced schemas
    (python-jsonschema/jsonschema#1197). Every file is checked to be 2020-12 first.
    """
    return {key: value for key, value in contents.items() if key != "$schema"}


@dataclass(frozen=True)
class _Catalog:
    registry: Registry
    by_name: dict[str, dict[str, Any]]
    checked_by_name: dict[str, dict[str, Any]]
    name_by_id: dict[str, str]


@functools.cache
def _catalog(directory: Path = SCHEMA_DIR) -> _Catalog:
    """Read every ``*.schema.json`` once; later calls reuse the result."""
    by_name: dict[str, dict[str, Any]] = {}
    checked_by_name: dict[str, dict[str, Any]] = {}
    name_by_id: dict[str, str] = {}
    resources: list[tuple[str, Resource[Any]]] = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        name = path.name.removesuffix(SUFFIX)
        try:
            contents = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"schema file {path} is not valid JSON: {exc}") from exc
        uri = contents.get("$id")
        if not uri:
            raise ValueError(f"schema file {path} has no $id, so other schemas cannot $ref it")
        if contents.get("$schema") != _DIALECT:
            raise ValueError(f'schema file {path} must declare "$schema": "{_DIALECT}"')
        by_name[name] = contents
        name_by_id[uri] = name
        checked_by_name[name] = _without_dialect(contents)
        resources.append((uri, DRAFT202012.create_resource(checked_by_name[name])))
    if not by_name:
        raise ValueError(f"no *{SUFFIX} files in {directory}")
    return _Catalog(Registry().with_resources(resources), by_name, checked_by_name, name_by_id)


def registry() -> Registry:
    """The :class:`referencing.Registry` holding every schema under its ``$id``."""
    return _catalog().registry


def names() -> list[str]:
    """Every schema name (file name without ``.schema.json``), sorted; includes ``common``."""
    return sorted(_catalog().by_name)


def payload_names() -> list[str]:
    """The names a payload can be validated against: every schema except ``common``."""
    return [name for name in names() if name != SHARED]


def device_kinds() -> tuple[str, ...]:
    """The kinds of machine the factory has: the contract's ``device_kind`` (``common``)."""
    return tuple(schema(SHARED)["$defs"]["device_kind"]["enum"])


def chocolate_steps() -> tuple[str, ...]:
    """The chocolate line's eight steps, in order: the contract's ``step`` (``chocolate_batch``)."""
    return tuple(schema("chocolate_batch")["$defs"]["step"]["enum"])


def schema(name: str) -> dict[str, Any]:
    """The schema called ``name`` as a dict (the cached object: do not modify it)."""
    catalog = _catalog()
    try:
        return catalog.by_name[name]
    except KeyError:
        raise KeyError(
            f"there is no schema called {name!r}; the schemas are: {', '.join(names())}"
        ) from None


@functools.cache
def validator(name: str) -> Any:
    """A validator for schema ``name``: draft 2020-12, every ``$ref`` resolved through the
    shared registry, formats checked, and numbers required to be finite.

    The returned object is a :class:`FactoryValidator` (Draft202012Validator extended with
    the finite-number rule); it is cached and safe to share between threads.
    """
    if name == SHARED:
        raise ValueError(
            f"{SHARED!r} only holds definitions shared by the other schemas; it is not a "
            f"payload. Validate against one of: {', '.join(payload_names())}"
        )
    schema(name)  # a KeyError naming the schemas if there is no such schema
    return FactoryValidator(
        _catalog().checked_by_name[name],
        registry=registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def check_all() -> list[str]:
    """Check every schema against the draft 2020-12 metaschema and every ``$ref`` in it
    against the registry; return the names checked.

    :raises jsonschema.SchemaError: a schema is not valid draft 2020-12.
    :raises ValueError: a ``$ref`` points at nothing.
    """
    catalog = _catalog()
    for name in names():
        contents = catalog.by_name[name]
        Draft202012Validator.check_schema(contents)
        resolver = catalog.registry.resolver(base_uri=contents["$id"])
        for ref in _refs(contents):
            try:
                resolver.lookup(ref)
            except Exception as exc:  # referencing raises several Unresolvable subclasses
                raise ValueError(f"schema {name!r}: $ref {ref!r} resolves to nothing") from exc
    return names()


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


# -- parsing ---------------------------------------------------------------------------


def _reject_constant(constant: str) -> Any:
    raise ValueError(
        f"it contains {constant}, which is not JSON (write finite numbers only; "
        "json.dumps(..., allow_nan=False) catches this before publishing)"
    )


def _preview(raw: bytes | str, limit: int = 60) -> str:
    shown = raw[:limit]
    return f"{shown!r}{'...' if len(raw) > limit else ''}"


def parse(payload: bytes | bytearray | memoryview | str, *, label: str = "the") -> Any:
    """Decode an MQTT payload as UTF-8 JSON, or raise :class:`PayloadError` saying why not.

    :param label: names the payload in the message (``"the state"`` → "the state payload").
    """
    __tracebackhide__ = True
    raw = bytes(payload) if isinstance(payload, (bytearray, memoryview)) else payload
    if isinstance(raw, bytes):
        if not raw:
            raise PayloadError(
                f"{label} payload is empty (zero bytes). An empty retained message is how MQTT "
                "deletes a retained message; it carries no JSON",
                schema_name=None,
                problems=["the payload is empty"],
                payload=payload,
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problem = (
                f"byte {raw[exc.start]:#04x} at position {exc.start} is not UTF-8; "
                "payloads in this lab are UTF-8 JSON text"
            )
            raise PayloadError(
                f"{label} payload is not UTF-8 text: {problem} (got {_preview(raw)})",
                schema_name=None,
                problems=[problem],
                payload=payload,
            ) from None
    else:
        text = raw
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        problem = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise PayloadError(
            f"{label} payload is not JSON: {problem} (got {_preview(raw)})",
            schema_name=None,
            problems=[problem],
            payload=payload,
        ) from None
    except ValueError as exc:
        raise PayloadError(
            f"{label} payload is not valid JSON: {exc}",
            schema_name=None,
            problems=[str(exc)],
            payload=payload,
        ) from None


# -- validation and sentences -----------------------------------------------------------


def validate(name: str, payload: Mapping[str, Any] | bytes | bytearray | str) -> Any:
    """Check ``payload`` against schema ``name`` and return it as a Python object.

    :param name: a schema name such as ``"telemetry"`` (see :func:`payload_names`).
    :param payload: a dict, or the raw MQTT payload (bytes or str), which is parsed as JSON.
    :returns: the parsed payload (a dict is returned as given).
    :raises PayloadError: the payload is not UTF-8, not JSON, or breaks the schema; the
        message names each problem, e.g. "field 'seq' must be at least 0, but it is -1".

    Example::

        reading = validate("telemetry", msg.payload)
        assert reading["unit"] == "C"
    """
    __tracebackhide__ = True
    check = validator(name)
    if isinstance(payload, (bytes, bytearray, memoryview, str)):
        try:
            instance = parse(payload, label=f"the {name}")
        except PayloadError as exc:
            exc.schema_name = name
            raise
    else:
        instance = payload
    errors = sorted(check.iter_errors(instance), key=relevance, reverse=True)
    if not errors:
        return instance
    problems: list[str] = []
    for error in errors:
        for sentence in _explain(error, _catalog().by_name[name]):
            if sentence not in problems:
                problems.append(sentence)
    shown = "; ".join(problems[:MAX_PROBLEMS])
    more = len(problems) - MAX_PROBLEMS
    if more > 0:
        shown += f" (and {more} more problem{'s' if more > 1 else ''})"
    raise PayloadError(
        f"the {name} payload is invalid: {shown}",
        schema_name=name,
        problems=problems,
        errors=errors,
        payload=payload,
    )


def _where(path: Iterable[Any]) -> str:
    """``deque(['counters', 'produced'])`` → ``"field 'counters.produced'"``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return f"field {text!r}" if text else "the payload"


def _field(path: Iterable[Any], key: str) -> str:
    return _where([*path, key])


def _show(value: Any) -> str:
    """How a value reads in a sentence: JSON spelling, with its type where that helps."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        spelled = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        return f"{spelled} (JSON has no NaN or Infinity)"
    if isinstance(value, numbers.Number):
        return repr(value)
    if isinstance(value, str):
        return f"the string {_clip(value)!r}" if _looks_numeric(value) else repr(_clip(value))
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text.strip().lower() in {"true", "false", "null"}
    return True


def _words(values: Iterable[Any]) -> str:
    return ", ".join(json.dumps(v) if not isinstance(v, str) else repr(v) for v in values)


def _hint(error: ValidationError) -> str:
    hint = error.schema.get("x-hint") if isinstance(error.schema, Mapping) else None
    return f" ({hint})" if hint else ""


def _condition(error: ValidationError, root: Mapping[str, Any]) -> str:
    """For an error under ``then``: " when 'command' is 'set'", read from the matching ``if``."""
    path = list(error.schema_path)
    if "then" not in path:
        return ""
    node: Any = root
    for key in path[: path.index("then")]:
        if key == "$ref" or not isinstance(node, (Mapping, list)):
            return ""
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return ""
    condition = node.get("if", {}) if isinstance(node, Mapping) else {}
    parts = [
        f"{prop!r} is {sub['const']!r}"
        for prop, sub in condition.get("properties", {}).items()
        if isinstance(sub, Mapping) and "const" in sub
    ]
    return f" when {' and '.join(parts)}" if parts else ""


def _explain(error: ValidationError, root: Mapping[str, Any]) -> list[str]:
    """One or more sentences for one validation error."""
    keyword = error.validator
    value = error.validator_value
    instance = error.instance
    where = _where(error.absolute_path)
    when = _condition(error, root)

    if keyword == "required":
        missing = [key for key in value if key not in instance]
        return [
            f"{_field(error.absolute_path, key)} is required{when}, but it is missing"
            for key in missing
        ]
    if keyword == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        extras = [key for key in instance if key not in allowed]
        sentences = []
        for key in extras:
            guess = difflib.get_close_matches(key, allowed, n=1)
            tip = f" (did you mean {guess[0]!r}?)" if guess else f" (allowed: {_words(allowed)})"
            sentences.append(f"{_field(error.absolute_path, key)} is not allowed here{tip}")
        return sentences
    if keyword == "enum" and len(value) == 1:
        return [f"{where} must be {_words(value)}{when}, but it is {_show(instance)}"]
    if keyword == "enum":
        return [f"{where} must be one of {_words(value)}{when}, but it is {_show(instance)}"]
    if keyword == "const":
        return [f"{where} must be {_words([value])}{when}, but it is {_show(instance)}"]
    if keyword == "type":
        wanted = value if isinstance(value, list) else [value]
        expected = " or ".join(_TYPE_WORDS.get(t, t) for t in wanted)
        return [f"{where} must be {expected}, but it is {_show(instance)}{_hint(error)}"]
    if keyword in {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}:
        bound = {
            "minimum": "at least",
            "maximum": "at most",
            "exclusiveMinimum": "greater than",
            "exclusiveMaximum": "less than",
        }[keyword]
        return [f"{where} must be {bound} {value}, but it is {_show(instance)}{_hint(error)}"]
    if keyword == "minLength":
        if value == 1:
            return [f"{where} must not be empty"]
        return [f"{where} must be at least {value} characters long, but it has {len(instance)}"]
    if keyword == "maxLength":
        return [f"{where} must be at most {value} characters long, but it has {len(instance)}"]
    if keyword == "pattern":
        hint = error.schema.get("x-hint")
        rule = hint if hint else f"match the pattern {value}"
        return [f"{where} must {rule}, but it is {_show(instance)}"]
    if keyword == "oneOf" and error.context:
        return _explain_one_of(error, root)
    if keyword == "anyOf" and error.context:
        types = [e for e in error.context if e.validator == "type" and not e.relative_path]
        if len(types) == len(error.context):
            wanted = [_TYPE_WORDS.get(e.validator_value, e.validator_value) for e in types]
            return [f"{where} must be {' or '.join(wanted)}, but it is {_show(instance)}"]
        deepest = best_match(error.context)
        return _explain(deepest, root) if deepest is not None else [f"{where}: {error.message}"]
    return [f"{where}: {error.message}"]


def _explain_one_of(error: ValidationError, root: Mapping[str, Any]) -> list[str]:
    """Explain a failed ``oneOf`` by the alternative the payload was closest to.

    An alternative whose discriminator (a ``const``, such as ``"event": "decision"``) the
    payload does not match is only a candidate when every alternative fails that way.
    """
    if not isinstance(error.validator_value, list):
        return [f"{_where(error.absolute_path)}: {error.message}"]
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    if not branches:  # every alternative matched: too many, not too few
        return [f"{_where(error.absolute_path)}: {error.message}"]

    def misses_discriminator(errors: list[ValidationError]) -> bool:
        return any(e.validator == "const" and len(e.relative_path) == 1 for e in errors)

    close = {i: errs for i, errs in branches.items() if not misses_discriminator(errs)}
    if not close:
        consts = [
            e
            for errs in branches.values()
            for e in errs
            if e.validator == "const" and len(e.relative_path) == 1
        ]
        paths = {tuple(e.absolute_path) for e in consts}
        if len(paths) == 1:
            values = [e.validator_value for e in consts]
            return [
                f"{_where(consts[0].absolute_path)} must be one of {_words(values)}, "
                f"but it is {_show(consts[0].instance)}"
            ]
        close = branches
    explained = {
        i: list(  # dict.fromkeys: unique, in order
            dict.fromkeys(
                sentence
                for sub in sorted(errs, key=relevance, reverse=True)
                for sentence in _explain(sub, root)
            )
        )
        for i, errs in close.items()
    }
    if len(explained) > 1 and len({tuple(found) for found in explained.values()}) == 1:
        return next(iter(explained.values()))  # every alternative fails the same way
    index = min(close, key=lambda i: (len(close[i]), i))
    sentences = explained[index]
    label = _alternative_name(error.validator_value[index])
    if label and sentences:
        sentences = [f"read as {label}, {sentences[0]}", *sentences[1:]]
    return sentences


def _alternative_name(alternative: Any) -> str:
    if isinstance(alternative, Mapping):
        ref = alternative.get("$ref")
        name = _catalog().name_by_id.get(ref) if isinstance(ref, str) else None
        title = _catalog().by_name[name].get("title") if name else alternative.get("title")
        if title:
            article = "an" if title[0].lower() in "aeiou" else "a"
            return f"{article} {title[0].lower()}{title[1:]}"
    return ""


# -- topics -----------------------------------------------------------------------------


def _topic_levels(topic: str, root: str) -> tuple[str, list[str]] | None:
    """``("telemetry", ["press", "temperature"])`` for a contract topic under ``root``."""
    root_parts = root.strip("/").split("/")
    parts = topic.split("/")
    n = len(root_parts)
    if parts[:n] != root_parts or len(parts) <= n:
        return None
    kind, rest = parts[n], parts[n + 1 :]
    entry = TOPIC_SCHEMAS.get(kind)
    if entry is None or len(rest) != len(entry[1]):
        return None
    if any(not level or "+" in level or "#" in level for level in rest):
        return None
    return kind, rest


def schema_for_topic(topic: str, root: str = "factory") -> str | None:
    """The schema for messages on ``topic``, or None if the topic is not part of the contract.

    The root may span several levels (tests use ``lab/3f9a1c2b/factory``)::

        >>> schema_for_topic("lab/3f9a1c2b/factory/alarms/oven-01/temperature",
        ...                  root="lab/3f9a1c2b/factory")
        'alarm'
        >>> schema_for_topic("factory/telemetry/oven-01") is None   # the sensor level is missing
        True
    """
    found = _topic_levels(topic, root)
    if found is None:
        chocolate = _chocolate_levels(topic, root)
        return CHOCOLATE_SCHEMAS[chocolate[4]] if chocolate else None
    return TOPIC_SCHEMAS[found[0]][0]


def _chocolate_levels(topic: str, root: str) -> tuple[str, str, str, str, str] | None:
    """``(site, line, step, machine, message_type)`` of a chocolate-line topic under ``root``."""
    root_parts = root.strip("/").split("/")
    parts = topic.split("/")
    n = len(root_parts)
    if parts[:n] != root_parts or len(parts) != n + 5:
        return None
    site, line, step, machine, message_type = parts[n:]
    if step not in chocolate_steps() or message_type not in CHOCOLATE_SCHEMAS:
        return None
    if any(not level or "+" in level or "#" in level for level in (site, line, machine)):
        return None
    return site, line, step, machine, message_type


def _validate_chocolate(
    levels: tuple[str, str, str, str, str],
    topic: str,
    payload: Mapping[str, Any] | bytes | bytearray | str,
) -> Any:
    """A chocolate-line message: its schema (batch events by version), and its topic's levels."""
    site, line, step, machine, message_type = levels
    name = CHOCOLATE_SCHEMAS[message_type]
    if message_type == "batch":
        document = payload if isinstance(payload, Mapping) else parse(payload, label="the batch")
        version = document.get("schema_version", 1) if isinstance(document, Mapping) else 1
        if isinstance(version, bool) or version not in CHOCOLATE_BATCH_VERSIONS:
            known = ", ".join(map(str, CHOCOLATE_BATCH_VERSIONS))
            raise PayloadError(
                f"the batch event on {topic!r} has schema_version {version!r}, which no schema "
                f"describes: batch events exist in versions {known}",
                schema_name=name,
                problems=[f"unknown schema_version {version!r}"],
                payload=payload,
            )
        name = CHOCOLATE_BATCH_VERSIONS[version]
        payload = document
    instance = validate(name, payload)
    expected = {"step": step, "machine": machine}
    if "site" in instance or name != "chocolate_batch_legacy":
        expected.update(site=site, line=line)
    return _matching_topic(name, topic, instance, expected, payload)


def _matching_topic(
    name: str, topic: str, instance: Any, expected: Mapping[str, str], payload: Any
) -> Any:
    """``instance``, once its fields equal what its topic names; else a PayloadError saying so."""
    __tracebackhide__ = True
    problems = [
        f"field {key!r} is {instance.get(key)!r}, but the topic names {want!r}"
        for key, want in expected.items()
        if instance.get(key) != want
    ]
    if problems:
        raise PayloadError(
            f"the {name} payload does not match its topic {topic!r}: {'; '.join(problems)}",
            schema_name=name,
            problems=problems,
            payload=payload,
        )
    return instance


def validate_message(
    topic: str, payload: Mapping[str, Any] | bytes | bytearray | str, root: str = "factory"
) -> Any:
    """Validate a message by its topic, and check the payload names the device its topic names.

    A state for ``oven-02`` retained on ``<root>/state/oven-01`` passes the schema but misleads
    every dashboard, so for telemetry, alarms, state and status the payload's ``device_id``
    (and ``sensor``) must equal the topic's levels.

    :returns: the parsed payload.
    :raises PayloadError: the topic is not in the contract (``schema_name`` is None), or the
        payload breaks its schema or disagrees with its topic.
    """
    __tracebackhide__ = True
    found = _topic_levels(topic, root)
    chocolate = _chocolate_levels(topic, root) if found is None else None
    if chocolate is not None:
        return _validate_chocolate(chocolate, topic, payload)
    if found is None:
        layout = ", ".join(
            "/".join([root, kind, *levels]) for kind, (_, levels) in TOPIC_SCHEMAS.items()
        )
        layout += f"; and for the chocolate line: {root}/{CHOCOLATE_LAYOUT}"
        raise PayloadError(
            f"topic {topic!r} is not a factory topic under root {root!r}; "
            f"the contract's topics are: {layout}",
            schema_name=None,
            problems=[f"unknown topic {topic!r}"],
            payload=payload,
        )
    kind, levels = found
    name = TOPIC_SCHEMAS[kind][0]
    instance = validate(name, payload)
    expected: dict[str, str] = {}
    if kind in {"telemetry", "alarms"}:
        expected = {"device_id": levels[0], "sensor": levels[1]}
    elif kind in {"state", "status", "replies"}:
        expected = {"device_id": levels[0]}
    return _matching_topic(name, topic, instance, expected, payload)

"""The payload contract, loaded: every JSON Schema in ``schemas/``, and validation against them.

Every JSON payload the factory publishes has a schema in ``schemas/<name>.schema.json``
(draft 2020-12). This module loads them all into one :class:`referencing.Registry`, so
the ``$ref`` between files resolve offline, and validates payloads against them; the
sentences a failure is told in come from :mod:`~mqtt_factory_lab.contract.explanations`::

    >>> validate("command", b'{"command": "stop", "reason": "manual"}')
    {'command': 'stop', 'reason': 'manual'}
    >>> validate("state", {"ts": 1767225600.0, "device_id": "press", "kind": "press",
    ...     "state": "paused", "setpoints": {}, "counters": {"produced": 0,
    ...     "alarms_raised": 0, "commands_accepted": 0, "commands_rejected": 0}})
    Traceback (most recent call last):
      ...
    mqtt_factory_lab.contract.PayloadError: the state payload is invalid: field 'state' must be one of \
'running', 'stopped', 'fault', but it is 'paused'

Numbers must be finite. JSON has no NaN or Infinity, but Python's ``json`` reads and writes
them by default; the validator here treats them as "not a number" whether they arrive as
text or inside a dict.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema_rs

from mqtt_factory_lab.contract.explanations import MAX_PROBLEMS, PayloadError, explain
from mqtt_factory_lab.core.paths import SCHEMA_DIR

SUFFIX = ".schema.json"
SHARED = "common"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"

# jsonschema and referencing (with attrs and rpds, ~50 ms of every process that imports the
# contract: each child pytest, each lesson run) explain a rejection; jsonschema-rs decides.
# So they are imported on the slow path only: the first explanation, registry() or
# FactoryValidator (a module attribute made on first use, see __getattr__ below).
if TYPE_CHECKING:
    from referencing import Registry


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


@functools.cache
def _factory_validator() -> Any:
    """:data:`FactoryValidator`, made (and jsonschema imported) on first use."""
    from jsonschema import Draft202012Validator, validators

    return validators.extend(
        Draft202012Validator,
        type_checker=Draft202012Validator.TYPE_CHECKER.redefine("number", _is_finite_number),
    )


def __getattr__(name: str) -> Any:
    # FactoryValidator: Draft 2020-12, except that ``"type": "number"`` also rejects NaN and
    # ±Infinity. A lazy module attribute (PEP 562), so that importing the contract does not
    # import jsonschema.
    if name == "FactoryValidator":
        return _factory_validator()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    by_name: dict[str, dict[str, Any]]
    checked_by_name: dict[str, dict[str, Any]]
    name_by_id: dict[str, str]


@functools.cache
def _catalog(directory: Path = SCHEMA_DIR) -> _Catalog:
    """Read every ``*.schema.json`` once; later calls reuse the result."""
    by_name: dict[str, dict[str, Any]] = {}
    checked_by_name: dict[str, dict[str, Any]] = {}
    name_by_id: dict[str, str] = {}
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
    if not by_name:
        raise ValueError(f"no *{SUFFIX} files in {directory}")
    return _Catalog(by_name, checked_by_name, name_by_id)


@functools.cache
def registry() -> Registry:
    """The :class:`referencing.Registry` holding every schema under its ``$id``."""
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    catalog = _catalog()
    return Registry().with_resources(
        (catalog.by_name[name]["$id"], DRAFT202012.create_resource(contents))
        for name, contents in catalog.checked_by_name.items()
    )


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


def _check_payload_name(name: str) -> None:
    """:raises ValueError: for ``common``; :raises KeyError: naming the schemas, for no schema."""
    if name == SHARED:
        raise ValueError(
            f"{SHARED!r} only holds definitions shared by the other schemas; it is not a "
            f"payload. Validate against one of: {', '.join(payload_names())}"
        )
    schema(name)  # a KeyError naming the schemas if there is no such schema


@functools.cache
def validator(name: str) -> Any:
    """A validator for schema ``name``: draft 2020-12, every ``$ref`` resolved through the
    shared registry, formats checked, and numbers required to be finite.

    The returned object is a :class:`FactoryValidator` (Draft202012Validator extended with
    the finite-number rule); it is cached and safe to share between threads.
    """
    _check_payload_name(name)
    factory_validator = _factory_validator()
    return factory_validator(
        _catalog().checked_by_name[name],
        registry=registry(),
        format_checker=factory_validator.FORMAT_CHECKER,
    )


@functools.cache
def _fast_registry() -> Any:
    """Every schema in a :class:`jsonschema_rs.Registry`, for :func:`fast_validator`."""
    catalog = _catalog()
    return jsonschema_rs.Registry(
        [(contents["$id"], contents) for contents in catalog.checked_by_name.values()]
    )


@functools.cache
def fast_validator(name: str) -> Any:
    """jsonschema-rs's compiled validator for schema ``name``: the hot path's yes or no.

    Draft 2020-12, every ``$ref`` resolved through a registry of every file (the same
    documents as :func:`validator`'s). It rejects NaN and ±Infinity as numbers too, so it
    decides exactly what :func:`validator` decides; it cannot explain, so a payload it
    rejects is explained by :func:`validator` (jsonschema). Cached and thread-safe.
    """
    _check_payload_name(name)  # the same errors for a wrong or non-payload name as validator()
    return jsonschema_rs.Draft202012Validator(
        _catalog().checked_by_name[name], registry=_fast_registry(), validate_formats=True
    )


def check_all() -> list[str]:
    """Check every schema against the draft 2020-12 metaschema and every ``$ref`` in it
    against the registry; return the names checked.

    :raises jsonschema.SchemaError: a schema is not valid draft 2020-12.
    :raises ValueError: a ``$ref`` points at nothing.
    """
    from jsonschema import Draft202012Validator

    catalog = _catalog()
    for name in names():
        contents = catalog.by_name[name]
        Draft202012Validator.check_schema(contents)
        resolver = registry().resolver(base_uri=contents["$id"])
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


def title_of(uri: str) -> str | None:
    """The ``title`` of the schema whose ``$id`` is ``uri``, or None (not a schema of the lab)."""
    catalog = _catalog()
    name = catalog.name_by_id.get(uri)
    return catalog.by_name[name].get("title") if name else None


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


# -- validation -------------------------------------------------------------------------


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
    fast = fast_validator(name)  # the KeyError or ValueError of a wrong name, before parsing
    if isinstance(payload, (bytes, bytearray, memoryview, str)):
        try:
            instance = parse(payload, label=f"the {name}")
        except PayloadError as exc:
            exc.schema_name = name
            raise
    else:
        instance = payload
    try:
        if fast.is_valid(instance):
            return instance  # the hot path: no explanation needed
        fast_error = next(iter(fast.iter_errors(instance)), None)
    except ValueError:  # not JSON-shaped (a key that is no string, an object): explain it
        fast_error = None
    from jsonschema.exceptions import relevance

    errors = sorted(validator(name).iter_errors(instance), key=relevance, reverse=True)
    if not errors and fast_error is None:
        return instance
    if not errors:
        # The two validators disagree (a bug in one of them): the fast one decides, in
        # its own words.
        where = "/".join(str(p) for p in fast_error.instance_path) or "(the payload)"
        raise PayloadError(
            f"the {name} payload is invalid: at {where}: {fast_error.message}",
            schema_name=name,
            problems=[fast_error.message],
            errors=[],
            payload=payload,
        )
    problems: list[str] = []
    for error in errors:
        for sentence in explain(error, _catalog().by_name[name], title_of):
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

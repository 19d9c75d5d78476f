"""What the data center accepts: the chocolate topic namespace and the payload schemas.

An empty payload on a ``state`` topic is accepted too: it is how MQTT deletes a retained
message. A message is accepted when its topic is ``<root>/<site>/<line>/<step>/<machine>/<type>``
with a known type, its payload is a UTF-8 JSON object that fits the type's schema in
``schemas/`` (batch events: version 1 or 2, told apart by ``schema_version``), and the
payload names the step and machine its topic names. Anything else raises
:class:`Rejected` with a reason for the dead-letter table; nothing is dropped.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema_rs

# jsonschema (with referencing, attrs and rpds: ~50 ms of every start) explains a rejection
# only, so it is imported when the first payload is rejected, not when the program starts.

#: the schemas/ folder of the project (this package lives in <project>/sim/datacenter)
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"

#: message type (last topic level) -> schema name; batch events go by version
SCHEMAS = {
    "telemetry": "chocolate_telemetry",
    "state": "chocolate_state",
    "alarm": "chocolate_alarm",
    "quality": "chocolate_quality",
}
BATCH_SCHEMAS = {1: "chocolate_batch_legacy", 2: "chocolate_batch"}
MESSAGE_TYPES = (*SCHEMAS, "batch")


class Rejected(ValueError):
    """A message the data center cannot accept; ``str()`` is the dead-letter reason."""


@dataclass(frozen=True)
class Accepted:
    """A message that fits the contract."""

    site: str
    line: str
    step: str
    machine: str
    message_type: str
    payload: dict[str, Any]
    #: batch events: 1 or 2; other types 1; 0 for an empty state (a retained state deleted)
    schema_version: int


class _Schema:
    """One payload schema, compiled twice: once to decide fast, once (on first need) to explain."""

    def __init__(
        self, document: dict[str, Any], fast_registry: Any, slow_registry: Callable[[], Any]
    ) -> None:
        self.document = document
        #: jsonschema_rs.Draft202012Validator: is_valid on every message
        self.fast: Any = jsonschema_rs.Draft202012Validator(
            document, registry=fast_registry, validate_formats=True
        )
        self._slow_registry = slow_registry

    @functools.cached_property
    def slow(self) -> Any:
        """jsonschema.Draft202012Validator: only for a message the fast one rejects."""
        from jsonschema import Draft202012Validator

        return Draft202012Validator(
            self.document,
            registry=self._slow_registry(),
            format_checker=Draft202012Validator.FORMAT_CHECKER,
        )


@functools.cache
def _validators() -> dict[str, _Schema]:
    """Each payload schema compiled for both validators, through one registry of every file.

    Every message is validated, so the decision is jsonschema-rs's (Rust, draft 2020-12,
    ``$ref`` resolved once when the schema is compiled, through a
    :class:`jsonschema_rs.Registry` of every file in ``schemas/``). jsonschema, through a
    :class:`referencing.Registry` of the same files, only runs when a payload is rejected,
    to say which field broke which rule (the dead-letter reason): it is compiled then.
    """
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        documents[path.name.removesuffix(".schema.json")] = json.loads(
            path.read_text(encoding="utf-8")
        )
    wanted = (*SCHEMAS.values(), *BATCH_SCHEMAS.values())
    missing = [name for name in wanted if name not in documents]
    if missing:
        raise FileNotFoundError(f"schemas {missing} are missing from {SCHEMA_DIR}")
    fast_registry = jsonschema_rs.Registry([(d["$id"], d) for d in documents.values()])

    @functools.cache
    def slow_registry() -> Any:
        from referencing import Registry
        from referencing.jsonschema import DRAFT202012

        return Registry().with_resources(
            (d["$id"], DRAFT202012.create_resource(d)) for d in documents.values()
        )

    return {name: _Schema(documents[name], fast_registry, slow_registry) for name in wanted}


def _schema_problem(schema: _Schema, document: dict[str, Any]) -> str | None:
    """None if ``document`` fits; else where and how it breaks the schema, in one line."""
    if schema.fast.is_valid(document):
        return None
    from jsonschema.exceptions import best_match

    error = best_match(schema.slow.iter_errors(document))
    if error is None:
        # The two validators disagree (a bug in one of them): the fast one decided, so
        # the message is rejected, with the fast validator's own words.
        fast_error = next(iter(schema.fast.iter_errors(document)), None)
        if fast_error is None:
            return "(the payload): rejected by jsonschema-rs, which names no error"
        where = "/".join(str(p) for p in fast_error.instance_path) or "(the payload)"
        return f"at {where}: {fast_error.message}"
    where = "/".join(str(p) for p in error.absolute_path) or "(the payload)"
    return f"at {where}: {error.message}"


def _reject_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


#: one decoder for every message (``json.loads(..., parse_constant=...)`` builds one per call)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def split_topic(topic: str, root: str) -> tuple[str, str, str, str, str]:
    """``(site, line, step, machine, type)`` of a topic under ``root``, or :class:`Rejected`."""
    prefix = root.strip("/") + "/"
    if not topic.startswith(prefix):
        raise Rejected(f"topic {topic!r} is not under the root {root!r}")
    levels = topic[len(prefix) :].split("/")
    if len(levels) != 5 or not all(levels):
        raise Rejected(
            f"topic {topic!r} does not follow <root>/<site>/<line>/<step>/<machine>/<type>"
        )
    site, line, step, machine, message_type = levels
    if message_type not in MESSAGE_TYPES:
        raise Rejected(
            f"unknown message type {message_type!r}; the line publishes {', '.join(MESSAGE_TYPES)}"
        )
    return site, line, step, machine, message_type


def check(topic: str, payload: bytes, root: str) -> Accepted:
    """Accept the message or raise :class:`Rejected` saying why."""
    site, line, step, machine, message_type = split_topic(topic, root)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Rejected(f"payload is not UTF-8 text ({error})") from None
    if not payload and message_type == "state":
        # An empty retained publish deletes a machine's stored state (a machine taken out
        # of service): MQTT's own way to say so, not bad input.
        return Accepted(site, line, step, machine, message_type, {}, 0)
    if not text.strip():
        raise Rejected("payload is empty (not a JSON object)")
    try:
        document = _DECODER.decode(text)
    except ValueError as error:
        raise Rejected(f"payload is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise Rejected(f"payload is JSON but not an object: {type(document).__name__}")
    version = 1
    if message_type == "batch":
        version = document.get("schema_version", 1)
        if version not in BATCH_SCHEMAS or isinstance(version, bool):
            raise Rejected(
                f"unknown batch event version {version!r}: this data center reads versions "
                f"{', '.join(map(str, BATCH_SCHEMAS))}"
            )
        name = BATCH_SCHEMAS[version]
    else:
        name = SCHEMAS[message_type]
    problem = _schema_problem(_validators()[name], document)
    if problem is not None:
        raise Rejected(f"does not fit schema {name}: {problem}")
    for key, want in (("step", step), ("machine", machine)):
        if document.get(key) != want:
            raise Rejected(f"payload {key} {document.get(key)!r} differs from the topic's {want!r}")
    return Accepted(site, line, step, machine, message_type, document, version)

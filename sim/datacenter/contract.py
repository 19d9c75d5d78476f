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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.jsonschema import DRAFT202012

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


@functools.cache
def _validators() -> dict[str, Any]:
    """One validator per schema, with every ``$ref`` resolved once, up front.

    jsonschema resolves a ``$ref`` through the registry at every use, which costs more
    than the rest of the validation; the data center validates every message, so the
    references are inlined here (through the same :class:`referencing.Registry`).
    """
    resources = []
    contents: dict[str, dict[str, Any]] = {}
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        contents[path.name.removesuffix(".schema.json")] = document
        resources.append((document["$id"], DRAFT202012.create_resource(document)))
    registry: Registry[Any] = Registry().with_resources(resources)
    wanted = (*SCHEMAS.values(), *BATCH_SCHEMAS.values())
    missing = [name for name in wanted if name not in contents]
    if missing:
        raise FileNotFoundError(f"schemas {missing} are missing from {SCHEMA_DIR}")
    return {
        name: Draft202012Validator(
            _inline(contents[name], registry.resolver(contents[name]["$id"]))
        )
        for name in wanted
    }


def _inline(node: Any, resolver: Any) -> Any:
    """``node`` with each ``{"$ref": ...}`` replaced by what it points at (refs here never recurse)."""
    if isinstance(node, list):
        return [_inline(item, resolver) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        resolved = resolver.lookup(node["$ref"])
        target = _inline(resolved.contents, resolved.resolver)
        return {**target, **{k: _inline(v, resolver) for k, v in node.items() if k != "$ref"}}
    skip = ("$defs", "examples", "$schema", "$id")
    return {k: _inline(v, resolver) for k, v in node.items() if k not in skip}


def _reject_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


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
        document = json.loads(text, parse_constant=_reject_constant)
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
    validator = _validators()[name]
    error = None if validator.is_valid(document) else best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(the payload)"
        raise Rejected(f"does not fit schema {name}: at {where}: {error.message}")
    for key, want in (("step", step), ("machine", machine)):
        if document.get(key) != want:
            raise Rejected(f"payload {key} {document.get(key)!r} differs from the topic's {want!r}")
    return Accepted(site, line, step, machine, message_type, document, version)

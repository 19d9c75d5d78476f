"""The payload contract, by topic: which schema a topic's messages follow, and whether they agree.

Which schema applies to a message follows from its topic (:func:`schema_for_topic`), so
:func:`validate_message` checks whatever arrived on ``<root>/#``, and also that the payload
names the device (and sensor, machine, step) its topic names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mqtt_factory_lab.contract.catalog import chocolate_steps, parse, validate
from mqtt_factory_lab.contract.explanations import PayloadError

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

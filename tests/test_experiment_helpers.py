"""The helpers lessons share (mqtt_factory_lab.experiment) do what their chapters rely on."""

from __future__ import annotations

from mqtt_factory_lab.core.client import ReceivedMessage
from mqtt_factory_lab.experiment import json_field, unique


def message(payload: bytes) -> ReceivedMessage:
    return ReceivedMessage(
        topic="factory/state/press-01", payload=payload, qos=1, retain=False, dup=False
    )


def test_unique_ids_differ_and_keep_their_prefix() -> None:
    ids = {unique("press") for _ in range(200)}
    assert len(ids) == 200
    assert all(i.startswith("press-") and len(i) == len("press-") + 8 for i in ids)


def test_json_field_reads_a_field_of_an_object_and_nothing_else() -> None:
    assert json_field(message(b'{"state": "running"}'), "state") == "running"
    assert json_field(message(b'{"state": "running"}'), "missing") is None
    assert json_field(message(b"[1, 2]"), "state") is None
    assert json_field(message(b"not json"), "state") is None
    assert json_field(message(b""), "state") is None

"""Lesson 10's instruments (``mqtt_factory_lab.experiment.bridge``): marked payloads."""

from __future__ import annotations

import json

from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import ReceivedMessage
from mqtt_factory_lab.experiment.bridge import carrying, marked_alarm, marked_reading


def message(payload: bytes) -> ReceivedMessage:
    return ReceivedMessage(
        "factory/alarms/press-01/temperature", payload, qos=1, retain=False, dup=False
    )


def test_marked_payloads_are_valid_and_carry_their_marker():
    alarm, reading = marked_alarm("press-01", "c0ffee12"), marked_reading("oven-01", "c0ffee12")
    assert validate("alarm", alarm) == alarm and validate("telemetry", reading) == reading
    assert carrying("c0ffee12")(message(json.dumps(alarm).encode()))
    assert carrying("c0ffee12")(message(json.dumps(reading).encode()))
    assert not carrying("deadbeef")(message(json.dumps(alarm).encode())), (
        "a run must not count another run's copies as its own"
    )

"""Command parsing: every payload is either a Command or a rejection with a human reason.

A device listens on a topic anyone may publish to. Whatever arrives (random
bytes, broken JSON, a typo, NaN) must end as a :class:`sim.commands.Command`
or as :class:`sim.commands.CommandRejected` whose reason the sender can act
on, never as a crash. Hypothesis generates the payloads nobody would think of;
its settings are derandomized so every run tries the same ones.
"""

from __future__ import annotations

import doctest
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sim.commands
from mqtt_factory_lab.contract import PayloadError, validate
from sim.commands import (
    COMMANDS,
    FIELDS,
    MAX_PAYLOAD_BYTES,
    Command,
    CommandRejected,
    parse_command,
)
from sim.machines import DEVICE_KINDS, kind_spec

DETERMINISTIC = settings(derandomize=True, database=None, max_examples=300, deadline=None)
TS = 1767225600.0


def rejected(payload: bytes | str, kind: str | None = None) -> str:
    """The reason ``payload`` is rejected (fails the test if it is accepted)."""
    with pytest.raises(CommandRejected) as info:
        parse_command(payload.encode() if isinstance(payload, str) else payload, kind)
    return info.value.reason


def test_module_examples_still_run() -> None:
    assert doctest.testmod(sim.commands).failed == 0


# -- what is accepted ---------------------------------------------------------------


def test_the_seed_example_is_a_command() -> None:
    command = parse_command(b'{"command":"stop","reason":"manual"}')
    assert command == Command("stop", reason="manual")


def test_full_set_command() -> None:
    payload = {
        "command": "set",
        "setpoint": "speed",
        "value": 1.5,
        "reason": "operator request",
        "ts": TS,
        "command_id": "dash-7f3a",
        "issued_by": "dashboard",
    }
    command = parse_command(json.dumps(payload).encode(), kind="conveyor")
    assert command == Command("set", "speed", 1.5, "operator request", TS, "dash-7f3a", "dashboard")
    assert command.to_payload() == payload, "to_payload() gives back the fields that were sent"


def test_integer_value_is_a_number() -> None:
    assert parse_command(b'{"command":"set","setpoint":"rate","value":70}', "packer").value == 70.0


def test_schema_allows_setpoint_on_other_commands_and_so_do_we() -> None:
    command = parse_command(b'{"command":"stop","setpoint":"speed","value":1}', kind="oven")
    assert command.command == "stop", "only 'set' uses setpoint/value; others may carry them"


# -- what is rejected, and why ---------------------------------------------------------

BAD = [
    pytest.param(b"", "empty payload", id="empty"),
    pytest.param(b"   ", "empty payload", id="blank"),
    pytest.param(b"\xff\xfe{}", "not UTF-8 text (byte 0xff at position 0)", id="not-utf8"),
    pytest.param(b"stop", "not JSON", id="not-json"),
    pytest.param(b'{"command": "stop"', "not JSON", id="truncated-json"),
    pytest.param(b'["stop"]', "must be a JSON object, got an array of 1 item", id="array"),
    pytest.param(b'"stop"', 'got string "stop"', id="string"),
    pytest.param(b"null", "got null", id="null"),
    pytest.param(b"{}", "missing field 'command'", id="no-command"),
    pytest.param(b'{"command": 1}', "'command' must be a string, got number 1", id="command-int"),
    pytest.param(b'{"command": "launch"}', 'unknown command "launch"', id="unknown-command"),
    pytest.param(b'{"command": "STOP"}', "did you mean 'stop'? names are lower case", id="case"),
    pytest.param(b'{"command": "strat"}', "did you mean 'start'?", id="typo-command"),
    pytest.param(
        b'{"command": "stop", "reasn": "x"}',
        "unknown field \"reasn\" (did you mean 'reason'?)",
        id="typo-field",
    ),
    pytest.param(b'{"command": "stop", "reason": 5}', "'reason' must be a string", id="reason-int"),
    pytest.param(
        b'{"command": "stop", "issued_by": ""}',
        "'issued_by' must not be empty",
        id="empty-issued-by",
    ),
    pytest.param(b'{"command": "stop", "ts": "now"}', "'ts' must be a number", id="ts-text"),
    pytest.param(
        b'{"command": "stop", "ts": 1767225600000}', "looks like milliseconds", id="ts-millis"
    ),
    pytest.param(
        b'{"command": "set", "value": 1}', "command 'set' needs 'setpoint'", id="set-no-setpoint"
    ),
    pytest.param(
        b'{"command": "set", "setpoint": "speed"}', "command 'set' needs 'value'", id="set-no-value"
    ),
    pytest.param(
        b'{"command": "set", "setpoint": null, "value": 1}',
        "'setpoint' must be a string, got null",
        id="setpoint-null",
    ),
    pytest.param(
        b'{"command": "set", "setpoint": "speed", "value": "fast"}',
        "'value' must be a number, got string",
        id="value-text",
    ),
    pytest.param(
        b'{"command": "set", "setpoint": "speed", "value": true}',
        "'value' must be a number, got boolean true",
        id="value-bool",
    ),
    pytest.param(b'{"command": "set", "setpoint": "speed", "value": NaN}', "NaN", id="value-nan"),
    pytest.param(
        b'{"command": "set", "setpoint": "speed", "value": -Infinity}',
        "-Infinity",
        id="value-minus-infinity",
    ),
    pytest.param(
        b'{"command": "set", "setpoint": "speed", "value": 1e999}',
        "finite number",
        id="value-overflowing-float",
    ),
    pytest.param(
        b'{"command": "set", "setpoint": "speed", "value": 1' + b"0" * 400 + b"}",
        "finite number",
        id="value-huge-int",
    ),
    pytest.param(b"[" * 100_000, "at most 4096 bytes", id="too-big"),
    pytest.param(b"[" * 4000, "not", id="deeply-nested"),
]


@pytest.mark.parametrize(("payload", "expected"), BAD)
def test_bad_payload_is_rejected_with_a_reason(payload: bytes, expected: str) -> None:
    reason = rejected(payload)
    assert expected in reason, (
        f"payload {payload[:60]!r}: the reason {reason!r} should say {expected!r}"
    )
    assert "\n" not in reason and len(reason) < 400, "a reason is one readable line"


@pytest.mark.parametrize(
    ("kind", "payload", "expected"),
    [
        (
            "oven",
            '{"command":"set","setpoint":"speed","value":1}',
            "an oven has no setpoint 'speed'; its setpoints are: temperature",
        ),
        (
            "press",
            '{"command":"set","setpoint":"temp","value":1}',
            "its setpoints are: temperature, pressure",
        ),
        (
            "environment",
            '{"command":"set","setpoint":"temperature","value":20}',
            "has no setpoints",
        ),
        (
            "conveyor",
            '{"command":"set","setpoint":"speed","value":9}',
            "allowed range of setpoint 'speed': 0..3 m/s",
        ),
        (
            "oven",
            '{"command":"set","setpoint":"temperature","value":-40}',
            "allowed range of setpoint 'temperature': 20..300 C",
        ),
    ],
)
def test_set_is_checked_against_the_device_kind(kind: str, payload: str, expected: str) -> None:
    assert expected in rejected(payload, kind)


def test_unknown_kind_is_a_programming_error_not_a_rejection() -> None:
    with pytest.raises(ValueError, match="unknown device kind 'toaster'") as info:
        parse_command(b'{"command":"stop"}', kind="toaster")
    assert not isinstance(info.value, CommandRejected)


# -- properties -----------------------------------------------------------------------------

json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
texts = st.text(max_size=30)
# Objects shaped like commands, some fields right and some wrong, so the
# generator reaches the deeper checks instead of failing at "not an object".
near_commands = st.fixed_dictionaries(
    {"command": st.sampled_from(COMMANDS)},
    optional={
        "reason": texts | json_scalars,
        "ts": st.floats(1e9, 2e9) | json_scalars,
        "command_id": texts | json_scalars,
        "issued_by": texts | json_scalars,
        "setpoint": st.sampled_from(["speed", "temperature", "rate", "cycle_time", "pressure"])
        | json_scalars,
        "value": st.floats(-10, 400) | json_scalars,
    },
)
anything = json_values | near_commands


def outcome(payload: bytes, kind: str | None = None) -> Command | CommandRejected:
    """Parse; any exception other than CommandRejected fails the test."""
    try:
        return parse_command(payload, kind)
    except CommandRejected as error:
        assert error.reason.strip(), "a rejection must say why"
        return error


@DETERMINISTIC
@given(st.binary(max_size=300), st.sampled_from((None, *DEVICE_KINDS)))
def test_arbitrary_bytes_never_crash(payload: bytes, kind: str | None) -> None:
    outcome(payload, kind)


@DETERMINISTIC
@given(anything, st.sampled_from((None, *DEVICE_KINDS)))
def test_arbitrary_json_never_crashes(value: object, kind: str | None) -> None:
    outcome(json.dumps(value).encode(), kind)  # json.dumps writes NaN/Infinity: also tried


def valid_commands(kind: str | None = None) -> st.SearchStrategy[dict[str, object]]:
    """JSON objects the contract calls a valid command (for ``kind``, when given)."""
    optional = {
        "reason": texts,
        "ts": st.floats(946684800, 4102444800),
        "command_id": st.text(min_size=1, max_size=20),
        "issued_by": st.text(min_size=1, max_size=20),
    }
    others = st.fixed_dictionaries(
        {"command": st.sampled_from(("start", "stop", "reset"))}, optional=optional
    )
    if kind is None:
        setpoints = st.fixed_dictionaries(
            {
                "setpoint": st.text(min_size=1, max_size=20),
                "value": st.floats(allow_nan=False, allow_infinity=False),
            }
        )
    elif kind_spec(kind).setpoints:
        setpoints = st.sampled_from(kind_spec(kind).setpoints).flatmap(
            lambda sp: st.fixed_dictionaries(
                {"setpoint": st.just(sp.name), "value": st.floats(sp.minimum, sp.maximum)}
            )
        )
    else:
        return others
    sets = st.fixed_dictionaries({"command": st.just("set")}, optional=optional).flatmap(
        lambda base: setpoints.map(lambda extra: {**base, **extra})
    )
    return others | sets


@DETERMINISTIC
@given(
    st.sampled_from((None, *DEVICE_KINDS)).flatmap(
        lambda k: st.tuples(st.just(k), valid_commands(k))
    )
)
def test_valid_commands_always_parse_and_round_trip(case: tuple[str | None, dict]) -> None:
    kind, payload = case
    command = parse_command(json.dumps(payload).encode(), kind)
    assert command.to_payload() == payload, (
        f"{payload} parsed as {command}, which does not give the same payload back"
    )


@DETERMINISTIC
@given(anything | valid_commands())
def test_parser_and_contract_schema_agree(value: object) -> None:
    """Without a device kind, a payload is a command exactly when schemas/command validates it.

    (Checked below the size limit the parser adds, and with numbers that fit a
    float, where the two cannot differ.)
    """
    payload = json.dumps(value).encode()
    if len(payload) > MAX_PAYLOAD_BYTES:
        return
    result = outcome(payload)
    try:
        validate("command", payload)
        schema_ok, schema_reason = True, ""
    except PayloadError as error:
        schema_ok, schema_reason = False, str(error)
    parsed_ok = isinstance(result, Command)
    assert parsed_ok == schema_ok, (
        f"payload {payload[:120]!r}: the parser says "
        f"{'OK' if parsed_ok else repr(result.reason)} but the contract says "
        f"{'OK' if schema_ok else schema_reason}"
    )


def test_field_names_match_the_contract_schema() -> None:
    from mqtt_factory_lab.contract import schema

    assert set(FIELDS) == set(schema("command")["properties"]), (
        "sim.commands.FIELDS and schemas/command.schema.json must list the same fields"
    )


def test_describe_is_short_and_readable() -> None:
    assert Command("set", "speed", 1.5, reason="rush order").describe() == "set speed=1.5"
    assert Command("stop", issued_by="dashboard").describe() == "stop"

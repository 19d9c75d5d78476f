"""The payload contract: the schemas in ``schemas/`` and the sentences ``mqtt_factory_lab.contract`` makes.

These tests need no broker. They pin down three things the lessons rely on:

* the schema files are valid draft 2020-12, self-describing, and their own examples pass;
* every way of breaking the contract listed below is rejected, and the message names the
  field and says what was expected, because that message is what a student reads;
* a topic maps to the schema of its messages, whatever the (multi-level) topic root.
"""

from __future__ import annotations

import copy
import json
import math
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqtt_factory_lab import contract
from mqtt_factory_lab.contract import PayloadError, schema_for_topic, validate, validate_message
from sim.machines import DEVICE_KINDS
from sim.topics import QOS, RETAINED, Topics

DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
ID_FORMAT = re.compile(
    r"^https://mqtt-factory-lab\.dev/schemas/(?P<name>[a-z_]+)/v(?P<major>\d+)\.json$"
)
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")
TS = 1767225600.25  # 2026-01-01, in seconds

# Deterministic and quick: the same examples on every run, no example database on disk.
FUZZ = settings(
    derandomize=True,
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def example(name: str, index: int = 0) -> dict[str, Any]:
    """A fresh copy of the schema's own example, to break in one place."""
    return copy.deepcopy(contract.schema(name)["examples"][index])


def changed(name: str, index: int = 0, **fields: Any) -> dict[str, Any]:
    payload = example(name, index)
    payload.update(fields)
    return payload


def without(name: str, *fields: str, index: int = 0) -> dict[str, Any]:
    payload = example(name, index)
    for field in fields:
        payload.pop(field)
    return payload


def nested(name: str, path: str, value: Any, index: int = 0) -> dict[str, Any]:
    """``nested("state", "counters.produced", -1)``; a value of ``...`` deletes the key."""
    payload = example(name, index)
    *parents, last = path.split(".")
    node = payload
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return payload


# -- the files themselves ------------------------------------------------------------------


def test_every_schema_passes_the_draft_2020_12_metaschema_and_its_refs_resolve() -> None:
    checked = contract.check_all()
    assert set(checked) >= {
        "common",
        "telemetry",
        "alarm",
        "command",
        "state",
        "status",
        "error_event",
        "decision",
        "event",
    }, f"schemas/ is missing payload types: found only {checked}"


@pytest.mark.parametrize("name", contract.names())
def test_schema_describes_itself(name: str) -> None:
    contents = contract.schema(name)
    assert contents.get("$schema") == DRAFT_2020_12, (
        f"{name}.schema.json must declare draft 2020-12 in $schema, found {contents.get('$schema')!r}"
    )
    match = ID_FORMAT.match(contents.get("$id", ""))
    assert match and match["name"] == name, (
        f"{name}.schema.json has $id {contents.get('$id')!r}; expected "
        f"https://mqtt-factory-lab.dev/schemas/{name}/v<major>.json so $refs can find it"
    )
    assert contents.get("title"), f"{name}.schema.json needs a title"
    assert len(contents.get("description", "")) > 60, (
        f"{name}.schema.json needs a description that teaches what the message is"
    )
    version = contents.get("x-schema-version", "")
    assert SEMVER.match(version), f"{name}: x-schema-version {version!r} is not MAJOR.MINOR.PATCH"
    assert version.split(".")[0] == match["major"], (
        f"{name}: x-schema-version {version} disagrees with the v{match['major']} in its $id"
    )


@pytest.mark.parametrize(
    ("name", "index"),
    [(n, i) for n in contract.payload_names() for i in range(len(contract.schema(n)["examples"]))],
)
def test_schema_example_is_valid(name: str, index: int) -> None:
    payload = contract.schema(name)["examples"][index]
    assert validate(name, payload) is payload
    assert validate(name, json.dumps(payload).encode()) == payload, "the same example as bytes"


@pytest.mark.parametrize("name", contract.payload_names())
def test_payload_schema_has_examples(name: str) -> None:
    assert contract.schema(name).get("examples"), f"{name}.schema.json has no examples"


@pytest.mark.parametrize("definition", sorted(contract.schema("common")["$defs"]))
def test_shared_definition_examples_fit_their_definition(definition: str) -> None:
    ref = f"{contract.schema('common')['$id']}#/$defs/{definition}"
    check = contract.FactoryValidator({"$ref": ref}, registry=contract.registry())
    for value in contract.schema("common")["$defs"][definition].get("examples", []):
        errors = [e.message for e in check.iter_errors(value)]
        assert not errors, f"common $defs/{definition} example {value!r} fails: {errors}"


@pytest.mark.parametrize("kind", sorted(QOS))
def test_schema_description_states_topic_qos_and_retain_as_sim_topics_does(kind: str) -> None:
    name = contract.TOPIC_SCHEMAS[kind][0]
    text = contract.schema(name)["description"]
    retained = "RETAINED" if kind in RETAINED else "NOT retained"
    for needed in (f"<root>/{kind}/", f"QoS {QOS[kind]}", retained):
        assert needed in text, (
            f"the {name} schema's description should say {needed!r} (sim/topics.py publishes "
            f"{kind} at QoS {QOS[kind]}, {retained.lower()}); it says: {text}"
        )


def test_every_topic_kind_in_sim_topics_has_a_schema() -> None:
    assert set(contract.TOPIC_SCHEMAS) == set(QOS), (
        f"sim/topics.py knows {sorted(QOS)}, mqtt_factory_lab/contract/ maps {sorted(contract.TOPIC_SCHEMAS)}"
    )


# -- valid payloads ------------------------------------------------------------------------


def test_the_seeds_manual_stop_command_is_valid() -> None:
    # python -m vfactory.cli pub --topic factory/commands/dashboard/conveyor
    #   --message '{"command":"stop","reason":"manual"}' --qos 1
    raw = b'{"command":"stop","reason":"manual"}'
    assert validate_message("factory/commands/dashboard/conveyor", raw) == {
        "command": "stop",
        "reason": "manual",
    }


def test_validate_accepts_a_dict_bytes_or_str_and_returns_the_payload() -> None:
    payload = example("telemetry")
    text = json.dumps(payload)
    assert validate("telemetry", payload) is payload
    assert validate("telemetry", text) == payload
    assert validate("telemetry", text.encode()) == payload
    assert validate("telemetry", bytearray(text.encode())) == payload


def test_extra_fields_are_allowed_except_in_commands() -> None:
    reading = changed("telemetry", batch_id="B-17")
    assert validate("telemetry", reading) is reading, "new telemetry fields must not break readers"
    with pytest.raises(PayloadError, match="'priority' is not allowed"):
        validate("command", {"command": "stop", "priority": "high"})


def test_a_last_will_status_is_valid_and_online_needs_no_reason() -> None:
    validate("status", {"ts": TS, "device_id": "press", "status": "offline", "reason": "last-will"})
    validate("status", {"ts": TS, "device_id": "press", "status": "online"})


# -- invalid payloads: each rejected with a sentence naming the field -----------------------

INVALID = [
    pytest.param(
        "telemetry",
        without("telemetry", "seq"),
        "seq",
        "is required",
        id="telemetry without a sequence number is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", value="182.5"),
        "value",
        "the string '182.5'",
        id="a reading sent as a string is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", value=math.nan),
        "value",
        "NaN",
        id="a NaN reading is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", value=math.inf),
        "value",
        "Infinity",
        id="an infinite reading is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", seq=-1),
        "seq",
        "at least 0",
        id="a negative sequence number is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", seq=1.5),
        "seq",
        "whole number",
        id="a fractional sequence number is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", ts=1767225600125),
        "ts",
        "milliseconds",
        id="a timestamp in milliseconds is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", ts=41.0),
        "ts",
        "at least",
        id="plant time given as ts is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", device_id="line1/press"),
        "device_id",
        "no '/'",
        id="a device id containing a slash is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", device_id="press\n"),
        "device_id",
        "letters",
        id="a device id with a trailing newline is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", device_id="p" * 65),
        "device_id",
        "64",
        id="a device id longer than 64 characters is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", sensor="temp#1"),
        "sensor",
        "one topic level",
        id="a sensor name with a wildcard character is rejected",
    ),
    pytest.param(
        "telemetry",
        changed("telemetry", plant_time=-1),
        "plant_time",
        "at least 0",
        id="negative plant time is rejected",
    ),
    pytest.param(
        "alarm",
        changed("alarm", state="active"),
        "state",
        "'raised', 'cleared'",
        id="an alarm state other than raised or cleared is rejected",
    ),
    pytest.param(
        "alarm",
        changed("alarm", severity="info"),
        "severity",
        "'warning', 'critical'",
        id="an alarm severity other than warning or critical is rejected",
    ),
    pytest.param(
        "alarm",
        changed("alarm", low="none"),
        "low",
        "a finite number or null",
        id="an alarm limit written as the word none is rejected",
    ),
    pytest.param(
        "alarm",
        without("alarm", "high"),
        "high",
        "is required",
        id="an alarm must send high even when it is null",
    ),
    pytest.param(
        "command",
        {"command": "pause"},
        "command",
        "'start', 'stop', 'reset', 'set'",
        id="an unknown command is rejected",
    ),
    pytest.param(
        "command",
        {"command": "set", "setpoint": "speed"},
        "value",
        "when 'command' is 'set'",
        id="a set command without a value is rejected",
    ),
    pytest.param(
        "command",
        {"command": "set", "value": 2},
        "setpoint",
        "when 'command' is 'set'",
        id="a set command without a setpoint is rejected",
    ),
    pytest.param(
        "command",
        {"command": "set", "setpoint": "speed", "value": "fast"},
        "value",
        "finite number",
        id="a set command with a non-numeric value is rejected",
    ),
    pytest.param(
        "command",
        {"command": "stop", "reasn": "manual"},
        "reasn",
        "did you mean 'reason'",
        id="a misspelled optional command field is rejected with a suggestion",
    ),
    pytest.param(
        "command",
        {"reason": "manual"},
        "command",
        "is required",
        id="a command without the command field is rejected",
    ),
    pytest.param(
        "state",
        changed("state", state="paused"),
        "state",
        "'running', 'stopped', 'fault'",
        id="a state other than running, stopped or fault is rejected",
    ),
    pytest.param(
        "state",
        changed("state", kind="drill"),
        "kind",
        "'press', 'conveyor'",
        id="an unknown device kind is rejected",
    ),
    pytest.param(
        "state",
        nested("state", "counters.commands_rejected", ...),
        "counters.commands_rejected",
        "is required",
        id="a state without one of the four counters is rejected",
    ),
    pytest.param(
        "state",
        nested("state", "counters.produced", -1),
        "counters.produced",
        "at least 0",
        id="a negative counter is rejected",
    ),
    pytest.param(
        "state",
        nested("state", "setpoints.speed", "fast"),
        "setpoints.speed",
        "finite number",
        id="a setpoint that is not a number is rejected",
    ),
    pytest.param(
        "status",
        changed("status", status="connected"),
        "status",
        "'online', 'offline'",
        id="a status other than online or offline is rejected",
    ),
    pytest.param(
        "status",
        changed("status", reason="last-will"),
        "reason",
        "when 'status' is 'online'",
        id="an online status with the last-will reason is rejected",
    ),
    pytest.param(
        "status",
        changed("status", 1, reason="crashed"),
        "reason",
        "'shutdown', 'last-will'",
        id="an offline reason other than shutdown or last-will is rejected",
    ),
    pytest.param(
        "error_event",
        changed("error_event", received="x" * 201),
        "received",
        "at most 200",
        id="a rejected command's raw payload longer than 200 characters is rejected",
    ),
    pytest.param(
        "event",
        changed("event", event="alarm"),
        "event",
        "'command_rejected', 'decision'",
        id="an event that is neither command_rejected nor decision is rejected",
    ),
    pytest.param(
        "event",
        nested("event", "action.command", ..., index=1),
        "action.command",
        "controller decision event",
        id="a decision without the command it sent is rejected as a decision",
    ),
    pytest.param(
        "event",
        changed("event", ts=math.nan),
        "ts",
        "NaN",
        id="NaN is rejected inside a schema the event union refers to",
    ),
    pytest.param(
        "event",
        nested("event", "received", 42),
        "received",
        "a string",
        id="a rejected-command event whose received field is not text is rejected",
    ),
    pytest.param(
        "decision",
        nested("decision", "trigger.state", "active"),
        "trigger.state",
        "'raised', 'cleared'",
        id="a decision triggered by an unknown alarm state is rejected",
    ),
]


@pytest.mark.parametrize(("name", "payload", "field", "explains"), INVALID)
def test_invalid_payload_is_rejected_with_a_sentence(
    name: str, payload: dict[str, Any], field: str, explains: str
) -> None:
    with pytest.raises(PayloadError) as caught:
        validate(name, payload)
    message = str(caught.value)
    assert message.startswith(f"the {name} payload is invalid: "), message
    assert f"'{field}'" in message, f"the message should name field {field!r}: {message}"
    assert explains in message, f"the message should say {explains!r}: {message}"
    assert caught.value.schema_name == name
    assert caught.value.payload is payload
    assert caught.value.errors, "the jsonschema errors should be kept for tools"


def test_the_message_reads_as_one_sentence_a_student_understands() -> None:
    with pytest.raises(PayloadError) as caught:
        validate("state", changed("state", state="paused"))
    assert str(caught.value) == (
        "the state payload is invalid: field 'state' must be one of 'running', 'stopped', "
        "'fault', but it is 'paused'"
    )


def test_at_most_three_problems_are_listed_and_the_rest_counted() -> None:
    with pytest.raises(PayloadError) as caught:
        validate("telemetry", {"device_id": "press"})
    missing = ["ts", "sensor", "value", "unit", "seq"]
    assert len(caught.value.problems) == len(missing), caught.value.problems
    assert str(caught.value).endswith("(and 2 more problems)"), str(caught.value)


def test_a_payload_that_is_not_an_object_is_rejected() -> None:
    with pytest.raises(PayloadError, match="must be a JSON object, but it is a list"):
        validate("event", b"[1, 2]")


@pytest.mark.parametrize(
    ("raw", "explains"),
    [
        pytest.param(b"stop", "is not JSON", id="plain text is not JSON"),
        pytest.param(b'{"command": "stop"', "is not JSON", id="a truncated object is not JSON"),
        pytest.param(b"\xff\xfe{}", "not UTF-8", id="bytes that are not UTF-8 are explained"),
        pytest.param(b"", "empty", id="an empty payload is explained"),
        pytest.param(
            b'{"command": "set", "setpoint": "speed", "value": NaN}',
            "NaN",
            id="NaN in the JSON text is rejected",
        ),
    ],
)
def test_a_payload_that_is_not_json_gives_a_clear_error(raw: bytes, explains: str) -> None:
    with pytest.raises(PayloadError) as caught:
        validate("command", raw)
    message = str(caught.value)
    assert message.startswith("the command payload is "), message
    assert explains in message, f"expected the message to mention {explains!r}: {message}"
    assert caught.value.schema_name == "command"
    assert caught.value.payload == raw
    assert caught.value.problems, "even a parse failure should list its problem"


def test_unknown_schema_names_and_the_shared_definitions_are_refused() -> None:
    with pytest.raises(KeyError, match="telemetry"):
        contract.schema("telemetryy")
    with pytest.raises(ValueError, match="not a payload"):
        validate("common", {})


# -- topics ------------------------------------------------------------------------------

ROOT = "lab/3f9a1c2b/factory"


TOPIC_CASES = [
    ("factory/telemetry/press/temperature", "factory", "telemetry"),
    ("factory/alarms/oven-01/temperature", "factory", "alarm"),
    ("factory/commands/dashboard/conveyor", "factory", "command"),
    ("factory/state/press", "factory", "state"),
    ("factory/status/press", "factory", "status"),
    ("factory/events/controller", "factory", "event"),
    (f"{ROOT}/telemetry/oven-01/temperature", ROOT, "telemetry"),
    (f"{ROOT}/state/robot_arm", ROOT, "state"),
    (f"{ROOT}/events/conveyor", f"{ROOT}/", "event"),
    ("factory/state/press", ROOT, None),
    (f"{ROOT}/state/press", "factory", None),
    ("factory2/state/press", "factory", None),
    ("factory/telemetry/press", "factory", None),
    ("factory/state/press/extra", "factory", None),
    ("factory/state/", "factory", None),
    ("factory/state/+", "factory", None),
    ("factory/unknown/press", "factory", None),
    ("factory", "factory", None),
]


def _topic_case(topic: str, root: str, expected: str | None) -> Any:
    verdict = f"is {expected}" if expected else "is not a contract topic"
    return pytest.param(topic, root, expected, id=f"{topic} under root {root} {verdict}")


@pytest.mark.parametrize(("topic", "root", "expected"), [_topic_case(*c) for c in TOPIC_CASES])
def test_topic_maps_to_the_schema_of_its_messages(
    topic: str, root: str, expected: str | None
) -> None:
    assert schema_for_topic(topic, root=root) == expected, (
        f"schema_for_topic({topic!r}, root={root!r}) should be {expected!r}"
    )


def test_topics_built_by_sim_topics_map_to_their_schemas() -> None:
    topics = Topics(ROOT)
    built = {
        topics.telemetry("press", "force"): "telemetry",
        topics.alarm("press", "force"): "alarm",
        topics.command("controller", "press"): "command",
        topics.state("press"): "state",
        topics.status("press"): "status",
        topics.events("controller"): "event",
    }
    assert {t: schema_for_topic(t, root=ROOT) for t in built} == built


def test_validate_message_checks_the_payload_names_the_device_of_its_topic() -> None:
    state = example("state")  # device_id "conveyor"
    assert validate_message(f"{ROOT}/state/conveyor", json.dumps(state), root=ROOT) == state
    with pytest.raises(PayloadError) as caught:
        validate_message(f"{ROOT}/state/oven-01", state, root=ROOT)
    message = str(caught.value)
    assert "does not match its topic" in message and "'conveyor'" in message, message
    assert "'oven-01'" in message, message


def test_validate_message_on_an_unknown_topic_names_the_contracts_topics() -> None:
    with pytest.raises(PayloadError) as caught:
        validate_message("factory/telemetry/press", example("telemetry"))
    assert caught.value.schema_name is None
    assert "factory/telemetry/<device_id>/<sensor>" in str(caught.value), str(caught.value)


# -- generated payloads ---------------------------------------------------------------------

device_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)
levels = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
stamps = st.floats(min_value=946684800, max_value=4102444800)
reals = st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(10**6), 10**6)
counts = st.integers(min_value=0, max_value=2**53)
texts = st.text(max_size=40)
counter_names = ("produced", "alarms_raised", "commands_accepted", "commands_rejected")

STRATEGIES: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "telemetry": st.fixed_dictionaries(
        {
            "ts": stamps,
            "device_id": device_ids,
            "sensor": levels,
            "value": reals,
            "unit": st.sampled_from(["C", "mm/s", "bar", "%", ""]),
            "seq": counts,
        },
        optional={"plant_time": st.floats(min_value=0, max_value=1e9)},
    ),
    "alarm": st.fixed_dictionaries(
        {
            "ts": stamps,
            "device_id": device_ids,
            "sensor": levels,
            "state": st.sampled_from(["raised", "cleared"]),
            "value": reals,
            "low": st.none() | reals,
            "high": st.none() | reals,
            "severity": st.sampled_from(["warning", "critical"]),
            "message": texts,
        }
    ),
    "command": st.one_of(
        st.fixed_dictionaries(
            {"command": st.sampled_from(["start", "stop", "reset"])},
            optional={"reason": texts, "ts": stamps, "command_id": levels, "issued_by": levels},
        ),
        st.fixed_dictionaries(
            {"command": st.just("set"), "setpoint": levels, "value": reals},
            optional={"reason": texts, "ts": stamps, "command_id": levels},
        ),
    ),
    "state": st.fixed_dictionaries(
        {
            "ts": stamps,
            "device_id": device_ids,
            "kind": st.sampled_from(contract.device_kinds()),
            "state": st.sampled_from(["running", "stopped", "fault"]),
            "setpoints": st.dictionaries(levels, reals, max_size=3),
            "counters": st.fixed_dictionaries({name: counts for name in counter_names}),
        },
        optional={"reason": texts},
    ),
    "status": st.fixed_dictionaries({"ts": stamps, "device_id": device_ids}).flatmap(
        lambda base: st.sampled_from(
            [
                {"status": "online", "reason": "connected"},
                {"status": "online"},
                {"status": "offline", "reason": "shutdown"},
                {"status": "offline", "reason": "last-will"},
                {"status": "offline"},
            ]
        ).map(lambda extra: {**base, **extra})
    ),
    "error_event": st.fixed_dictionaries(
        {
            "ts": stamps,
            "device_id": device_ids,
            "event": st.just("command_rejected"),
            "reason": texts,
            "topic": levels.map(lambda d: f"factory/commands/dashboard/{d}"),
            "received": st.text(max_size=200),
        }
    ),
    "decision": st.fixed_dictionaries(
        {
            "ts": stamps,
            "controller_id": device_ids,
            "event": st.just("decision"),
            "trigger": st.fixed_dictionaries(
                {
                    "topic": st.just("factory/alarms/oven/temperature"),
                    "device_id": device_ids,
                    "sensor": levels,
                    "state": st.sampled_from(["raised", "cleared"]),
                }
            ),
            "action": st.fixed_dictionaries(
                {"device_id": device_ids, "command": st.sampled_from(["start", "stop"])}
            ),
            "reason": texts,
        }
    ),
}
EVENT_KINDS = {"command_rejected": "error_event", "decision": "decision"}
ENUM_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "alarm": {"state": ("raised", "cleared"), "severity": ("warning", "critical")},
    "command": {"command": ("start", "stop", "reset", "set")},
    "state": {
        "state": ("running", "stopped", "fault"),
        "kind": DEVICE_KINDS,  # the simulator's kinds are the contract's
    },
    "status": {"status": ("online", "offline")},
    "error_event": {"event": ("command_rejected", "decision")},
    "decision": {"event": ("command_rejected", "decision")},
}
NUMBER_FIELDS = {
    "telemetry": ["ts", "value", "seq"],
    "alarm": ["ts", "value"],
    "state": ["ts"],
    "status": ["ts"],
    "error_event": ["ts"],
    "decision": ["ts"],
}


def _required(name: str, payload: dict[str, Any]) -> list[str]:
    fields = list(contract.schema(name)["required"])
    if name == "command" and payload["command"] == "set":
        fields += ["setpoint", "value"]
    return fields


def _also_as_event(name: str) -> list[str]:
    """A generated event kind must pass both its own schema and the ``event`` union."""
    return [name, "event"] if name in EVENT_KINDS.values() else [name]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@FUZZ
@given(data=st.data())
def test_generated_payloads_within_the_contract_are_valid(name: str, data: st.DataObject) -> None:
    payload = data.draw(STRATEGIES[name], label=name)
    raw = json.dumps(payload, allow_nan=False).encode()
    for schema_name in _also_as_event(name):
        assert validate(schema_name, raw) == payload


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@FUZZ
@given(data=st.data())
def test_generated_payload_missing_a_required_field_is_rejected(
    name: str, data: st.DataObject
) -> None:
    payload = data.draw(STRATEGIES[name], label=name)
    field = data.draw(st.sampled_from(_required(name, payload)), label="dropped")
    del payload[field]
    for schema_name in _also_as_event(name):
        with pytest.raises(PayloadError) as caught:
            validate(schema_name, payload)
        assert f"'{field}'" in str(caught.value), (
            f"dropped {field!r} from a {name} payload; the message should name it: {caught.value}"
        )


@pytest.mark.parametrize("name", sorted(ENUM_FIELDS))
@FUZZ
@given(data=st.data())
def test_generated_payload_with_a_value_outside_its_enum_is_rejected(
    name: str, data: st.DataObject
) -> None:
    payload = data.draw(STRATEGIES[name], label=name)
    field = data.draw(st.sampled_from(sorted(ENUM_FIELDS[name])), label="field")
    allowed = ENUM_FIELDS[name][field]
    payload[field] = data.draw(
        st.text(min_size=1, max_size=12).filter(lambda v: v not in allowed), label="new value"
    )
    with pytest.raises(PayloadError) as caught:
        validate(name, payload)
    assert f"'{field}'" in str(caught.value), str(caught.value)


@pytest.mark.parametrize("name", sorted(NUMBER_FIELDS))
@FUZZ
@given(data=st.data())
def test_generated_payload_with_a_number_that_is_not_a_finite_number_is_rejected(
    name: str, data: st.DataObject
) -> None:
    payload = data.draw(STRATEGIES[name], label=name)
    field = data.draw(st.sampled_from(NUMBER_FIELDS[name]), label="field")
    payload[field] = data.draw(
        st.sampled_from([math.nan, math.inf, -math.inf, None, True]) | reals.map(str),
        label="new value",
    )
    for schema_name in _also_as_event(name):
        with pytest.raises(PayloadError) as caught:
            validate(schema_name, payload)
        assert f"'{field}'" in str(caught.value), str(caught.value)

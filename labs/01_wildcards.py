"""Lesson 01 — Topics and wildcards: asking the factory the right question.

Every MQTT message is published to a **topic name**, a string of levels
separated by ``/``. A subscriber does not name topics; it gives a **topic
filter**, and the broker hands it every message whose topic the filter
matches. The factory's topics form a tree (the seed's "Topic Structure")::

    factory/telemetry/<device>/<sensor>     readings, QoS 0
    factory/alarms/<device>/<sensor>        raised / cleared, QoS 1
    factory/commands/<publisher>/<device>   start, stop, reset, set, QoS 1
    factory/state/<device>                  running / stopped / fault, retained
    factory/status/<device>                 online / offline, retained

The kind of message comes first and the device second, so one filter gets
"every alarm of every device" and another "everything about the press". A
filter may use two wildcards (MQTT 3.1.1 §4.7, MQTT 5 §4.7):

* ``+`` matches **exactly one level**, whatever it holds (even an empty one),
  at any position: ``factory/telemetry/+/temperature`` gets the temperature of
  every device, and not ``factory/telemetry/press/pressure``.
* ``#`` matches **any number of levels, including none**, and only as the last
  level: ``factory/alarms/#`` gets every alarm — and a message published to
  ``factory/alarms`` itself (the parent).
* A wildcard is a whole level: ``fac+``, ``#x`` and ``factory/#/x`` are not
  filters. Paho refuses to send them; a broker that receives one refuses it
  (MQTT 3.1.1: a protocol violation, the connection is closed; MQTT 5: a
  DISCONNECT with a reason code such as 0x81 *Malformed Packet*, or a SUBACK
  with 0x8F *Topic Filter invalid*).
* Wildcards are for subscribers only: a PUBLISH whose topic name contains
  ``+`` or ``#`` is refused (MQTT 3.1.1 §3.3.2.1, MQTT 5 §3.3.2.1).
* Topics starting with ``$`` (``$SYS/...``, the broker's own statistics) are
  matched by neither a leading ``#`` nor a leading ``+`` (§4.7.2): a client
  that subscribes to ``#`` does not drown in broker internals. Ask for them
  by name: ``$SYS/#``.
* Levels are compared exactly: ``factory/state/Press`` is not
  ``factory/state/press``, and ``factory//x`` has an empty second level that
  ``factory/+/x`` matches.

Pitfalls:

* ``factory/telemetry/#`` for "every temperature": ``#`` takes every level
  below, so pressures, speeds and humidities come too. Fix one level and leave
  another open with ``+``.
* ``factory/+/robot_arm/#`` for "everything about the robot arm" (the seed's
  own exercise) misses its commands: in ``commands/<publisher>/<device>`` the
  device is the *third* level. Commands to the robot arm need their own
  filter, ``factory/commands/+/robot_arm``.
* A device subscribed to ``factory/commands/#`` receives every machine's
  commands; obeying them stops the press when someone stops the conveyor. A
  device subscribes to ``factory/commands/+/<its id>`` — any publisher, only
  its own commands.

Try it (the seed's exercise 1), with the lab's factory running
(``python -m sim.run_all --anomaly``)::

    python -m sim.cli sub --topic 'factory/telemetry/+/temperature' --qos 0
    python -m sim.cli sub --topic 'factory/+/robot_arm/#' --qos 1
    python -m sim.cli sub --topic 'factory/commands/+/robot_arm' --qos 1

Your programs in this lesson: ``[roles.device]`` of your manifest (started once
per kind, with the seed's names as ``{device_id}``: press, conveyor, robot_arm,
oven, packer, environment; with the ``anomaly`` option, so alarms happen) and
a ``[filters]`` table with one topic filter per question of
:data:`~mqtt_factory_lab.experiment.topics.FILTER_QUESTIONS` (write the topic root as ``{root}``)::

    [filters]
    every_temperature = "{root}/telemetry/+/temperature"

Each filter is subscribed while the factory runs and must get exactly the
topics that answer its question. Your devices must publish on exactly the
tree above and obey only their own commands — and survive the commands they do not
understand: a command is input from the network (anyone allowed to publish there may send an
unknown command or a payload that is not JSON), so a device rejects it (a
``command_rejected`` event on ``factory/events/<device>``, a log line) and keeps running.

Run it: ``pytest labs/01_wildcards.py -v`` (``-m broker`` for the broker's
rules only, ``-m solution --solution PATH`` to grade a solution).
"""

from __future__ import annotations

import itertools

import paho.mqtt.client as mqtt
import pytest

from mqtt_factory_lab.brokers import LOG
from mqtt_factory_lab.brokers.mosquitto_log import subscriptions
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.packets import PUBACK, SUBACK, RawConnection, describe_answer, refused
from mqtt_factory_lab.experiment import json_field
from mqtt_factory_lab.experiment.topics import (
    MatchCase,
    SeedFactoryRun,
    check_case,
    dollar_topics_seen,
    filter_problems,
    obeyed_set,
    off_tree_topics,
    run_seed_factory,
    set_command,
    setpoint_answer,
    wait_answer_while_running,
)
from mqtt_factory_lab.lint_topics import lint_topic

pytestmark = [pytest.mark.lesson(1)]


# The seed's tree, the [filters] questions (FILTER_QUESTIONS), the filters' machinery and the
# devices' run live in mqtt_factory_lab.experiment.topics; the cases and the experiments are
# the chapter.


PLUS_CASES = [
    MatchCase(
        "every-temperature",
        "{root}/telemetry/+/temperature",
        ("telemetry/press/temperature", "telemetry/oven/temperature"),
        (
            "telemetry/press/pressure",
            "telemetry/temperature",
            "telemetry/line1/press/temperature",
            "telemetry/press/temperature/raw",
        ),
        "`+` matches exactly one level: one device name between telemetry and temperature, "
        "never none and never two.",
    ),
    MatchCase(
        "last-level",
        "{root}/state/+",
        ("state/press", "state/oven"),
        ("state", "state/press/extra", "status/press"),
        "`+` as the last level matches one level, not the parent and not deeper levels.",
    ),
    MatchCase(
        "two-pluses",
        "{root}/+/press/+",
        ("telemetry/press/temperature", "alarms/press/pressure"),
        ("state/press", "telemetry/oven/temperature", "commands/dashboard/press"),
        "Each `+` matches one level of its own; the levels between them must match exactly.",
    ),
    MatchCase(
        "first-level",
        "+/{tail}/status/press",
        ("status/press",),
        ("status/oven", "state/press"),
        "`+` may stand at any position, the first one included.",
    ),
]

HASH_CASES = [
    MatchCase(
        "every-level-below",
        "{root}/telemetry/#",
        (
            "telemetry/press/temperature",
            "telemetry/press/pressure",
            "telemetry/oven/temperature/raw",
        ),
        ("alarms/press/temperature", "telemetry-old/press/temperature"),
        "`#` matches every level below it, however many: a whole subtree.",
    ),
    MatchCase(
        "whole-tree",
        "{root}/#",
        ("", "state/press", "telemetry/press/temperature"),
        (),
        "`{root}/#` gets the whole tree, the root topic itself included (factory/# gets factory).",
    ),
    MatchCase(
        "includes-the-parent",
        "{root}/alarms/#",
        ("alarms", "alarms/press/temperature"),
        ("alarmsx", "state/press"),
        "`#` also matches the parent level itself: factory/alarms/# gets factory/alarms.",
    ),
    MatchCase(
        "seed-robot-arm-filter",
        "{root}/+/robot_arm/#",
        (
            "telemetry/robot_arm/joint_temp",
            "alarms/robot_arm/cycle_time",
            "state/robot_arm",
            "status/robot_arm",
        ),
        ("commands/dashboard/robot_arm", "state/press"),
        "`+` then `#`: the robot arm as the second level, anything (or nothing) below. A "
        "command to the robot arm has it as the third level, so this filter misses it.",
    ),
]

EXACT_CASES = [
    MatchCase(
        "case-sensitive",
        "{root}/state/press",
        ("state/press",),
        ("state/Press", "State/press", "state/PRESS"),
        "Topic levels are compared byte for byte: Press is not press.",
    ),
    MatchCase(
        "empty-level-is-a-level",
        "{root}/telemetry/+/temperature",
        ("telemetry//temperature",),
        ("telemetry/temperature",),
        "An empty level is still a level: telemetry//temperature has three, and `+` "
        "matches the empty one.",
    ),
    MatchCase(
        "trailing-slash",
        "{root}/state/+",
        ("state/press",),
        ("state/press/",),
        "A trailing slash adds an empty level: state/press/ is not state/press.",
    ),
]


@pytest.mark.broker
@pytest.mark.parametrize("case", PLUS_CASES, ids=lambda c: c.name)
@pytest.mark.needs("wildcards")
@pytest.mark.spec("MQTT-3.3.2-3")
def test_plus_matches_exactly_one_level_at_any_position(mqtt_client, topic_root, case, protocol):
    check_case(mqtt_client, topic_root, case, protocol)


@pytest.mark.broker
@pytest.mark.parametrize("case", HASH_CASES, ids=lambda c: c.name)
@pytest.mark.needs("wildcards")
@pytest.mark.spec("MQTT-3.3.2-3")
def test_hash_matches_every_level_below_including_the_parent(
    mqtt_client, topic_root, case, protocol
):
    check_case(mqtt_client, topic_root, case, protocol)


@pytest.mark.broker
@pytest.mark.parametrize("case", EXACT_CASES, ids=lambda c: c.name)
@pytest.mark.spec("MQTT-3.3.2-3")
def test_levels_match_exactly_case_and_empty_levels_included(
    mqtt_client, topic_root, case, protocol
):
    check_case(mqtt_client, topic_root, case, protocol)


@pytest.mark.broker
@pytest.mark.needs("wildcards")
@pytest.mark.spec("MQTT-4.7.2-1")
def test_dollar_topics_are_not_matched_by_a_leading_wildcard(
    mqtt_client, topic_root, protocol, broker_capabilities
):
    # Every broker is judged, $SYS or not: the experiment offers a $-topic of its own.
    sys_detail = broker_capabilities.items["sys"].detail if broker_capabilities.has("sys") else None
    leaked, offered = dollar_topics_seen(mqtt_client, topic_root, protocol, sys_detail)
    assert not leaked, (
        f"A filter that starts with a wildcard (#, +/probe, +/broker/#) must not match topics "
        f"that start with $ (MQTT-4.7.2-1): they are the broker's own, asked for by name. "
        f"$-topics here: {', '.join(offered) or 'none the broker showed by name'}. The "
        f"wildcard subscriber got: {', '.join(leaked[:5])}"
    )


#: '#' alone or after '/', and last (3.1.1's MQTT-4.7.1-2, MQTT 5's 4.7.1-1); '+' a whole level
#: (3.1.1's MQTT-4.7.1-3, MQTT 5's 4.7.1-2)
HASH_RULE = pytest.mark.spec(mqtt311=["MQTT-4.7.1-2"], mqtt5=["MQTT-4.7.1-1"])
PLUS_RULE = pytest.mark.spec(mqtt311=["MQTT-4.7.1-3"], mqtt5=["MQTT-4.7.1-2"])


@pytest.mark.broker
@pytest.mark.parametrize(
    "bad_filter",
    [
        pytest.param("{root}/#/x", id="hash-not-last", marks=HASH_RULE),
        pytest.param("{parent}/fac+", id="plus-inside-a-level", marks=PLUS_RULE),
        pytest.param("{root}/#x", id="hash-inside-a-level", marks=HASH_RULE),
    ],
)
def test_invalid_filters_are_refused(broker, mqtt_client, topic_root, protocol, bad_filter):
    topic_filter = bad_filter.format(root=topic_root, parent=topic_root.rsplit("/", 1)[0])
    with pytest.raises(ValueError):
        # A good client library refuses to send it at all...
        mqtt_client(protocol=protocol).subscribe(topic_filter, qos=1)

    # ... and a broker that receives it anyway must refuse it too (hand-made bytes:
    # mqtt_factory_lab.core.packets builds the packets paho refuses to send).
    with RawConnection(broker, f"raw-{topic_root.split('/')[1]}", protocol) as raw:
        answer = raw.subscribe(topic_filter)
    assert refused(answer, SUBACK, protocol == "5"), (
        f"{topic_filter!r} is not a topic filter: a wildcard must fill a whole level and # must "
        f"be the last one (MQTT §4.7.1). A broker must refuse it — MQTT 3.1.1 closes the "
        f"connection (or answers SUBACK 0x80), MQTT 5 sends DISCONNECT or SUBACK with a code "
        f"≥ 0x80 (0x8F Topic Filter invalid) — but {describe_answer(answer, protocol == '5')}."
    )


@pytest.mark.broker
@pytest.mark.parametrize(
    "bad_topic",
    [
        pytest.param("{root}/telemetry/+/temperature", id="plus"),
        pytest.param("{root}/#", id="hash"),
    ],
)
@pytest.mark.spec("MQTT-3.3.2-2", mqtt311=["MQTT-4.7.1-1"], mqtt5=["MQTT-4.7.0-1"])
def test_a_publish_to_a_topic_with_a_wildcard_is_refused(
    broker, mqtt_client, topic_root, protocol, bad_topic
):
    topic = bad_topic.format(root=topic_root)
    watcher = mqtt_client(protocol=protocol)
    watcher.subscribe(f"{topic_root}/#", qos=1)
    with pytest.raises(ValueError):
        mqtt_client(protocol=protocol).publish(topic, b"{}", qos=1)

    with RawConnection(broker, f"raw-{topic_root.split('/')[1]}", protocol) as raw:
        answer = raw.publish(topic, b"{}")
    assert refused(answer, PUBACK, protocol == "5"), (
        f"A topic name may not contain wildcards (MQTT §3.3.2.1): {topic!r} names no single "
        f"topic. The broker must refuse the PUBLISH — close the connection (3.1.1) or send "
        f"DISCONNECT 0x82/0x90 (5) — but {describe_answer(answer, protocol == '5')}."
    )
    watcher.assert_nothing_received(
        f"{topic_root}/#",
        why="A refused PUBLISH must reach no subscriber, not even one whose filter matches.",
    )


# -- The solution's factory ----------------------------------------------------------------
# The experiments below start the solution's devices (``--solution``; by default the lab's
# own ``sim.device``), record everything under a topic root of their own and hold it to the
# seed's topic tree and the manifest's [filters]. The first four judge one run of the six
# devices per protocol (``seed_factory``: run_seed_factory says what it sends them); the bad
# commands, which may crash a device, get a press of their own.


@pytest.fixture
def seed_factory(module_programs) -> SeedFactoryRun:
    """The six devices' run of this module and protocol, recorded once (:func:`run_seed_factory`)."""

    def run(programs) -> SeedFactoryRun:
        mark = programs.broker.log_mark() if LOG in programs.broker.capabilities else None
        return run_seed_factory(programs.launcher, programs.client, log_mark=mark)

    return module_programs.once("seed-factory", run)


def started(run: SeedFactoryRun) -> SeedFactoryRun:
    """The run, once its devices started; a missing role or a device that never came online
    fails the experiment with the launcher's message."""
    if run.not_started:
        pytest.fail(run.not_started, pytrace=False)
    return run


@pytest.mark.solution
def test_devices_publish_on_the_seed_topic_tree(seed_factory):
    run = started(seed_factory)
    root = run.root
    problems = off_tree_topics(run.from_devices(), root, run.devices, lint_topic)
    shown = "\n".join(
        f"  {topic.replace(root, '{root}')}: {why}" for topic, why in list(problems.items())[:6]
    )
    if problems:  # judged before the shortfall: a misplaced level explains it
        pytest.fail(
            f"The factory's topic tree is {{root}}/telemetry|alarms/<device>/<sensor> and "
            f"{{root}}/state|status/<device> (the seed's 'Topic Structure'): dashboards and "
            f"controllers subscribe with filters built on it, so a topic out of place is a message "
            f"nobody receives. {len(problems)} topic(s) of your devices do not fit:\n{shown}\n"
            f"(`mqtt-lab lint-topics --broker-url URL` checks a running factory the same way)",
            pytrace=False,
        )
    if run.shortfall:
        pytest.fail(run.shortfall, pytrace=False)


@pytest.mark.solution
def test_each_filter_gets_exactly_the_topics_its_question_asks_for(seed_factory):
    run = seed_factory
    if run.missing_filters or run.refused_filters:
        pytest.fail("\n".join(run.missing_filters or run.refused_filters[:1]), pytrace=False)
    started(run)
    if run.filters_shortfall:
        pytest.fail(
            f"The filters are judged on the factory's live traffic, and it is not on the seed's "
            f"tree (test_devices_publish_on_the_seed_topic_tree says which level is out of "
            f"place):\n{run.filters_shortfall}",
            pytrace=False,
        )
    problems = filter_problems(run)
    if problems:
        pytest.fail(
            "A subscription gets every message whose topic its filter matches — no more, no "
            "less. `+` matches exactly one level, `#` the level it stands on and every level "
            "below.\n" + problems,
            pytrace=False,
        )


@pytest.mark.solution
def test_a_stop_for_the_conveyor_does_not_stop_the_press(seed_factory):
    run = started(seed_factory)
    for problem in (run.conveyor_not_stopped, run.press_not_answered):
        if problem:
            pytest.fail(problem, pytrace=False)
    press = f"{run.root}/state/press"
    press_states = [
        validate("state", m.payload)["state"] for m in run.from_devices() if m.topic == press
    ]
    # "stopped" is the one state a stop puts a press in; "fault" is its own trip (anomalies
    # are on, and a loaded machine may take long enough for one), not the conveyor's stop.
    answer = json_field(run.press_answer, "state")
    assert "stopped" not in press_states and answer != "stopped", (
        f"The press stopped (its states: {' → '.join(press_states)}) when a stop was sent to "
        f"the conveyor on {run.root}/commands/dashboard/conveyor. A device must subscribe "
        f"only to its own commands — {{root}}/commands/+/<its id>, any publisher, one device — "
        f"not {{root}}/commands/#, which hands it every machine's commands."
    )


@pytest.mark.solution
@pytest.mark.broker_needs(LOG)
def test_a_device_subscribes_only_to_its_own_commands(broker, seed_factory):
    run = started(seed_factory)
    if run.press_not_answered:  # once the press obeyed, its subscription is surely in place
        pytest.fail(run.press_not_answered, pytrace=False)
    logged = subscriptions(broker.log_lines()[run.log_mark or 0 :], run.client_ids["press"])
    filters = [f for f, _qos in logged]
    own = [f"{run.root}/commands/{who}/press" for who in ("dashboard", "controller-7")]
    foreign = [f"{run.root}/commands/{who}/conveyor" for who in ("dashboard", "controller-7")]

    too_wide = [f for f in filters if any(mqtt.topic_matches_sub(f, t) for t in foreign)]
    assert not too_wide, (
        f"The press subscribed to {', '.join(too_wide)}, which also matches commands meant for "
        f"other machines ({foreign[0]}). A device subscribes only to its own commands: "
        f"{run.root}/commands/+/press (`+`: whoever sends them)."
    )
    for topic in own:
        assert any(mqtt.topic_matches_sub(f, topic) for f in filters), (
            f"None of the press's subscriptions ({', '.join(filters) or 'none'}) matches "
            f"{topic}: a device must hear its commands from every publisher — "
            f"{run.root}/commands/+/press."
        )


#: commands a device must refuse without falling over: it cannot choose what the network sends
BAD_COMMANDS = [
    pytest.param(b'{"command": "self_destruct", "reason": "lesson 01"}', id="unknown-command"),
    pytest.param(b"stop the press!", id="not-json"),
]
#: the temperature setpoints the bad-command experiments send, each one once
SETPOINTS = itertools.count(60.0, 0.5)


@pytest.mark.solution
@pytest.mark.parametrize("bad_command", BAD_COMMANDS)
def test_a_device_rejects_a_bad_command_and_keeps_running(module_device, mqtt_client, bad_command):
    # one press per protocol for these experiments; replaced once one fails (it may have crashed)
    press = module_device("press", "press", apart="bad-commands", strict=False, anomaly=True)
    root = press.topic_root
    watcher = mqtt_client()
    watcher.subscribe(f"{root}/#", qos=1)
    dashboard = mqtt_client()
    commands = f"{root}/commands/dashboard/press"
    # setpoints no other experiment on this press sent: its retained state shows the last one
    before, after = next(SETPOINTS), next(SETPOINTS)

    # First the press hears its commands (sent again until it obeys one).
    warm_up = setpoint_answer(root, "press", "temperature", before)
    if not obeyed_set(dashboard, watcher, commands, warm_up, set_command("temperature", before)):
        pytest.fail(
            f"The press never obeyed a valid 'set' on {commands.replace(root, '{root}')} "
            "(no state with the new setpoint within 5 s): a device subscribes to "
            "{root}/commands/+/<its id> and publishes its new state once it obeys.",
            pytrace=False,
        )
    dashboard.publish(commands, bad_command, qos=1)
    # A good command after the bad one: one connection delivers in order, so once the press
    # has answered it, it has handled the bad one too, and survived it.
    dashboard.publish(commands, set_command("temperature", after), qos=1)
    answered = setpoint_answer(root, "press", "temperature", after)

    survived = wait_answer_while_running(watcher, answered, press.process, timeout=10)
    sent = bad_command.decode(errors="replace")
    rule = (
        "A command is input from the network, and anyone who may publish there can send "
        "anything: a device must reject what it does not understand (publish a "
        "command_rejected event on {root}/events/<device>, log a line) and keep running."
    )
    if not press.process.is_running():
        press.process.wait_exit(5)
        pytest.fail(
            press.process.describe_failure(
                f"exited after the command {sent!r} on {commands.replace(root, '{root}')}",
                "parse a command inside try/except, check its name against the ones you know, "
                "and answer anything else with a command_rejected event instead of raising",
            )
            + f"\n{rule}",
            pytrace=False,
        )
    if not survived:
        pytest.fail(
            f"After the command {sent!r}, the press no longer obeyed a valid 'set' on "
            f"{commands.replace(root, '{root}')} (no state with the new setpoint within "
            f"10 s), though its process still runs. {rule}",
            pytrace=False,
        )

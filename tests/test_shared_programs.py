"""The programs lessons 01-03 share, and the instruments that left those chapters (issues 19, 21).

``module_programs``/``module_device`` (:mod:`mqtt_factory_lab.fixtures.shared_programs`) let
the experiments of one module judge one run of a solution's programs; the helpers of
:mod:`mqtt_factory_lab.experiment.topics`, :mod:`~mqtt_factory_lab.experiment.qos` and
:mod:`~mqtt_factory_lab.experiment.retained` are held to their promises here, against the lab's
broker where they talk to one. The lessons' broken variants (``tests/test_lesson_0[1-3].py``)
prove the experiments built on them still fail when they should.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import ReceivedMessage
from mqtt_factory_lab.core.packets import SUBACK, RawConnection, refused
from mqtt_factory_lab.experiment.qos import record_press
from mqtt_factory_lab.experiment.retained import device_state
from mqtt_factory_lab.experiment.topics import (
    FILTER_QUESTIONS,
    MatchCase,
    SeedFactoryRun,
    check_case,
    dollar_topics_seen,
    filter_problems,
    filter_subscriber,
    obeyed_set,
    off_tree_topics,
    set_command,
    setpoint_answer,
    wait_answer_while_running,
)


def message(topic: str, payload: bytes = b"{}", qos: int = 1) -> ReceivedMessage:
    return ReceivedMessage(topic=topic, payload=payload, qos=qos, retain=False, dup=False)


@dataclass
class Recorded:
    """A stand-in for a RecordingClient that has finished recording."""

    messages: list[ReceivedMessage]

    def received(self, what: object = None) -> list[ReceivedMessage]:
        return [m for m in self.messages if what is None or what(m)]


# -- fixtures.shared_programs ---------------------------------------------------------------


def test_module_programs_runs_a_scenario_once_and_keeps_its_result(module_programs, protocol):
    calls = []

    def scenario(programs):
        calls.append(programs.protocol)
        return object()

    first = module_programs.once("scenario", scenario)
    assert module_programs.once("scenario", scenario) is first
    assert calls == [protocol]
    apart = module_programs.apart("elsewhere")
    assert apart is module_programs.apart("elsewhere")
    assert apart.topic_root != module_programs.topic_root
    assert apart.launcher.protocol == module_programs.launcher.protocol == protocol


def test_module_device_is_kept_and_replaced_once_it_died(module_device):
    press = module_device("press", apart="kept-test")
    assert module_device("press", apart="kept-test") is press
    press.kill()
    again = module_device("press", apart="kept-test")
    assert again is not press and again.process.is_running()
    assert again.device_id == press.device_id == "press-01"
    assert again.topic_root == press.topic_root


def test_record_press_sees_each_message_at_its_publishers_qos(module_programs):
    run = module_programs.once(
        "press-qos", lambda p: record_press(p.launcher, p.client, device_id="press-09")
    )
    assert not (run.watcher_problem or run.not_started or run.no_readings or run.missing), run
    assert len(run.readings) == 4 and {m.qos for m in run.readings} == {0}
    kinds = {m.topic.split("/")[3] for m in run.alarms_state_status()}
    assert kinds == {"status", "state", "alarms"}
    assert {m.qos for m in run.alarms_state_status()} == {1}


# -- experiment.topics ----------------------------------------------------------------------


def test_check_case_fails_with_what_was_missing(mqtt_client, topic_root):
    good = MatchCase("good", "{root}/state/+", ("state/press",), ("state",), "the rule")
    check_case(mqtt_client, topic_root, good, "5")
    wrong = MatchCase("wrong", "{root}/state/+", ("state/press/x",), (), "the rule")
    with pytest.raises(AssertionError, match=r"(?s)the rule.*missing:  \{root\}/state/press/x"):
        check_case(mqtt_client, topic_root, wrong, "5")


def test_filter_subscriber_names_the_filters_entry_it_cannot_subscribe(mqtt_client, topic_root):
    question = FILTER_QUESTIONS[0]
    client, problem = filter_subscriber(mqtt_client, question, f"{topic_root}/#/x", topic_root)
    assert client is None and f"[filters] {question.name} = '{{root}}/#/x'" in problem
    client, problem = filter_subscriber(mqtt_client, question, f"{topic_root}/+", topic_root)
    assert client is not None and problem == ""


def test_off_tree_topics_gives_one_reason_per_topic_with_the_lint_rule():
    @dataclass
    class Finding:
        rule: str
        detail: str

    def lint(topic, root, devices):
        return [Finding("characters", "level 'Temp' has characters")] if "Temp" in topic else []

    state = json.dumps(device_state("press", "running")).encode()
    messages = [
        message("r/state/press", state),
        message("r/telemetry/temperature/press"),
        message("r/telemetry/temperature/press"),
        message("r/telemetry/press/Temp"),
    ]
    problems = off_tree_topics(messages, "r", ("press",), lint)
    assert set(problems) == {"r/telemetry/temperature/press", "r/telemetry/press/Temp"}
    assert "levels 2 and 3 are swapped" in problems["r/telemetry/temperature/press"]
    assert problems["r/telemetry/press/Temp"].endswith("[lint-topics: characters]")


def test_filter_problems_compares_each_filter_with_the_topics_that_answer_it():
    root = "lab/1/factory"
    seen = [
        message(f"{root}/telemetry/press/temperature"),
        message(f"{root}/telemetry/press/pressure"),
    ]
    question = FILTER_QUESTIONS[0]  # every_temperature
    run = SeedFactoryRun(
        root,
        observer=Recorded(seen),
        filters={question.name: "{root}/telemetry/#"},
        subscribers={question.name: Recorded(seen)},
    )
    problem = filter_problems(run, (question,))
    assert "[filters] every_temperature" in problem
    assert "extra:    {root}/telemetry/press/pressure" in problem
    run.subscribers[question.name] = Recorded(seen[:1])
    assert filter_problems(run, (question,)) == ""


def test_from_devices_leaves_out_what_the_lab_sent():
    command = set_command("temperature", 70.0)
    sent = message("r/commands/dashboard/press", json.dumps(command).encode())
    mine = message("r/state/press")
    run = SeedFactoryRun("r", observer=Recorded([sent, mine]))
    run.lab_sent.append(("r/commands/dashboard/press", command))
    assert run.from_devices() == [mine]
    assert run.seen() == {"r/commands/dashboard/press", "r/state/press"}


def test_obeyed_set_and_the_survival_wait_end_on_the_answer(mqtt_client, topic_root):
    watcher = mqtt_client()
    watcher.subscribe(f"{topic_root}/#", qos=1)
    dashboard = mqtt_client()
    commands = f"{topic_root}/commands/dashboard/press"
    answered = setpoint_answer(topic_root, "press", "temperature", 70.0)
    assert not obeyed_set(dashboard, watcher, commands, answered, {"x": 1}, timeout=0.3)
    assert watcher.received(commands), "it sent the command"
    dashboard.publish(f"{topic_root}/state/press", {"setpoints": {"temperature": 70.0}}, qos=1)
    assert obeyed_set(dashboard, watcher, commands, answered, {"x": 1}, timeout=5)

    class Exited:
        def is_running(self) -> bool:
            return False

    never = setpoint_answer(topic_root, "press", "temperature", 1.0)
    assert not wait_answer_while_running(watcher, never, Exited(), timeout=30)
    assert wait_answer_while_running(watcher, answered, Exited(), timeout=30)


def test_no_dollar_topic_reaches_a_leading_wildcard_on_the_lab_broker(mqtt_client, topic_root):
    leaked, offered = dollar_topics_seen(mqtt_client, topic_root, "5", None)
    assert leaked == []
    assert all(o.startswith("$") for o in offered)


# -- core.packets, experiment.retained ------------------------------------------------------


def test_raw_connection_closes_at_the_end_of_its_block(broker, topic_root):
    with RawConnection(broker, f"raw-with-{topic_root.split('/')[1]}", "5") as raw:
        answer = raw.subscribe(f"{topic_root}/#/x")
    assert refused(answer, SUBACK, True)
    assert raw.sock.fileno() == -1


def test_device_state_is_a_schema_valid_state():
    assert validate("state", device_state("press-01", "stopped", produced=3))["state"] == "stopped"


@pytest.mark.parametrize("lab_repetition", [1, 2], ids=lambda i: f"run{i}")
def test_each_repetition_of_an_experiment_gets_programs_of_its_own(
    module_programs, _module_programs_by_protocol, protocol, lab_repetition
):
    # the slow lane repeats an experiment as a parameter: a repeated verdict is a fresh run,
    # and the programs of another repetition are stopped (at most one repetition runs)
    made = _module_programs_by_protocol
    assert made[(protocol, lab_repetition)] is module_programs
    assert {repetition for _protocol, repetition in made} == {lab_repetition}

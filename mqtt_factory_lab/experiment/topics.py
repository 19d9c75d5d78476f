"""Lesson 01's instruments: how a filter matched, and whether a factory publishes on the seed's tree.

The chapter (``labs/01_wildcards.py``) holds the concept, the cases and the experiments;
this module the machinery they share, pytest-free:

* :func:`topics_matched` and :func:`explain_match` — publish to topics, see which a filter
  got, and say what was missing and extra;
* :data:`TREE`, :func:`levels`, :func:`tree_problem` — the seed's topic tree and which level
  of a topic is out of place in it;
* :func:`check_case`, :func:`dollar_topics_seen` — the broker experiments' publish-and-see;
* :data:`FILTER_QUESTIONS`, :func:`filter_subscriber`, :func:`filter_problems` — the manifest's
  ``[filters]`` table and how each entry is judged on recorded traffic;
* :func:`seed_devices_online`, :func:`wait_for_factory_traffic`, :func:`stop_all` — run the
  solution's six devices together and wait for the traffic the filters are judged on;
* :func:`run_seed_factory` (:class:`SeedFactoryRun`), :func:`off_tree_topics` — one recorded
  run of the six devices (per module and protocol) that the tree, filter and command
  experiments judge; :func:`setpoint_answer`, :func:`obeyed_set`,
  :func:`wait_answer_while_running` — a device's answer to a ``set``.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from mqtt_factory_lab.contract import PayloadError, validate, validate_message
from mqtt_factory_lab.core.client import MQTTTimeout, ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.factory import DeviceHandle, FactoryLauncher
from mqtt_factory_lab.core.roles import RoleError
from mqtt_factory_lab.core.solution import ManifestError
from mqtt_factory_lab.experiment import json_field

#: the devices of the seed's factory, by the names its topics use (device id = kind)
SEED_DEVICES = ("press", "conveyor", "robot_arm", "oven", "packer", "environment")
#: the second level of every topic (the kind of message) and the levels that follow it
TREE = {
    "telemetry": ("<device>", "<sensor>"),
    "alarms": ("<device>", "<sensor>"),
    "commands": ("<publisher>", "<device>"),
    "state": ("<device>",),
    "status": ("<device>",),
    "events": ("<device>",),
}
#: what a device publishes (commands come from controllers and dashboards)
DEVICE_KINDS = ("telemetry", "alarms", "state", "status", "events")


def levels(topic: str, root: str) -> list[str]:
    """The levels of ``topic`` below ``root`` (``[]`` for a topic outside it)."""
    if not topic.startswith(root + "/"):
        return []
    return topic[len(root) + 1 :].split("/")


# -- matching -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchCase:
    """A named case (its test id): a filter (``{root}`` = the test's topic root, ``{tail}`` =
    the root without its first level), the topics it must match and those it must miss
    (relative to the root; ``""`` is the root topic itself), and the rule it shows."""

    name: str
    topic_filter: str
    matches: tuple[str, ...]
    misses: tuple[str, ...]
    rule: str


def topics_matched(
    mqtt_client: Callable[..., RecordingClient],
    topic_filter: str,
    topics: list[str],
    protocol: str,
) -> set[str]:
    """Subscribe ``topic_filter``, publish one message to each of ``topics``, return those received.

    The publishes are acknowledged (QoS 1) before the subscriber's own round trip through
    the broker (:meth:`RecordingClient.sync`), so everything the broker routed has arrived.
    """
    subscriber = mqtt_client(protocol=protocol)
    subscriber.subscribe(topic_filter, qos=1)
    publisher = mqtt_client(protocol=protocol)
    for topic in topics:
        publisher.publish(topic, topic.encode(), qos=1)
    subscriber.sync()
    # Only live deliveries (RETAIN=0) answer the question: a stored message the broker sends
    # at subscribe time is the retained lesson's (03), and is judged there, once.
    return {m.topic for m in subscriber.received() if not m.retain}


def check_case(
    mqtt_client: Callable[..., RecordingClient], root: str, case: MatchCase, protocol: str
) -> None:
    """Publish to every topic of ``case`` under ``root`` and assert its filter got exactly its
    ``matches`` (:func:`topics_matched`), failing with :func:`explain_match`."""
    __tracebackhide__ = True
    topic_filter = case.topic_filter.format(root=root, tail=root.split("/", 1)[1])
    expected = {root if t == "" else f"{root}/{t}" for t in case.matches}
    published = [root if t == "" else f"{root}/{t}" for t in (*case.matches, *case.misses)]
    got = topics_matched(mqtt_client, topic_filter, published, protocol)
    assert got == expected, explain_match(topic_filter, case.rule, expected, got, root)


def dollar_topics_seen(
    mqtt_client: Callable[..., RecordingClient], root: str, protocol: str, has_sys: str | None
) -> tuple[list[str], list[str]]:
    """Subscribe ``#``, ``+/probe`` (and ``+/broker/#`` when the broker has ``$SYS``, described by
    ``has_sys``), offer a ``$``-topic of the experiment's own, and return the ``$``-topics the
    wildcard subscriber got and the ``$``-topics there were (for the failure message).

    Every broker is judged, ``$SYS`` or not: a broker's internal ``$MQTT/…``, ``$JS/…`` count
    too. A broker may refuse a client's ``$``-topic; the wildcards are judged all the same.
    """
    own = f"$lab{root.split('/')[1]}/probe"
    everything = mqtt_client(protocol=protocol)
    everything.subscribe("#", qos=0)
    everything.subscribe("+/probe", qos=0)
    if has_sys is not None:
        everything.subscribe("+/broker/#", qos=0)
    everything.sync()
    insider = mqtt_client(protocol=protocol)
    with contextlib.suppress(ConnectionError, AssertionError):
        insider.subscribe(f"{own.split('/')[0]}/#", qos=0, timeout=2)
        insider.publish(own, b"for named subscribers only", qos=0, timeout=2)
        insider.wait_for_message(own, timeout=1)
    everything.sync()
    leaked = sorted({m.topic for m in everything.received() if m.topic.startswith("$")})
    offered = [f"{own} (published by the experiment)"] if insider.received(own) else []
    if has_sys is not None:
        offered.append(f"$SYS ({has_sys})")
    return leaked, offered


def explain_match(
    topic_filter: str, rule: str, expected: set[str], got: set[str], root: str
) -> str:
    """The rule, the filter, and what was expected, missing and extra (a few topics each)."""

    def short(topics: set[str], limit: int = 6) -> str:
        names = sorted(t.replace(root, "{root}") for t in topics)
        more = f" … (+{len(names) - limit} more)" if len(names) > limit else ""
        return (", ".join(names[:limit]) + more) or "nothing"

    return (
        f"{rule}\n  filter:   {topic_filter.replace(root, '{root}')}\n"
        f"  expected: {short(expected)}"
        + (f"\n  missing:  {short(expected - got)}" if expected - got else "")
        + (f"\n  extra:    {short(got - expected)}" if got - expected else "")
    )


# -- the [filters] questions ---------------------------------------------------------------


@dataclass(frozen=True)
class Question:
    """A question the factory's data answers, and how to recognise a topic that answers it."""

    name: str
    meaning: str
    answers: Callable[[list[str]], bool]


#: the questions of lesson 01's ``[filters]`` table (the manifest's contract: one filter each);
#: ``answers`` gets the levels below the topic root
FILTER_QUESTIONS = (
    Question(
        "every_temperature",
        "every temperature reading of every device (telemetry whose sensor is 'temperature')",
        lambda p: len(p) == 3 and p[0] == "telemetry" and p[2] == "temperature",
    ),
    Question(
        "press_telemetry",
        "every reading of the press, whatever the sensor",
        lambda p: len(p) == 3 and p[0] == "telemetry" and p[1] == "press",
    ),
    Question(
        "robot_arm",
        "everything the robot arm publishes: its telemetry, alarms, state, status and events",
        lambda p: len(p) >= 2 and p[0] in DEVICE_KINDS and p[1] == "robot_arm",
    ),
    Question(
        "robot_arm_commands",
        "every command sent to the robot arm, whoever sends it",
        lambda p: len(p) == 3 and p[0] == "commands" and p[2] == "robot_arm",
    ),
    Question("all_alarms", "every alarm of every device", lambda p: p[0] == "alarms"),
    Question(
        "all_state",
        "the retained state (running/stopped/fault) of every device",
        lambda p: len(p) == 2 and p[0] == "state",
    ),
    Question(
        "all_status",
        "the online/offline status of every device",
        lambda p: len(p) == 2 and p[0] == "status",
    ),
    Question("everything", "everything the factory publishes", lambda p: bool(p)),
)


def filter_subscriber(
    client: Callable[[], RecordingClient], question: Question, topic_filter: str, root: str
) -> tuple[RecordingClient | None, str]:
    """A client subscribed to a solution's filter for ``question``, or ``(None, why)`` in one
    sentence naming the [filters] entry when paho or the broker refuses the filter."""
    subscriber = client()
    try:
        codes = subscriber.subscribe(topic_filter, qos=1)
    except ValueError:  # paho checks the filter before sending it
        codes = None
    if codes is None:
        return None, (
            f"[filters] {question.name} = {topic_filter.replace(root, '{root}')!r} is not a "
            f"valid topic filter: a wildcard fills a whole level (+ one level, # the last "
            f"level and everything below it)."
        )
    if codes and codes[0].is_failure:
        return None, f"the broker refused [filters] {question.name} = {topic_filter!r}: {codes[0]}"
    return subscriber, ""


def set_command(setpoint: str, value: float) -> dict[str, Any]:
    """A schema-valid ``set`` command, as the lab's dashboard sends it to a device."""
    return validate(
        "command",
        {"command": "set", "setpoint": setpoint, "value": value, "reason": "lesson 01"},
    )


def setpoint_answer(
    root: str, device_id: str, setpoint: str, value: float
) -> Callable[[ReceivedMessage], bool]:
    """A matcher for the device's state that shows ``setpoint`` at ``value``: its answer to a
    ``set`` (:func:`set_command`)."""

    def answered(m: ReceivedMessage) -> bool:
        return (
            m.topic == f"{root}/state/{device_id}"
            and (json_field(m, "setpoints") or {}).get(setpoint) == value
        )

    answered.__doc__ = f"the {device_id}'s state with its {setpoint} setpoint at {value}"
    return answered


# -- the seed's tree ----------------------------------------------------------------------


def _device_id_in(payload: bytes) -> object:
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    return data.get("device_id") if isinstance(data, dict) else None


def tree_problem(topic: str, root: str, device_ids: Collection[str], payload: bytes) -> str | None:
    """Which level of ``topic`` is out of place in the seed's tree, or None when it fits."""
    p = levels(topic, root)
    if not p:
        return f"it is not under the topic root {root} (VF_TOPIC_ROOT)"
    kind = p[0]
    if kind not in TREE:
        near = next((k for k in TREE if k.lower() == kind.lower()), None)
        if near:
            return f"level 1 is {kind!r}, not {near!r}: topic levels are case sensitive"
        if kind in device_ids:
            return (
                f"level 1 is the device id {kind!r}: the tree puts the kind of message first "
                f"(telemetry, alarms, state, status), then the device"
            )
        return f"level 1 is {kind!r}; the tree has {', '.join(TREE)} there"
    if kind == "commands":
        return "a device publishes no commands; commands come from controllers and dashboards"
    shape = TREE[kind]
    if len(p) - 1 != len(shape):
        return f"it has {len(p) - 1} level(s) after {kind!r}; the tree has {kind}/{'/'.join(shape)}"
    if p[1] not in device_ids:
        if len(p) > 2 and p[2] in device_ids:
            return (
                f"levels 2 and 3 are swapped: the device ({p[2]}) comes before the sensor "
                f"({p[1]}) in {kind}/<device>/<sensor>"
            )
        return f"level 2 is {p[1]!r}, which is not the id of a running device ({', '.join(device_ids)})"
    claimed = _device_id_in(payload)
    if claimed is not None and claimed != p[1]:
        return f"level 2 is {p[1]!r} but the payload says device_id {claimed!r}"
    if any(level == "" for level in p):
        return "it has an empty level"
    return None


def first_tree_problem(observer: RecordingClient, root: str, device_ids: Collection[str]) -> str:
    """``<topic>: <level out of place>`` for the first message off the seed's tree, or ``""``."""
    for message in observer.received():
        if levels(message.topic, root)[:1] == ["commands"]:
            continue  # the lab's own commands, as a dashboard
        problem = tree_problem(message.topic, root, device_ids, message.payload)
        if problem:
            return f"{message.topic.replace(root, '{root}')}: {problem}"
    return ""


# -- the solution's devices ---------------------------------------------------------------


def seed_devices_online(
    launcher: FactoryLauncher, observer: RecordingClient, kinds: Iterable[str] = SEED_DEVICES
) -> dict[str, DeviceHandle]:
    """Start the solution's devices at once (device id = kind, anomalies on), then wait until
    each has published ``online`` on its status topic (:meth:`FactoryLauncher.wait_online`,
    not strict: whether it is retained and schema-valid is judged by the experiments).

    :raises RoleError: as the launcher says, plus the topics ``observer`` (subscribed to the
        root) saw the device publish on, when it never said online where the tree says.
    """
    handles = {
        kind: launcher.start_device(kind, kind, anomaly=True, wait_online=False) for kind in kinds
    }
    for handle in handles.values():
        try:
            launcher.wait_online(handle, strict=False)
        except RoleError as error:
            elsewhere = sorted(
                {m.topic for m in observer.received() if handle.device_id in m.topic}
            )
            if not elsewhere or not handle.process.is_running():
                raise
            raise RoleError(f"{error}\n  (it published on: {', '.join(elsewhere[:5])})") from None
    return handles


def wait_for_factory_traffic(
    observer: RecordingClient,
    root: str,
    devices: Collection[str],
    timeout: float = 5.0,
    alarms_from: Iterable[str] = (),
) -> None:
    """Wait until every device has sent telemetry and state, and one alarm was raised.

    :param alarms_from: devices that must each have raised an alarm too (a question about
        one device judges its filter on every kind of message that device publishes).

    :raises AssertionError: naming what never came, once ``timeout`` has passed in all, or
        at once when a device published off the seed's tree (the rest would never come).
    """
    deadline = time.monotonic() + timeout
    wanted = [
        (
            f"{root}/{kind}/{device_id}/#",
            f"A running device publishes its {kind} under {root}/{kind}/{device_id}: the "
            f"device {device_id!r} (started with that id) published none there.",
        )
        for device_id in devices
        for kind in ("telemetry", "state")
    ]
    wanted.append(
        (
            f"{root}/alarms/#",
            f"Devices started with the anomaly option raise alarms within seconds, on "
            f"{root}/alarms/<device>/<sensor>; none came.",
        )
    )
    wanted += [
        (
            f"{root}/alarms/{device_id}/#",
            f"A device started with the anomaly option raises alarms within seconds, on "
            f"{root}/alarms/<device>/<sensor>: {device_id!r} raised none.",
        )
        for device_id in alarms_from
    ]
    for topic_filter, why in wanted:
        while not observer.received(topic_filter):
            off_tree = first_tree_problem(observer, root, tuple(devices))
            if off_tree:
                raise AssertionError(f"{why}\n  It published {off_tree}")
            remaining = deadline - time.monotonic()
            try:
                observer.wait_for_message(topic_filter, timeout=max(0.01, min(0.2, remaining)))
            except AssertionError:
                if remaining <= 0.2:
                    observer.wait_for_message(topic_filter, timeout=0.01, why=why)


def stop_all(handles: dict[str, DeviceHandle]) -> None:
    """SIGTERM every device first, then wait for each: they shut down together."""
    for handle in handles.values():
        if handle.process.is_running():
            handle.process.signal(signal.SIGTERM)
    for handle in handles.values():
        handle.stop()


# -- one run of the seed's factory, judged by several experiments ---------------------------


@dataclass
class SeedFactoryRun:
    """What the solution's six devices did under one topic root, recorded once per protocol.

    The lab subscribes an observer (``{root}/#``) and one client per ``[filters]`` entry,
    starts the six devices, and, as a dashboard, sends a ``set`` to the robot arm and adds an
    entry to its events; once the traffic came it stops the conveyor and sends the press a
    ``set``, then stops every device. The experiments judge the recording: the tree, the
    filters, whether the press stopped with the conveyor, what the press subscribed to.
    A field that says what went wrong is ``""`` when nothing did.

    :ivar not_started: why the devices did not start (every experiment fails with it).
    :ivar shortfall: telemetry, state or an alarm that never came;
        ``filters_shortfall`` the same or the robot arm's own alarms.
    :ivar lab_sent: ``(topic, payload)`` of what the lab published itself.
    :ivar log_mark: the broker's log position before the devices started (None: no log).
    """

    root: str
    devices: tuple[str, ...] = SEED_DEVICES
    not_started: str = ""
    missing_filters: list[str] = field(default_factory=list)
    refused_filters: list[str] = field(default_factory=list)
    filters: dict[str, str] = field(default_factory=dict)
    subscribers: dict[str, RecordingClient] = field(default_factory=dict)
    observer: RecordingClient | None = None
    lab_sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    shortfall: str = ""
    filters_shortfall: str = ""
    conveyor_not_stopped: str = ""
    press_answer: ReceivedMessage | None = None
    press_not_answered: str = ""
    log_mark: int | None = None
    client_ids: dict[str, str] = field(default_factory=dict)

    def from_devices(self) -> list[ReceivedMessage]:
        """What the observer recorded, without the lab's own commands and diary entry."""
        assert self.observer is not None

        def sent_by_lab(m: ReceivedMessage) -> bool:
            return any(m.topic == t and _json(m.payload) == p for t, p in self.lab_sent)

        return [m for m in self.observer.received() if not sent_by_lab(m)]

    def seen(self) -> set[str]:
        """Every topic the observer saw, the lab's commands included (the filters' traffic)."""
        assert self.observer is not None
        return {m.topic for m in self.observer.received()}


def _json(payload: bytes) -> object:
    try:
        return json.loads(payload)
    except ValueError:
        return None


def _shortfall(observer: RecordingClient, root: str, timeout: float, **kw: Any) -> str:
    try:
        wait_for_factory_traffic(observer, root, SEED_DEVICES, timeout=timeout, **kw)
    except AssertionError as missing:
        return str(missing)
    return ""


def run_seed_factory(
    launcher: FactoryLauncher,
    client: Callable[[str], RecordingClient],
    *,
    log_mark: int | None = None,
    questions: tuple[Question, ...] = FILTER_QUESTIONS,
) -> SeedFactoryRun:
    """Run the seed's factory once under ``launcher`` and record it (:class:`SeedFactoryRun`).

    :param client: ``client(name)``, a connected MQTT 5 client that outlives the call.
    :param log_mark: the broker's log position, kept for experiments that read the log.
    Deadlines are those each experiment had when it ran the factory alone: 5 s for the
    traffic (the robot arm's alarms included), 5 s for each device's answer to a command.
    """
    root = launcher.topic_root
    run = SeedFactoryRun(root, log_mark=log_mark)
    for question in questions:
        try:
            run.filters[question.name] = launcher.solution.require_filter(
                question.name, question.meaning
            )
        except ManifestError as error:
            run.missing_filters.append(str(error))
    run.observer = client("observer")
    run.observer.subscribe(f"{root}/#", qos=1)
    for question in questions:
        if question.name in run.filters:
            topic_filter = run.filters[question.name].replace("{root}", root)
            subscriber, refused = filter_subscriber(
                lambda: client("filter"), question, topic_filter, root
            )
            if subscriber is None:
                run.refused_filters.append(refused)
            else:
                run.subscribers[question.name] = subscriber
    try:
        handles = seed_devices_online(launcher, run.observer)
    except (RoleError, ManifestError) as error:
        run.not_started = str(error)
        return run
    run.client_ids = {kind: handle.client_id for kind, handle in handles.items()}
    started = time.monotonic()
    dashboard = client("dashboard")

    def send(topic: str, payload: dict[str, Any]) -> None:
        run.lab_sent.append((topic, payload))
        dashboard.publish(topic, payload, qos=1)

    send(f"{root}/commands/dashboard/robot_arm", set_command("cycle_time", 4.5))
    # The robot arm's question covers its events too, which its device writes only when it
    # rejects a command: the lab adds one entry to that diary, so that every kind of message
    # the question covers is in the traffic its filter is judged on.
    diary = {
        "ts": time.time(),
        "device_id": "robot_arm",
        "event": "command_rejected",
        "reason": "lesson 01: an entry in the robot arm's diary",
        "topic": f"{root}/commands/dashboard/robot_arm",
        "received": "(none)",
    }
    send(f"{root}/events/robot_arm", validate("event", diary))
    run.shortfall = _shortfall(run.observer, root, 5.0)
    run.filters_shortfall = run.shortfall or _shortfall(
        run.observer, root, max(0.01, started + 5.0 - time.monotonic()), alarms_from=("robot_arm",)
    )

    stop = validate("command", {"command": "stop", "reason": "lesson 01: the conveyor only"})
    send(f"{root}/commands/dashboard/conveyor", stop)
    try:
        run.observer.wait_for_message(
            lambda m: m.topic == f"{root}/state/conveyor" and json_field(m, "state") == "stopped",
            why=f"A device obeys the commands sent to {root}/commands/<publisher>/<its id>: "
            f"the conveyor got a stop there and never published a 'stopped' state.",
        )
    except MQTTTimeout as error:
        run.conveyor_not_stopped = str(error)
    # A command to the press itself, sent after the stop: once the press has answered it, it
    # has also handled anything it received before (one connection delivers in order), and
    # its command subscription is surely in place.
    send(f"{root}/commands/dashboard/press", set_command("temperature", 70.0))
    try:
        run.press_answer = run.observer.wait_for_message(
            setpoint_answer(root, "press", "temperature", 70.0),
            why=f"The press obeys a 'set' sent to {root}/commands/dashboard/press and "
            f"publishes its new state with the setpoint; it never did.",
        )
    except MQTTTimeout as error:
        run.press_not_answered = str(error)
    stop_all(handles)
    run.observer.sync()
    for subscriber in run.subscribers.values():
        subscriber.sync()
    for recorder in (run.observer, dashboard, *run.subscribers.values()):
        recorder.disconnect()  # the recording is complete: later programs under root stay out
    return run


def filter_problems(run: SeedFactoryRun, questions: tuple[Question, ...] = FILTER_QUESTIONS) -> str:
    """What each ``[filters]`` entry got wrong on the recorded traffic, or ``""``.

    :raises AssertionError: when nothing recorded answers a question (no judgement possible).
    """
    assert run.observer is not None
    seen = run.seen()
    problems = []
    for question in questions:
        topic_filter = run.filters[question.name]
        expected = {t for t in seen if question.answers(levels(t, run.root))}
        assert expected, (
            f"Nothing the factory published answers {question.name!r} ({question.meaning}), so "
            f"its filter cannot be judged: check that your devices publish on the seed's tree."
        )
        got = {m.topic for m in run.subscribers[question.name].received()}
        if got != expected:
            hint = ""
            if not topic_filter.startswith(("{root}", "+", "#")):
                hint = " Write the topic root as {root}: the lab gives every test its own."
            problems.append(
                explain_match(
                    topic_filter.replace("{root}", run.root),
                    f"[filters] {question.name} must get {question.meaning}.{hint}",
                    expected,
                    got,
                    run.root,
                )
            )
    return "\n".join(problems)


def off_tree_topics(
    messages: Iterable[ReceivedMessage],
    root: str,
    devices: Collection[str],
    lint: Callable[[str, str, tuple[str, ...]], list[Any]],
) -> dict[str, str]:
    """Each topic off the seed's tree, or with a payload that breaks its schema, or against the
    conventions ``lint`` checks (``mqtt-lab lint-topics``: findings with ``rule``, ``detail``),
    with why (the first reason per topic)."""
    problems: dict[str, str] = {}
    for message in messages:
        problem = tree_problem(message.topic, root, devices, message.payload)
        if problem is None:
            try:
                validate_message(message.topic, message.payload, root=root)
            except PayloadError as error:
                problem = str(error)
        linted = lint(message.topic, root, tuple(devices))
        if problem is None and linted:
            problem = linted[0].detail
        if problem and linted:
            problem += f" [lint-topics: {', '.join(f.rule for f in linted)}]"
        if problem and message.topic not in problems:
            problems[message.topic] = problem
    return problems


def wait_answer_while_running(
    watcher: RecordingClient,
    answered: Callable[[ReceivedMessage], bool],
    process: Any,
    timeout: float,
) -> bool:
    """Wait until ``watcher`` has seen ``answered``, for at most ``timeout``, and no longer
    than ``process`` (a :class:`~mqtt_factory_lab.core.roles.RoleProcess`) runs."""
    deadline = time.monotonic() + timeout
    while not watcher.received(answered) and process.is_running():
        if time.monotonic() > deadline:
            break
        with contextlib.suppress(AssertionError):
            watcher.wait_for_message(answered, timeout=0.2)
    return bool(watcher.received(answered))


def obeyed_set(
    dashboard: RecordingClient,
    watcher: RecordingClient,
    commands: str,
    answered: Callable[[ReceivedMessage], bool],
    payload: dict[str, Any],
    timeout: float = 5.0,
) -> bool:
    """Send a ``set`` to ``commands`` again every 0.5 s until ``watcher`` sees it ``answered``;
    False when no answer came within ``timeout`` (a device may say online a moment before
    its subscription is in place)."""
    deadline = time.monotonic() + timeout
    while not watcher.received(answered) and time.monotonic() < deadline:
        dashboard.publish(commands, payload, qos=1)
        with contextlib.suppress(AssertionError):
            watcher.wait_for_message(answered, timeout=0.5)
    return bool(watcher.received(answered))

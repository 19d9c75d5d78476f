"""Lesson 01's instruments: how a filter matched, and whether a factory publishes on the seed's tree.

The chapter (``labs/01_wildcards.py``) holds the concept, the cases and the experiments;
this module the machinery they share, pytest-free:

* :func:`topics_matched` and :func:`explain_match` — publish to topics, see which a filter
  got, and say what was missing and extra;
* :data:`TREE`, :func:`levels`, :func:`tree_problem` — the seed's topic tree and which level
  of a topic is out of place in it;
* :func:`seed_devices_online`, :func:`wait_for_factory_traffic`, :func:`stop_all` — run the
  solution's six devices together and wait for the traffic the filters are judged on.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any

import pytest

from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import RecordingClient
from mqtt_factory_lab.core.factory import DeviceHandle, FactoryLauncher
from mqtt_factory_lab.core.roles import RoleError

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
    """A filter (``{root}`` = the test's topic root, ``{tail}`` = the root without its first
    level), the topics it must match and those it must miss (relative to the root; ``""`` is
    the root topic itself)."""

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


def subscribe_filter(
    mqtt_client: Callable[..., RecordingClient], question: Question, topic_filter: str, root: str
) -> RecordingClient:
    """A client subscribed to a solution's filter for ``question``; a filter paho or the
    broker refuses fails the experiment in one sentence naming the [filters] entry."""
    client = mqtt_client()
    try:
        codes = client.subscribe(topic_filter, qos=1)
    except ValueError:  # paho checks the filter before sending it
        codes = None
    if codes is None:
        pytest.fail(
            f"[filters] {question.name} = {topic_filter.replace(root, '{root}')!r} is not a "
            f"valid topic filter: a wildcard fills a whole level (+ one level, # the last "
            f"level and everything below it).",
            pytrace=False,
        )
    if codes and codes[0].is_failure:
        pytest.fail(
            f"the broker refused [filters] {question.name} = {topic_filter!r}: {codes[0]}",
            pytrace=False,
        )
    return client


def set_command(setpoint: str, value: float) -> dict[str, Any]:
    """A schema-valid ``set`` command, as the lab's dashboard sends it to a device."""
    return validate(
        "command",
        {"command": "set", "setpoint": setpoint, "value": value, "reason": "lesson 01"},
    )


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

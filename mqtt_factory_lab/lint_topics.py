"""``mqtt-lab lint-topics``: every topic checked against the seeds' topic conventions.

Two namespaces share the root (``factory``), each from its seed:

* the Virtual Factory: ``<root>/<message type>/<device>[/<sensor>]``, the message type right
  after the root (``telemetry``, ``alarms``, ``commands``, ``state``, ``status``, ``events``);
* the chocolate line: ``<root>/<site>/<line>/<step>/<machine>/<message type>``, the message
  type last (``telemetry``, ``state``, ``alarm``, ``quality``, ``batch``).

The rules (each finding names one):

=====================  =========================================================
``leading-slash``      no ``/`` before the root: ``/factory/...`` is another tree
``empty-level``        no empty level (``//``, a trailing ``/``)
``characters``         levels are lowercase ``[a-z0-9_-]``: topics are case-sensitive
``namespace``          the first level is the root
``structure``          as many levels as the namespace's layout has
``type-position``      the message type where its namespace puts it
``message-type``       a message type the seeds know
``device-id``          a device the factory has; a chocolate step of the eight
``qos``                the QoS the seeds' policy gives the message type
``retain``             state and status retained, nothing else
``payload``            the payload passes its JSON Schema (``schemas/``)
=====================  =========================================================

It reads a live broker (``--broker-url``, for ``--for`` seconds; subscribed with QoS 2 and
retain-as-published, so it sees each message's QoS and retain flag as published) or a
capture file of JSON lines, ``{"topic", "qos", "retain", "payload"}`` (what
``python -m sim.observer --json`` prints). Lesson 01 shows a student's topic mistakes with
:func:`lint_topic`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from mqtt_factory_lab import contract

#: each client's scratch space outside the factory (the harness's sync round trips)
SYNC_PREFIX = "lab/sync/"
LEVEL = re.compile(r"^[a-z0-9_-]+$")

#: the Virtual Factory seed: message type -> (levels after it, QoS, retained, why)
FACTORY_POLICY: dict[str, tuple[tuple[str, ...], int, bool]] = {
    "telemetry": (("<device>", "<sensor>"), 0, False),
    "alarms": (("<device>", "<sensor>"), 1, False),
    "commands": (("<publisher>", "<device>"), 1, False),
    "state": (("<device>",), 1, True),
    "status": (("<device>",), 1, True),
    "events": (("<component>",), 1, False),
    "replies": (("<device>", "<requester>"), 1, False),  # MQTT 5 request/response, lesson 09
}
#: the chocolate seed's "QoS Policy": message type -> (QoS, retained)
CHOCOLATE_POLICY: dict[str, tuple[int, bool]] = {
    "telemetry": (0, False),
    "state": (1, True),
    "alarm": (1, False),
    "quality": (1, False),
    "batch": (1, False),
}
CHOCOLATE_LAYOUT = ("<site>", "<line>", "<step>", "<machine>", "<message_type>")
WHY_QOS = {
    0: "frequent readings, the next replaces a lost one: at most once is the right price",
    1: "it must arrive: at least once, acknowledged",
}


@dataclass(frozen=True)
class Message:
    """One message as published: ``qos``/``retain`` None when unknown."""

    topic: str
    payload: bytes = b""
    qos: int | None = None
    retain: bool | None = None


@dataclass(frozen=True)
class Finding:
    topic: str
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.detail}"


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _layout(root: str, kind: str) -> str:
    return "/".join([root, kind, *FACTORY_POLICY[kind][0]])


def lint_topic(
    topic: str, root: str = "factory", devices: Sequence[str] | None = None
) -> list[Finding]:
    """The convention rules ``topic`` breaks, judged from the topic alone.

    :param devices: the device ids the factory has (default: the contract's device kinds).
    """
    found: list[Finding] = []

    def add(rule: str, detail: str) -> None:
        found.append(Finding(topic, rule, detail))

    known_devices = tuple(devices) if devices is not None else contract.device_kinds()
    if topic.startswith("/"):
        add(
            "leading-slash",
            f"the topic starts with '/': its first level is empty, so it is not under "
            f"{root!r} and no {root}/# filter sees it; write {topic.lstrip('/')!r}",
        )
    levels = topic.lstrip("/").split("/")
    if any(level == "" for level in levels):
        add(
            "empty-level",
            "an empty level ('//' or a trailing '/') is a level of its own: "
            f"{'/'.join(x for x in levels if x)!r} is another topic",
        )
    levels = [level for level in levels if level]
    root_levels = root.split("/")
    n = len(root_levels)
    for level in levels[n:]:
        if not LEVEL.match(level):
            fixed = re.sub(r"[^a-z0-9_-]+", "_", level.lower()).strip("_")
            add(
                "characters",
                f"level {level!r} has characters outside lowercase [a-z0-9_-]: topics are "
                f"case-sensitive, so a subscriber filtering on {fixed!r} never sees it",
            )
    if [x.lower() for x in levels[:n]] != [x.lower() for x in root_levels]:
        add(
            "namespace",
            f"the topic is not under {root!r}: every factory topic starts with "
            f"{root}/ (the dashboard, the data center and the controller subscribe there)",
        )
        return found
    rest = [level.lower() for level in levels[n:]]
    if not rest:
        add("structure", f"{root!r} alone is no message's topic")
        return found
    kind = rest[0]
    if kind in FACTORY_POLICY:
        after, _, _ = FACTORY_POLICY[kind]
        if len(rest) - 1 != len(after):
            add(
                "structure",
                f"{kind} topics have {len(after) + 1} levels after the root: "
                f"{_layout(root, kind)}, this one {len(rest)}",
            )
            return found
        device = rest[2] if kind == "commands" else rest[1] if kind != "events" else None
        if device is not None and known_devices and device not in known_devices:
            add(
                "device-id",
                f"{device!r} is no device of the factory{_suggest(device, known_devices)}; "
                f"the devices are {', '.join(known_devices)}",
            )
        return found
    if len(rest) == len(CHOCOLATE_LAYOUT):
        step, message_type = rest[2], rest[4]
        if message_type not in CHOCOLATE_POLICY:
            where = next((i for i, x in enumerate(rest[:4]) if x in CHOCOLATE_POLICY), None)
            if where is not None:
                add(
                    "type-position",
                    f"the message type {rest[where]!r} is level {where + n + 1}; the chocolate "
                    f"line puts it last: {root}/{'/'.join(CHOCOLATE_LAYOUT)}",
                )
            else:
                add(
                    "message-type",
                    f"{message_type!r} is not a chocolate message type"
                    f"{_suggest(message_type, CHOCOLATE_POLICY)}: "
                    f"{', '.join(CHOCOLATE_POLICY)}",
                )
        steps = contract.chocolate_steps()
        if step not in steps and not any(x in CHOCOLATE_POLICY for x in rest[:4]):
            add(
                "device-id",
                f"{step!r} is not one of the line's eight steps{_suggest(step, steps)}: "
                f"{', '.join(steps)}",
            )
        return found
    for index, level in enumerate(rest[1:], start=1):
        if level in FACTORY_POLICY:
            add(
                "type-position",
                f"the message type {level!r} is level {index + n + 1}; the Virtual Factory "
                f"puts it right after the root: {_layout(root, level)}",
            )
            return found
        if level in CHOCOLATE_POLICY:
            add(
                "type-position",
                f"the message type {level!r} is level {index + n + 1}; the chocolate line "
                f"has six levels and puts it last: {root}/{'/'.join(CHOCOLATE_LAYOUT)}",
            )
            return found
    add(
        "message-type",
        f"{kind!r} is not a message type of the Virtual Factory"
        f"{_suggest(kind, FACTORY_POLICY)} ({', '.join(FACTORY_POLICY)}), and the topic does "
        f"not have the chocolate line's layout {root}/{'/'.join(CHOCOLATE_LAYOUT)}",
    )
    return found


def _policy(topic: str, root: str) -> tuple[str, int, bool] | None:
    """``(message type, QoS, retained)`` the seeds give ``topic``, if it is well formed."""
    rest = topic[len(root) + 1 :].split("/")
    if rest[0] in FACTORY_POLICY:
        _, qos, retained = FACTORY_POLICY[rest[0]]
        return rest[0], qos, retained
    if len(rest) == len(CHOCOLATE_LAYOUT) and rest[4] in CHOCOLATE_POLICY:
        return (rest[4], *CHOCOLATE_POLICY[rest[4]])
    return None


def lint_message(
    message: Message, root: str = "factory", devices: Sequence[str] | None = None
) -> list[Finding]:
    """The rules ``message`` breaks: its topic's, then QoS, retain and payload."""
    found = lint_topic(message.topic, root, devices)
    if found:
        return found
    policy = _policy(message.topic, root)
    if policy is None:
        return found
    kind, qos, retained = policy
    if message.qos is not None and message.qos != qos:
        found.append(
            Finding(
                message.topic,
                "qos",
                f"published at QoS {message.qos}; the seeds' policy for {kind} is QoS {qos} "
                f"({WHY_QOS[qos]})",
            )
        )
    if message.retain is not None and message.retain != retained and message.payload:
        detail = (
            f"{kind} must be retained: a subscriber that arrives later gets the current "
            "value at once"
            if retained
            else f"{kind} must not be retained: the broker would replay an old message to "
            "every new subscriber as if it had just happened"
        )
        found.append(Finding(message.topic, "retain", detail))
    if message.payload:
        try:
            contract.validate_message(message.topic, message.payload, root=root)
        except contract.PayloadError as error:
            found.append(Finding(message.topic, "payload", str(error)))
    return found


@dataclass
class Report:
    """Findings per topic, each rule once per topic, with how many messages had it."""

    topics: dict[str, dict[str, tuple[Finding, int]]]
    messages: int

    @property
    def findings(self) -> list[Finding]:
        return [f for rules in self.topics.values() for f, _ in rules.values()]

    def write(self, out: TextIO) -> None:
        bad = {t: rules for t, rules in self.topics.items() if rules}
        for topic, rules in sorted(bad.items()):
            print(topic, file=out)
            for finding, count in rules.values():
                times = f" ({count} messages)" if count > 1 else ""
                print(f"  {finding.rule:<13} {finding.detail}{times}", file=out)
        verdict = "every topic follows the conventions" if not bad else f"{len(bad)} break them"
        print(f"{self.messages} messages on {len(self.topics)} topics: {verdict}", file=out)


def lint(
    messages: Iterable[Message], root: str = "factory", devices: Sequence[str] | None = None
) -> Report:
    topics: dict[str, dict[str, tuple[Finding, int]]] = {}
    count = 0
    for message in messages:
        if message.topic.startswith(("$", SYNC_PREFIX)):
            continue  # the broker's own ($SYS/...), the clients' scratch space (lab/sync/...)
        count += 1
        rules = topics.setdefault(message.topic, {})
        for finding in lint_message(message, root, devices):
            first, seen = rules.get(finding.rule, (finding, 0))
            rules[finding.rule] = (first, seen + 1)
    return Report(topics, count)


# -- where the messages come from ---------------------------------------------------------


def read_capture(lines: Iterable[str]) -> Iterator[Message]:
    """Messages from JSON lines (``sim.observer --json``); other lines are skipped."""
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or "topic" not in record:
            continue
        payload = record.get("payload", "")
        if not isinstance(payload, str):
            payload = json.dumps(payload)
        yield Message(
            str(record["topic"]),
            payload.encode(),
            record.get("qos"),
            None if record.get("retain") is None else bool(record["retain"]),
        )


def listen(url: str, seconds: float, username: str | None) -> list[Message]:
    """Everything published on the broker for ``seconds`` (MQTT 5, QoS 2, retain as published)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.subscribeoptions import SubscribeOptions

    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    received: list[Message] = []
    subscribed = threading.Event()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"lint-topics-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    user = parts.username or username
    if user:
        client.username_pw_set(user, parts.password)
    options = SubscribeOptions(qos=2, retainAsPublished=True)
    client.on_connect = lambda c, *_: c.subscribe("#", options=options)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda c, u, m: received.append(
        Message(m.topic, bytes(m.payload), m.qos, bool(m.retain))
    )
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        if not subscribed.wait(5):
            raise ConnectionError(f"no SUBACK from {host}:{port} within 5 s")
        threading.Event().wait(seconds)  # the listening window the user asked for
    finally:
        client.disconnect()
        client.loop_stop()
    return list(received)


def _seconds(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: write a duration such as 10s, 500ms, 1m")
    value = float(match.group(1))
    return (
        value / 1000 if match.group(2) == "ms" else value * 60 if match.group(2) == "m" else value
    )


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "lint-topics",
        help="check topics, QoS, retain flags and payloads against the seeds' conventions",
        description="Check every message of a live broker (--broker-url, --for) or of a "
        "capture file (JSON lines: topic, qos, retain, payload; `python -m sim.observer "
        "--json` writes them) against the Virtual Factory's and the chocolate line's topic "
        "conventions. Prints the findings per topic with the rule broken. Exit status 0 "
        "when nothing breaks them, 1 when something does, 2 when there is nothing to read.",
    )
    parser.add_argument("capture", nargs="?", type=Path, help="capture file ('-': stdin)")
    parser.add_argument(
        "--broker-url", default="mqtt://127.0.0.1:1884", help="broker to listen to (the sandbox's)"
    )
    parser.add_argument(
        "--for", dest="duration", type=_seconds, default=10.0, help="how long to listen (10s)"
    )
    parser.add_argument("--username", default="observer", help="user name (docker/acl: observer)")
    parser.add_argument("--root", default="factory", help="the topic root (default factory)")
    parser.add_argument(
        "--devices",
        type=lambda text: [d for d in text.split(",") if d],
        default=None,
        help="the device ids the factory has (default the contract's device kinds)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> int:
    if args.capture is not None:
        source = sys.stdin if str(args.capture) == "-" else None
        try:
            text = source.read() if source else args.capture.read_text()
        except OSError as error:
            print(f"mqtt-lab lint-topics: cannot read {args.capture}: {error}", file=sys.stderr)
            return 2
        messages = list(read_capture(text.splitlines()))
    else:
        try:
            messages = listen(args.broker_url, args.duration, args.username)
        except (OSError, ConnectionError) as error:
            print(
                f"mqtt-lab lint-topics: cannot listen to {args.broker_url}: {error}. Is a broker "
                "running there (`mqtt-lab sandbox up`)?",
                file=sys.stderr,
            )
            return 2
    if not messages:
        print("mqtt-lab lint-topics: no message to check", file=sys.stderr)
        return 2
    report = lint(messages, args.root, args.devices)
    report.write(sys.stdout)
    return 1 if report.findings else 0


def main(argv: Sequence[str] | None = None) -> Any:
    parser = argparse.ArgumentParser(prog="mqtt-lab")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)

"""The factory's controller: reacts to alarms by commanding other machines.

::

    $ python -m sim.controller --rule press/temperature=conveyor --session persistent
    ready controller

It subscribes to ``<root>/alarms/#`` at QoS 1. Each rule ``SOURCE/SENSOR=TARGET``
means: when device SOURCE raises an alarm on SENSOR, send ``stop`` to TARGET;
when that alarm clears, send ``start`` to TARGET. Commands go to
``<root>/commands/<controller id>/<target>`` (QoS 1, not retained), so the
device and anyone watching knows who sent them, and the ACL lets a command
publisher write only under its own id. A target stopped by several alarms is
restarted only when the last of them has cleared.

Every decision is published as a decision event on
``<root>/events/<controller id>`` (QoS 1) and logged on stderr, as text or as
JSON lines (``--log-format json``), so its logic can be checked from outside.

``--session persistent`` is the lesson on sessions: the controller keeps its
client id, connects with clean start off (MQTT 3.1.1: clean session off) and,
on MQTT 5, a session expiry of ``--session-expiry`` seconds. While it is
offline the broker queues the QoS 1 alarms for it and delivers them when it
reconnects; it acts on them then. With ``--session clean`` those alarms are
lost.

On MQTT 5 (lesson 09) every command carries a **message expiry interval**
(``--command-expiry``, 30 s by default): a ``stop`` that waited in a conveyor's session
longer than that is deleted by the broker instead of stopping the conveyor when it comes
back. Every publish says what it carries (user property ``schema=vf.<schema>/1``, content
type ``application/json``). ``--ask-setpoints DEVICE`` asks a device for its setpoints
(request/response: a Response Topic and Correlation Data) and prints
``setpoints DEVICE {json}`` for each answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from sim.connection import BrokerSettings, add_arguments, connect, make_client
from sim.mqtt5 import SETPOINTS, publish_properties, request_properties
from sim.runtime import JsonFormatter, StopSignals, broker_settings, print_ready, setup_logging
from sim.topics import Topics

log = logging.getLogger("controller")

DEFAULT_RULE = "press/temperature=conveyor"


@dataclass(frozen=True)
class Rule:
    """When ``source``'s ``sensor`` alarm is raised, stop ``target``; when cleared, start it."""

    source: str
    sensor: str
    target: str

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``"press/temperature=conveyor"`` → ``Rule("press", "temperature", "conveyor")``.

        :raises ValueError: explaining the expected form.
        """
        left, sep, target = text.partition("=")
        source, slash, sensor = left.partition("/")
        parts = (source.strip(), sensor.strip(), target.strip())
        if not sep or not slash or not all(parts) or any(c in p for p in parts for c in "/+#"):
            raise ValueError(
                f"rule {text!r} is not of the form SOURCE/SENSOR=TARGET "
                f"(for example {DEFAULT_RULE!r}); names may not contain '/', '+' or '#'"
            )
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.source}/{self.sensor}={self.target}"


class Controller:
    """The controller's logic and its MQTT client.

    :param controller_id: client id, and the ``<publisher>`` level of its command topics.
    :param rules: what to do for which alarm.
    :param settings: where the broker is.
    :param persistent: keep the session (and its queued alarms) across disconnections.
    :param session_expiry: MQTT 5 session expiry for a persistent session, in seconds.
    """

    def __init__(
        self,
        controller_id: str,
        rules: Sequence[Rule],
        settings: BrokerSettings,
        *,
        persistent: bool = False,
        session_expiry: int = 3600,
        command_expiry: int = 30,
    ) -> None:
        self.controller_id = controller_id
        self.rules = list(rules)
        self.settings = settings
        self.topics = Topics(settings.topic_root)
        self.alarm_filter = f"{self.topics.root}/alarms/#"
        self.persistent = persistent
        self.command_expiry = command_expiry
        #: replies to our requests arrive here (MQTT 5 only)
        self.reply_filter = f"{self.topics.root}/replies/+/{controller_id}"
        #: correlation data of each request in flight -> its answer, once it arrived
        self.pending: dict[bytes, dict[str, Any] | None] = {}
        self._answered = threading.Condition()
        #: alarms currently holding each target stopped, as "source/sensor"
        self.holding: dict[str, set[str]] = {rule.target: set() for rule in self.rules}
        self.subscribed = threading.Event()
        self.failed: str | None = None
        self._lock = threading.Lock()
        self.client = make_client(
            controller_id,
            settings,
            clean_start=not persistent,
            session_expiry=session_expiry if persistent and settings.protocol == "5" else None,
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    # -- MQTT --------------------------------------------------------------------
    def start(self) -> None:
        """Connect and subscribe. :raises ConnectionError: when the broker is unreachable."""
        connect(self.client, self.settings)

    def stop(self) -> None:
        """Disconnect cleanly. A persistent session stays on the broker and keeps queueing."""
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        session = "the broker resumed the previous one" if flags.session_present else "a new one"
        log.info(
            "connected as %s (%s session: %s); subscribing to %s",
            self.controller_id,
            "persistent" if self.persistent else "clean",
            session,
            self.alarm_filter,
        )
        # Subscribe on every connect: a clean session forgets subscriptions.
        if self.settings.protocol == "5":
            client.subscribe([(self.alarm_filter, 1), (self.reply_filter, 1)])
        else:
            client.subscribe(self.alarm_filter, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        code = reason_codes[0]
        if code.is_failure:
            self.failed = f"the broker refused the subscription to {self.alarm_filter}: {code}"
            log.error("%s", self.failed)
        self.subscribed.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code != 0:
            log.warning("disconnected (%s); paho reconnects", reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        if mqtt.topic_matches_sub(self.reply_filter, message.topic):
            self._on_reply(message)
            return
        if message.retain:
            # Alarms are events, never retained: a retained one is stale history
            # that would stop a machine again at every reconnect.
            log.warning(
                "ignoring the retained message on %s: alarms are not retained", message.topic
            )
            return
        try:
            self.handle_alarm(message.topic, message.payload)
        except Exception:  # a bad message must never stop the controller
            log.exception("could not handle the message on %s", message.topic)

    def _on_reply(self, message: mqtt.MQTTMessage) -> None:
        correlation = getattr(getattr(message, "properties", None), "CorrelationData", None)
        with self._answered:
            key = bytes(correlation) if correlation else None
            if key is None or key not in self.pending:
                log.warning(
                    "ignoring a reply on %s: its correlation data %r is none of our requests",
                    message.topic,
                    key,
                )
                return
            try:
                self.pending[key] = json.loads(message.payload)
            except ValueError:
                log.warning("ignoring a reply on %s: not JSON", message.topic)
                return
            self._answered.notify_all()

    def ask_setpoints(self, device: str, timeout: float = 5.0) -> dict[str, Any] | None:
        """Ask ``device`` for its setpoints (MQTT 5 request/response); its reply, or None.

        The request goes to the device's command topic with a Response Topic (where to
        answer) and Correlation Data (a label the device sends back unchanged): several
        requests may be in flight on one reply topic without being confused.
        """
        if self.settings.protocol != "5":
            raise RuntimeError("request/response needs MQTT 5 (a Response Topic property)")
        correlation = uuid.uuid4().bytes
        with self._answered:
            self.pending[correlation] = None
        properties = request_properties(
            self.topics.reply(device, self.controller_id), correlation, expiry=int(timeout) + 1
        )
        self.client.publish(
            self.topics.command(self.controller_id, device),
            json.dumps({"request": SETPOINTS}),
            qos=1,
            properties=properties,
        )
        with self._answered:
            self._answered.wait_for(lambda: self.pending[correlation] is not None, timeout)
            return self.pending.pop(correlation)

    # -- logic -------------------------------------------------------------------
    def handle_alarm(self, topic: str, payload: bytes) -> list[dict[str, Any]]:
        """Act on one alarm message; return the decision events published."""
        parts = topic.split("/")
        root_len = len(self.topics.root.split("/"))
        if len(parts) != root_len + 3:
            log.warning("ignoring %s: not <root>/alarms/<device>/<sensor>", topic)
            return []
        device, sensor = parts[root_len + 1], parts[root_len + 2]
        try:
            alarm = json.loads(payload)
            state = alarm["state"]
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring %s: payload is not an alarm: %r", topic, payload[:200])
            return []
        if state not in ("raised", "cleared"):
            log.warning("ignoring %s: alarm state %r is neither raised nor cleared", topic, state)
            return []
        decisions = []
        for rule in self.rules:
            if (rule.source, rule.sensor) == (device, sensor):
                decision = self._decide(rule, topic, alarm, state)
                if decision is not None:
                    decisions.append(decision)
        return decisions

    def _decide(
        self, rule: Rule, topic: str, alarm: dict[str, Any], state: str
    ) -> dict[str, Any] | None:
        key = f"{rule.source}/{rule.sensor}"
        with self._lock:
            holding = self.holding.setdefault(rule.target, set())
            if state == "raised":
                holding.add(key)
                command = "stop"
                reason = f"{key} alarm raised{_detail(alarm)}: stop {rule.target}"
            else:
                holding.discard(key)
                if holding:
                    log.info(
                        "%s alarm cleared, but %s stays stopped: still raised: %s",
                        key,
                        rule.target,
                        ", ".join(sorted(holding)),
                    )
                    return None
                command = "start"
                reason = f"{key} alarm cleared{_detail(alarm)}: start {rule.target}"
        now = time.time()
        command_payload = {
            "command": command,
            "reason": reason,
            "ts": now,
            "command_id": f"{self.controller_id}-{uuid.uuid4().hex[:12]}",
            "issued_by": self.controller_id,
        }
        command_topic = self.topics.command(self.controller_id, rule.target)
        self.client.publish(
            command_topic,
            json.dumps(command_payload),
            qos=1,
            properties=publish_properties(
                "commands", self.settings.protocol, expiry=self.command_expiry
            ),
        )
        event = {
            "ts": now,
            "controller_id": self.controller_id,
            "event": "decision",
            "trigger": {
                "topic": topic,
                "device_id": rule.source,
                "sensor": rule.sensor,
                "state": state,
            },
            "action": {"device_id": rule.target, "command": command},
            "reason": reason,
            "command_id": command_payload["command_id"],
            "command_topic": command_topic,
        }
        self.client.publish(
            self.topics.events(self.controller_id),
            json.dumps(event),
            qos=1,
            properties=publish_properties("events", self.settings.protocol),
        )
        log.info("decision: %s", reason, extra={"decision": event})
        return event


def _detail(alarm: dict[str, Any]) -> str:
    """`` (value 97.2, high 95.0)``: what the alarm says about its value and limits."""
    parts = [
        f"{name} {alarm[name]}"
        for name in ("value", "low", "high")
        if isinstance(alarm.get(name), int | float) and not isinstance(alarm.get(name), bool)
    ]
    return f" ({', '.join(parts)})" if parts else ""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.controller",
        description="React to alarms: stop a machine while another one is in alarm, restart it "
        "when the alarm clears.",
    )
    parser.add_argument(
        "--rule",
        action="append",
        metavar="SOURCE/SENSOR=TARGET",
        help=f"alarm on SOURCE's SENSOR raised: stop TARGET; cleared: start it "
        f"(repeatable; default {DEFAULT_RULE})",
    )
    parser.add_argument(
        "--client-id",
        default="controller",
        help="client id, also the publisher level of command topics (default controller)",
    )
    parser.add_argument(
        "--session",
        choices=("clean", "persistent"),
        default="clean",
        help="persistent: keep the session so alarms published while we are offline are "
        "delivered when we reconnect (default clean)",
    )
    parser.add_argument(
        "--session-expiry",
        type=int,
        default=3600,
        help="MQTT 5 session expiry in seconds for --session persistent (default 3600)",
    )
    parser.add_argument(
        "--command-expiry",
        type=int,
        default=30,
        metavar="S",
        help="MQTT 5 message expiry of every command: a command not delivered within S "
        "seconds is deleted by the broker (default 30)",
    )
    parser.add_argument(
        "--ask-setpoints",
        action="append",
        default=[],
        metavar="DEVICE",
        help="MQTT 5: once connected, ask DEVICE for its setpoints and print "
        "'setpoints DEVICE {json}' (repeatable)",
    )
    parser.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="stderr log format"
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rules = [Rule.parse(text) for text in (args.rule or [DEFAULT_RULE])]
    except ValueError as error:
        parser.error(str(error))
    settings = broker_settings(parser, args)
    setup_logging(
        JsonFormatter()
        if args.log_format == "json"
        else "%(asctime)s controller %(levelname)s %(message)s"
    )
    with StopSignals() as stop:
        controller = Controller(
            args.client_id,
            rules,
            settings,
            persistent=args.session == "persistent",
            session_expiry=args.session_expiry,
            command_expiry=args.command_expiry,
        )
        log.info("rules: %s", ", ".join(str(r) for r in rules))
        try:
            controller.start()
        except ConnectionError as error:
            log.error("%s", error)
            return 1
        try:
            if not controller.subscribed.wait(10.0):
                log.error("no SUBACK for %s within 10s", controller.alarm_filter)
                return 1
            if controller.failed:
                return 1
            print_ready(args.client_id)
            for device in args.ask_setpoints:
                answer = controller.ask_setpoints(device)
                if answer is None:
                    log.warning("%s did not answer the setpoints request within 5 s", device)
                else:
                    print(f"setpoints {device} {json.dumps(answer)}", flush=True)
            stop.wait()
            log.info("stopping (signal %d)", stop.signum)
            return 0
        finally:
            controller.stop()


if __name__ == "__main__":
    sys.exit(main())

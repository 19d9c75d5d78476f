"""A simulated factory device on the MQTT broker: ``python -m sim.device --device press``.

The device is in two layers:

* :class:`DeviceCore` decides everything (telemetry, alarms, state, how to
  answer a command) and returns the messages to send as :class:`Outgoing`
  values. It has no network code, so it is tested directly.
* :class:`DeviceRunner` only moves bytes: it connects with a Last Will,
  subscribes to the device's commands, feeds what arrives to the core and
  publishes what the core returns.

What the device publishes (``<root>`` is ``factory`` unless ``--topic-root``
or ``VF_TOPIC_ROOT`` says otherwise)::

    <root>/status/<id>            retained, QoS 1  online (connected) / offline (shutdown);
                                                   Last Will: offline (last-will)
    <root>/state/<id>             retained, QoS 1  at start and whenever the state, a setpoint
                                                   or a command/alarm counter changes
    <root>/telemetry/<id>/<sensor>  QoS 0          every round, one message per sensor
    <root>/alarms/<id>/<sensor>   QoS 1            raised / cleared (with hysteresis)
    <root>/events/<id>            QoS 1            command_rejected, with the reason

and it obeys ``<root>/commands/+/<id>`` (QoS 1). On MQTT 5 every publish carries the user
property ``schema=vf.<schema>/1`` and content type ``application/json``, and a message
``{"request": "setpoints"}`` on the command topic with a Response Topic is answered there,
with the request's Correlation Data (:mod:`sim.mqtt5`, lesson 09).

Choices worth knowing:

* A stopped (or faulted) machine keeps publishing telemetry: the plant's
  physics goes on, so a dashboard sees the oven cool down and an alarm clears
  after a controller stopped the machine. Only the ``produced`` counter stops.
* ``produced`` grows continuously but does not by itself republish the
  retained state (that would be one retained message per round); every state
  message carries its current value.
* A *critical* alarm (press pressure, oven temperature) trips the machine into
  ``fault``. ``start`` is refused until a ``reset``, which leaves the machine
  stopped with default setpoints.
* A command delivered with the retain flag (a stale retained command) is
  refused: obeying it would repeat it after every reconnect.
* Each round advances exactly ``time_scale / rate`` plant seconds, however
  late the round is, so the values (not the timestamps) of a run depend only
  on ``--seed``, ``--time-scale``, ``--rate``, ``--anomaly`` and the commands.

Example::

    $ python -m sim.device --device press --device-id press-01 --port 1884 --time-scale 60
    ready press-01
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from sim.alarms import RAISED, AlarmChange, AlarmPanel
from sim.commands import Command, CommandRejected, parse_command
from sim.connection import (
    BrokerSettings,
    add_arguments,
    connect,
    make_client,
    tls_files_problem,
)
from sim.machines import DEVICE_KINDS, AnomalySchedule, Machine, TransitionRefused
from sim.mqtt5 import SETPOINTS, publish_properties, reply, request_of
from sim.runtime import JsonFormatter, StopSignals, add_log_level, print_ready, setup_logging
from sim.topics import QOS, RETAINED, Topics

DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: exit status of ``--crash-after``: the process vanishes without DISCONNECT
CRASH_EXIT_CODE = 3
#: how much of a rejected payload an error event quotes
RECEIVED_LIMIT = 200

log = logging.getLogger("sim.device")


@dataclass(frozen=True)
class Outgoing:
    """One message the device wants published."""

    topic: str
    payload: dict[str, Any]
    qos: int
    retain: bool

    def encode(self) -> bytes:
        # allow_nan=False: JSON has no NaN/Infinity; better a loud bug than a bad payload.
        return json.dumps(self.payload, allow_nan=False, separators=(",", ":")).encode()


class DeviceCore:
    """Everything a device decides, without the network.

    :param device_id: the device's name in topics and payloads.
    :param kind: one of :data:`sim.machines.DEVICE_KINDS`.
    :param topics: the namespace to publish in.
    :param seed: seeds the machine (see :class:`sim.machines.Machine`).
    :param anomaly: inject out-of-range excursions now and then.
    :param clock: wall clock for ``ts`` (tests pass a fake one).

    Example::

        >>> core = DeviceCore("press-01", "press", Topics("factory"), clock=lambda: 1767225600.0)
        >>> [m.topic for m in core.tick(1.0)]
        ['factory/telemetry/press-01/temperature', 'factory/telemetry/press-01/pressure']
        >>> [m.payload["state"] for m in core.handle("factory/commands/dashboard/press-01",
        ...                                          b'{"command": "stop"}')]
        ['stopped']
    """

    def __init__(
        self,
        device_id: str,
        kind: str,
        topics: Topics,
        *,
        seed: int = 1,
        anomaly: bool = False,
        schedule: AnomalySchedule | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self.kind = kind
        self.topics = topics
        self.machine = Machine(
            kind, seed=seed, identity=device_id, anomaly=anomaly, schedule=schedule
        )
        self.alarms = AlarmPanel.for_kind(kind)
        self.clock = clock
        self.seq = 0
        self.reason: str | None = "initial state"

    @property
    def counters(self) -> dict[str, int]:
        return self.machine.counters.as_dict()

    # -- messages -------------------------------------------------------------
    def _out(self, kind: str, topic: str, payload: dict[str, Any]) -> Outgoing:
        return Outgoing(topic, payload, QOS[kind], kind in RETAINED)

    def state(self) -> Outgoing:
        """The retained state message as of now."""
        payload: dict[str, Any] = {
            "ts": self.clock(),
            "device_id": self.device_id,
            "kind": self.kind,
            "state": self.machine.state,
            "setpoints": dict(self.machine.setpoints),
            "counters": self.counters,
        }
        if self.reason:
            payload["reason"] = self.reason
        return self._out("state", self.topics.state(self.device_id), payload)

    def status(self, status: str, reason: str) -> Outgoing:
        """The retained status message: ``online``/``connected`` or ``offline``/..."""
        payload = {
            "ts": self.clock(),
            "device_id": self.device_id,
            "status": status,
            "reason": reason,
        }
        return self._out("status", self.topics.status(self.device_id), payload)

    def will(self) -> tuple[str, bytes, int, bool]:
        """The Last Will, as :func:`sim.connection.make_client` wants it.

        Its ``ts`` is the time of connection: the broker sends the will later,
        unchanged, and cannot know when the device died.
        """
        message = self.status("offline", "last-will")
        return message.topic, message.encode(), message.qos, message.retain

    # -- the plant moves ------------------------------------------------------
    def tick(self, dt_plant: float) -> list[Outgoing]:
        """Advance the plant by ``dt_plant`` seconds: telemetry, then alarms, then state."""
        before = (self.machine.state, self.machine.counters.alarms_raised)
        readings = self.machine.step(dt_plant)
        now = self.clock()
        out = [
            self._out(
                "telemetry",
                self.topics.telemetry(self.device_id, r.sensor),
                {
                    "ts": now,
                    "device_id": self.device_id,
                    "sensor": r.sensor,
                    "value": r.value,
                    "unit": r.unit,
                    "seq": self.seq,
                    "plant_time": round(self.machine.plant_time, 3),
                },
            )
            for r in readings.values()
        ]
        self.seq += 1
        for change in self.alarms.update({name: r.value for name, r in readings.items()}):
            out.append(self._alarm(change, now))
            if change.state == RAISED:
                self.machine.counters.alarms_raised += 1
                if change.severity == "critical" and self.machine.fault():
                    self.reason = f"fault: {change.message}"
                    log.warning("%s tripped: %s", self.device_id, change.message)
        if (self.machine.state, self.machine.counters.alarms_raised) != before:
            out.append(self.state())
        return out

    def _alarm(self, change: AlarmChange, now: float) -> Outgoing:
        log.info("alarm %s on %s: %s", change.state, change.sensor, change.message)
        payload = {"ts": now, "device_id": self.device_id, **change.as_payload()}
        return self._out("alarms", self.topics.alarm(self.device_id, change.sensor), payload)

    # -- commands -------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, *, retained: bool = False) -> list[Outgoing]:
        """Answer one message from the command topic: the new state, or an error event."""
        if retained:
            return self._reject(
                topic,
                payload,
                "the command arrived as a retained message; commands must not be retained "
                "(the device would obey them again on every reconnect), so it is ignored: clear "
                "it by publishing an empty retained message to that topic",
            )
        try:
            command = parse_command(payload, self.kind)
        except CommandRejected as error:
            return self._reject(topic, payload, error.reason)
        try:
            self._apply(command)
        except TransitionRefused as error:
            return self._reject(topic, payload, error.reason, command)
        self.machine.counters.commands_accepted += 1
        publisher = command.issued_by or _publisher(topic)
        self.reason = command.reason or f"{command.describe()} from {publisher}"
        log.info(
            "obeyed %s from %s (%s); now %s",
            command.describe(),
            publisher,
            command.reason or "no reason given",
            self.machine.state,
        )
        return [self.state()]

    def _apply(self, command: Command) -> None:
        machine = self.machine
        if command.command == "start":
            machine.start()
        elif command.command == "stop":
            machine.stop()
        elif command.command == "reset":
            machine.reset()
        else:
            assert command.setpoint is not None and command.value is not None
            machine.set_setpoint(command.setpoint, command.value)

    def _reject(
        self, topic: str, payload: bytes, reason: str, command: Command | None = None
    ) -> list[Outgoing]:
        self.machine.counters.commands_rejected += 1
        received = bytes(payload).decode("utf-8", errors="replace")[:RECEIVED_LIMIT]
        log.warning("rejected command on %s: %s (received %r)", topic, reason, received[:80])
        event: dict[str, Any] = {
            "ts": self.clock(),
            "device_id": self.device_id,
            "event": "command_rejected",
            "reason": reason,
            "topic": topic,
            "received": received,
        }
        if command is not None and command.command_id:
            event["command_id"] = command.command_id
        return [self._out("events", self.topics.events(self.device_id), event), self.state()]


def _publisher(topic: str) -> str:
    """``dashboard`` in ``<root>/commands/dashboard/<device>``."""
    parts = topic.split("/")
    return parts[-2] if len(parts) >= 2 else "?"


# -- the network layer -----------------------------------------------------------
_STOP = object()
_RECONNECTED = object()


@dataclass(frozen=True)
class _Inbound:
    topic: str
    payload: bytes
    retained: bool
    properties: Any = None


class DeviceRunner:
    """Runs a :class:`DeviceCore` on a broker until told to stop.

    :param args: the parsed command line (see :func:`build_parser`).
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.settings = BrokerSettings.from_args(args)
        problem = tls_files_problem(self.settings)  # a CA, certificate or key it cannot use
        if problem:
            raise ValueError(problem)
        self.device_id: str = args.device_id or args.device
        self.client_id: str = args.client_id or self.device_id
        self.topics = Topics(self.settings.topic_root)
        self.core = DeviceCore(
            self.device_id, args.device, self.topics, seed=args.seed, anomaly=args.anomaly
        )
        # One queue carries everything the main loop reacts to: commands from
        # paho's thread and stop requests from signal handlers
        # (SimpleQueue.put is safe to call from a signal handler).
        self.inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._subacks: dict[int, list[Any]] = {}
        self._suback_cond = threading.Condition()
        self._setup_done = False
        self._closing = False

    # paho callbacks (network thread): hand over, never decide here
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        properties = getattr(msg, "properties", None)
        self.inbox.put(_Inbound(msg.topic, bytes(msg.payload), bool(msg.retain), properties))

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self._setup_done and not getattr(reason, "is_failure", False):
            self.inbox.put(_RECONNECTED)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self._setup_done and not self._closing:
            log.warning("lost the broker connection (%s); paho will reconnect", reason)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        with self._suback_cond:
            self._subacks[mid] = list(reason_codes)
            self._suback_cond.notify_all()

    # -- steps ------------------------------------------------------------------
    def publish(self, message: Outgoing, wait: float | None = None) -> None:
        properties = publish_properties(self.topics.kind_of(message.topic), self.settings.protocol)
        info = self.client.publish(
            message.topic, message.encode(), message.qos, message.retain, properties=properties
        )
        if wait is not None and message.qos > 0:
            try:
                info.wait_for_publish(timeout=wait)
            except (RuntimeError, ValueError) as error:
                log.warning("publish to %s not confirmed: %s", message.topic, error)
            if not info.is_published():
                log.warning("no PUBACK for %s within %ss", message.topic, wait)

    def subscribe(self, timeout: float = 10.0) -> None:
        topic = self.topics.commands_for(self.device_id)
        result, mid = self.client.subscribe(topic, qos=QOS["commands"])
        if result != mqtt.MQTT_ERR_SUCCESS:
            why = mqtt.error_string(result)
            raise ConnectionError(f"could not send SUBSCRIBE for {topic}: {why}")
        with self._suback_cond:
            if not self._suback_cond.wait_for(lambda: mid in self._subacks, timeout):
                raise ConnectionError(f"no SUBACK for {topic} within {timeout}s")
            codes = self._subacks.pop(mid)
        for code in codes:
            if getattr(code, "is_failure", False):
                raise ConnectionError(f"the broker refused the subscription to {topic}: {code}")
        log.info("subscribed to %s", topic)

    def announce(self) -> None:
        """Say we are online and what state we are in (both retained, both confirmed)."""
        self.publish(self.core.status("online", "connected"), wait=10.0)
        self.publish(self.core.state(), wait=10.0)

    def run(self) -> int:
        args = self.args
        self.client = make_client(self.client_id, self.settings, will=self.core.will())
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        # After a lost connection paho retries with growing delays; cap them so a
        # device is back seconds after its broker (the default cap is 2 minutes).
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        # Installed before connecting: a stop request during start-up is honoured
        # (gracefully) as soon as the device is online, instead of killing it.
        with StopSignals(wake=lambda signum: self.inbox.put(_STOP)):
            try:
                connect(self.client, self.settings)
                self.subscribe()
            except ConnectionError as error:
                log.error("%s", error)
                self.client.loop_stop()
                return 1
            self.announce()
            self._setup_done = True
            log.info(
                "%s (%s) online at %s:%s under %r: seed %s, time scale %g, %g rounds/s%s",
                self.device_id,
                args.device,
                self.settings.host,
                self.settings.port,
                self.topics.root,
                args.seed,
                args.time_scale,
                args.rate,
                ", anomalies on" if args.anomaly else "",
            )
            print_ready(self.device_id)
            self.loop()
            return self.shutdown()

    def loop(self) -> None:
        """Tick on schedule, answer commands as they come, until a stop or deadline."""
        args = self.args
        period = 1.0 / args.rate
        dt_plant = args.time_scale / args.rate
        started = time.monotonic()
        end_at = started + args.duration if args.duration is not None else None
        crash_at = started + args.crash_after if args.crash_after is not None else None
        next_tick = started
        while True:
            now = time.monotonic()
            if crash_at is not None and now >= crash_at:
                self.crash()
            if end_at is not None and now >= end_at:
                log.info("--duration %gs is over", args.duration)
                return
            if now >= next_tick:
                for message in self.core.tick(dt_plant):
                    self.publish(message)
                # Never burst to catch up: a late round just starts the next period.
                next_tick = max(next_tick + period, now)
                continue
            deadlines = [t for t in (next_tick, end_at, crash_at) if t is not None]
            try:
                item = self.inbox.get(timeout=max(0.0, min(deadlines) - now))
            except queue.Empty:
                continue
            if item is _STOP:
                log.info("asked to stop")
                return
            if item is _RECONNECTED:
                log.info("reconnected; subscribing and announcing again")
                try:
                    self.subscribe()
                except ConnectionError as error:
                    log.error("%s", error)
                self.announce()
            elif isinstance(item, _Inbound) and not self.answer(item):
                for message in self.core.handle(item.topic, item.payload, retained=item.retained):
                    self.publish(message)

    def answer(self, item: _Inbound) -> bool:
        """Answer a request (MQTT 5: a Response Topic), on that topic with its Correlation Data.

        :returns: whether ``item`` was a request (else it is a command for the core).
        """
        request = request_of(item.payload, item.properties)
        if request is None:
            return False
        if request.what != SETPOINTS:
            log.warning("unknown request %r on %s: not answered", request.what, item.topic)
            return True
        payload = reply(self.device_id, self.core.machine.state, dict(self.core.machine.setpoints))
        properties = publish_properties(
            "replies", self.settings.protocol, correlation=request.correlation
        )
        self.client.publish(request.response_topic, payload, qos=1, properties=properties)
        log.info("answered the setpoints request on %s", request.response_topic)
        return True

    def crash(self) -> None:
        """Vanish like a pulled plug: no offline status, no DISCONNECT, so the will goes out."""
        log.warning(
            "--crash-after %gs: exiting abruptly, without DISCONNECT", self.args.crash_after
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        os._exit(CRASH_EXIT_CODE)

    def shutdown(self) -> int:
        """Publish offline (retained, confirmed), then DISCONNECT so no will is sent."""
        self.publish(self.core.status("offline", "shutdown"), wait=5.0)
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
        log.info("%s offline, disconnected", self.device_id)
        return 0


# -- command line -------------------------------------------------------------------
def _device_id(text: str) -> str:
    if not DEVICE_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid device id: letters, digits, '_', '.', '-', starting with "
            "a letter or digit, at most 64 characters (it is a topic level, so no / + #)"
        )
    return text


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.device",
        description="Simulate one factory device on the MQTT broker: telemetry, alarms, "
        "retained state and status (with a Last Will), and obey commands.",
        epilog="Prints 'ready <device id>' on stdout once online and subscribed; logs go to "
        "stderr. SIGTERM or Ctrl-C: publish offline, disconnect, exit 0.",
    )
    parser.add_argument(
        "--device",
        required=True,
        choices=DEVICE_KINDS,
        metavar="KIND",
        help=f"kind of machine: {', '.join(DEVICE_KINDS)}",
    )
    parser.add_argument(
        "--device-id",
        type=_device_id,
        metavar="ID",
        help="name in topics and payloads (default: the kind)",
    )
    parser.add_argument("--client-id", help="MQTT client id (default: the device id)")
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed for noise, drift and anomalies; same seed, same values (default 1)",
    )
    parser.add_argument(
        "--time-scale",
        type=_positive,
        default=1.0,
        metavar="X",
        help="plant seconds per wall second (default 1; 60 = a minute a second)",
    )
    parser.add_argument(
        "--rate",
        type=_positive,
        default=1.0,
        metavar="HZ",
        help="telemetry rounds per wall second (default 1)",
    )
    parser.add_argument(
        "--duration",
        type=_positive,
        metavar="S",
        help="run S wall seconds, then shut down gracefully (default: forever)",
    )
    parser.add_argument(
        "--crash-after",
        type=_non_negative,
        metavar="S",
        help="after S wall seconds, die abruptly without DISCONNECT (exit "
        f"{CRASH_EXIT_CODE}), so the broker publishes the Last Will",
    )
    parser.add_argument(
        "--anomaly",
        action="store_true",
        help="now and then push a sensor out of range (raises alarms)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="stderr log format (default text)",
    )
    add_log_level(parser)
    add_arguments(parser)
    return parser


def configure_logging(log_format: str, level: str, device_id: str) -> None:
    setup_logging(
        JsonFormatter({"device_id": device_id})
        if log_format == "json"
        else f"%(asctime)s %(levelname)s {device_id}: %(message)s",
        level,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device_id = args.device_id or args.device
    configure_logging(args.log_format, args.log_level, device_id)
    try:
        runner = DeviceRunner(args)
    except ValueError as error:  # bad VF_* variable, or a TLS file it cannot use
        log.error("%s", error)
        return 2
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())

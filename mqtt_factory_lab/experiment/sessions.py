"""Lesson 05's instruments: session settings, the press's alarms, and what the broker's log
says about a controller's session.

The chapter (``labs/05_sessions.py``) holds the concept and the experiments; this module what
they share:

* :func:`alarm`, :func:`session` — the press's alarm payload, and ``mqtt_client`` settings for
  a clean or a persistent session in each MQTT version;
* :func:`controller_connection`, :func:`which_cause` — the controller's connection as the
  broker logged it, and which of the three ways to lose a session it shows, with the fix;
* :func:`command_names` — the commands a list of messages carries;
* :class:`ExpiredSession`, :func:`leave_with_expiry` — an MQTT 5 session left to expire, the
  broker telling when it ends;
* :class:`DroppedDevice`, :func:`drop_session` — a solution's device that lost its connection
  and its session after obeying a command.

The last two are runs for :class:`~mqtt_factory_lab.experiment.ahead.Ahead`: their waits (a
session expiry, a device's own reconnect delay) pass while other experiments run.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mqtt_factory_lab.brokers import LOG, Broker
from mqtt_factory_lab.brokers.mosquitto_log import (
    Connection,
    connections,
    routed_to,
    subscriptions,
)
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.client import ReceivedMessage, RecordingClient
from mqtt_factory_lab.core.factory import DeviceHandle, FactoryLauncher
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.experiment import unique
from mqtt_factory_lab.experiment.ahead import ModuleClients, seconds_left

#: how long an MQTT 5 session outlives its connection in these experiments, unless a test
#: is about expiry itself
EXPIRY = 60
PROMPT = 3.0


def alarm(state: str, value: float, device_id: str = "press-01") -> dict:
    """An alarm on a press's temperature, as the press publishes it (checked against its schema)."""
    return validate(
        "alarm",
        {
            "ts": time.time(),
            "device_id": device_id,
            "sensor": "temperature",
            "state": state,
            "value": value,
            "low": None,
            "high": 220.0,
            "severity": "critical" if state == "raised" else "warning",
            "message": f"temperature {value} C {'above' if state == 'raised' else 'back under'} "
            "220.0 C",
        },
    )


def session(protocol: str, persistent: bool, expiry: int = EXPIRY) -> dict:
    """``mqtt_client`` settings for a clean or a persistent session in each MQTT version."""
    if not persistent:
        return {"protocol": protocol, "clean_start": True}
    return {
        "protocol": protocol,
        "clean_start": False,
        "session_expiry": expiry if protocol == "5" else None,
    }


def controller_connection(broker: Broker, mark: int, ours: set[str]) -> Connection | None:
    """The controller's connection as the broker logged it since ``mark`` (None without a log).

    Every connection logged since ``mark`` that is not one of the lab's own clients is the
    controller's; the last one counts. Waits a moment for a log that is read with a delay
    (the docker backend).
    """
    if LOG not in broker.capabilities:
        return None

    def last_connection() -> Connection | None:
        theirs = [c for c in connections(broker.log_lines()[mark:]) if c.client_id not in ours]
        return theirs[-1] if theirs else None

    with contextlib.suppress(ProcessTimeout):
        return wait_until(last_connection, timeout=PROMPT)
    return None


def which_cause(
    broker: Broker, mark: int, client_id: str, protocol: str, first: Connection | None
) -> str:
    """Which of the three ways to lose a session the broker's log shows, with the fix.

    A session keeps queued alarms only with the same client id (checked before), clean start
    off (checked before), a QoS 1 subscription, and (MQTT 5) a session expiry > 0. The log
    has the subscription's QoS and the clean flag; the expiry is what remains.
    """
    keep = (
        "Keep the session: the same client id, clean start off (MQTT 5: a session expiry > 0) "
        "and a QoS 1 subscription to the alarms."
    )
    if LOG not in broker.capabilities or first is None:
        return keep
    logged = subscriptions(broker.log_lines()[mark:], first.client_id)
    if logged and all(qos == 0 for _filter, qos in logged):
        shown = ", ".join(dict.fromkeys(f"{f} at QoS {q}" for f, q in logged))
        return (
            f"The broker logged the controller's subscription: {shown}. Nothing is queued for a "
            "QoS 0 subscription, persistent session or not: subscribe to the alarms at QoS 1."
        )
    if protocol == "5" and not first.clean:
        return (
            "The broker logged clean start = 0 and a QoS 1 subscription, so the session ended "
            "at the disconnect: an MQTT 5 session with no Session Expiry Interval (0, the "
            "default) does not outlive its connection. Send SessionExpiryInterval > 0 in the "
            "CONNECT properties (for instance 3600)."
        )
    return keep


def command_names(messages: list[ReceivedMessage]) -> list[str]:
    """The ``command`` of each message (each checked against the command schema)."""
    return [validate("command", m.payload)["command"] for m in messages]


# -- Runs that wait on the broker's clock (see mqtt_factory_lab.experiment.ahead) -------------


@dataclass
class ExpiredSession:
    """An MQTT 5 client ``client_id`` subscribed to ``topic`` with a session expiry of 1 s and
    left cleanly at ``left_at``; then an alarm was published on ``topic``.

    :ivar watcher: subscribed to ``ended_topic``, where the broker publishes the client's will
        when the session ends (a will delay longer than the session, kept by DISCONNECT 0x04).
    """

    client_id: str
    topic: str
    ended_topic: str
    watcher: RecordingClient
    left_at: float


def leave_with_expiry(stack: contextlib.ExitStack, broker: Broker, expiry: int) -> ExpiredSession:
    """Connect an MQTT 5 controller with clean start off and session expiry ``expiry``, subscribe
    it to a press's alarms at QoS 1, have it leave (DISCONNECT 0x04, keeping its will), and
    publish an alarm it will never get. Clients disconnect when ``stack`` closes.
    """
    root = f"lab/{uuid.uuid4().hex[:8]}/factory"
    clients = stack.enter_context(contextlib.closing(ModuleClients(broker, "lab-expiry")))
    run = ExpiredSession(
        unique("controller"),
        f"{root}/alarms/packer-01/temperature",
        f"{root}/events/session-ended",
        clients(),
        0.0,
    )
    run.watcher.subscribe(run.ended_topic, qos=1)
    # A will whose delay is longer than the session is published when the session ends (MQTT 5
    # §3.1.3.2.2), and DISCONNECT 0x04 keeps the will while leaving cleanly.
    controller = clients(run.client_id, clean_start=False, session_expiry=expiry, connect=False)
    properties = Properties(PacketTypes.WILLMESSAGE)
    properties.WillDelayInterval = 3600
    controller.paho.will_set(run.ended_topic, b"session ended", qos=1, properties=properties)
    controller.connect()
    controller.subscribe(run.topic, qos=1)
    controller.paho.disconnect(
        reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
    )
    run.left_at = time.monotonic()
    wait_until(lambda: not controller.connected, timeout=PROMPT)
    clients().publish(run.topic, alarm("raised", 231.0, "packer-01"), qos=1)
    return run


@dataclass
class DroppedDevice:
    """A solution's press that obeyed a ``set`` command, then lost its connection and its
    session at ``dropped_at``: a client with its id and clean start took the connection over
    and left, as when a broker restarts without persistence.

    :ivar watcher: subscribed to the press's state, where it shows the setpoints it obeys.
    :ivar dashboard: a client of the press's MQTT version that sends it commands.
    :ivar mark: the broker's log position just before the takeover.
    :ivar reconnected_mark: the log position just after the press's own reconnection.
    """

    press: DeviceHandle
    broker: Broker
    watcher: RecordingClient
    dashboard: RecordingClient
    commands: str
    state: str
    mark: int
    dropped_at: float
    reconnected_mark: int = 0

    def set_temperature(self, value: float, reason: str) -> None:
        """Send the press a ``set`` of its temperature setpoint (QoS 1)."""
        command = {"command": "set", "setpoint": "temperature", "value": value, "reason": reason}
        self.dashboard.publish(self.commands, validate("command", command), qos=1)

    def obeyed(self, value: float, timeout: float = 5, *, since: int | None = None) -> bool:
        """Whether the press published a state with its temperature setpoint at ``value``.

        :param since: a log position before the ``set`` was sent, when the press has sent no
            SUBSCRIBE on its current session: the wait also ends, with False, as soon as the
            broker's log shows it acknowledged the command without sending it to the press
            (no subscription of the press matched it: no state can follow).
        """

        def answered() -> bool:
            return any(
                m.json().get("setpoints", {}).get("temperature") == value
                for m in self.watcher.received(self.state)
            )

        def dropped_by_the_broker() -> bool:
            if since is None:
                return False
            lines = self.broker.log_lines()[since:]
            sent = routed_to(lines, self.dashboard.client_id, self.commands)
            return sent is not None and self.press.client_id not in sent

        with contextlib.suppress(ProcessTimeout):
            wait_until(lambda: answered() or dropped_by_the_broker(), timeout, interval=0.05)
        return answered()

    def reconnected(self) -> int | None:
        """The log position just after the press's own reconnection (the takeover is the first
        connection with its id after :attr:`mark`), or None while there is none."""
        lines = self.broker.log_lines()
        seen = 0
        for position, line in enumerate(lines[self.mark :], start=self.mark):
            if any(c.client_id == self.press.client_id for c in connections([line])):
                seen += 1
                if seen == 2:
                    return position + 1
        return None

    def wait_reconnected(self, timeout: float) -> int:
        """:meth:`reconnected`, waiting up to ``timeout`` seconds.

        :raises pytest.fail.Exception: the press never reconnected (with its output).
        """
        __tracebackhide__ = True
        try:
            return wait_until(self.reconnected, timeout=timeout)
        except ProcessTimeout:
            pytest.fail(
                self.press.process.describe_failure(
                    "never reconnected within 15 s after the broker dropped its connection",
                    "keep paho's network loop running (loop_start/loop_forever): it reconnects",
                ),
                pytrace=False,
            )

    def no_subscribe_evidence(self, position: int, protocol: str) -> str:
        """What the broker's log shows of a reconnection with no SUBSCRIBE after it ('' when it
        shows something else)."""
        logged = self.logged_connections()
        if not logged or self.subscribed_since(position):
            return ""
        flag = "clean session" if protocol == "3.1.1" else "clean start"
        return (
            f"The broker logged its reconnection ({flag} = {int(logged[-1].clean)}) and no "
            f"SUBSCRIBE from it afterwards."
        )

    def subscribed_since(self, position: int) -> bool:
        """Whether the broker logged a SUBSCRIBE from the press after log ``position``."""
        return bool(subscriptions(self.broker.log_lines()[position:], self.press.client_id))

    def logged_connections(self) -> list[Connection]:
        """The press's connections the broker logged since :attr:`mark`."""
        logged = connections(self.broker.log_lines()[self.mark :])
        return [c for c in logged if c.client_id == self.press.client_id]


def drop_session(
    stack: contextlib.ExitStack, launcher: FactoryLauncher, protocol: str
) -> DroppedDevice:
    """Start ``launcher``'s press-01, make sure it obeys a command, then take its connection
    over with a clean session and wait for the press to reconnect (and, up to
    :data:`PROMPT` seconds, to subscribe again). The launcher and clients close with ``stack``.

    :raises pytest.fail.Exception: the press never obeyed, even before the drop, or never
        reconnected.
    """
    stack.enter_context(launcher)
    broker, root = launcher.broker, launcher.topic_root
    clients = stack.enter_context(contextlib.closing(ModuleClients(broker, "lab-dropped")))
    press = launcher.start_device("press", "press-01")
    run = DroppedDevice(
        press,
        broker,
        clients(),
        clients(protocol=protocol),
        f"{root}/commands/dashboard/press-01",
        f"{root}/state/press-01",
        0,
        0.0,
    )
    run.watcher.subscribe(run.state, qos=1)
    # First, the press is at work: it obeys a command (so its start-up is over). Sent again
    # until it does: a device may say online a moment before its subscription is in place.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        run.set_temperature(71.0, "lesson 05: before the drop")
        if run.obeyed(71.0, timeout=0.5):
            break
    else:
        pytest.fail(
            "press-01 never obeyed a 'set' on {root}/commands/dashboard/press-01 (no state with "
            "the new setpoint within 5 s), even before its connection dropped: a device "
            "subscribes to <root>/commands/+/<device_id> and obeys (lesson 01).",
            pytrace=False,
        )
    run.mark = broker.log_mark()
    clients(press.client_id, protocol=protocol, clean_start=True).disconnect()
    run.dropped_at = time.monotonic()
    # the press's own reconnect delay and its SUBSCRIBE (if any) pass here, ahead
    run.reconnected_mark = run.wait_reconnected(seconds_left(run.dropped_at, 15))
    with contextlib.suppress(ProcessTimeout):  # a session it kept would need no SUBSCRIBE
        wait_until(lambda: run.subscribed_since(run.reconnected_mark), timeout=PROMPT)
    return run

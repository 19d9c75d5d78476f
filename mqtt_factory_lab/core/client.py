"""A paho-mqtt client that records what it receives and waits for it without guessing.

:class:`RecordingClient` wraps a paho-mqtt 2.x client (callback API version 2).
It keeps every message it receives, with the details a lesson asserts on
(QoS, retain flag, dup flag, MQTT 5 properties), and offers waits with a
deadline instead of sleeps::

    client = RecordingClient(host, port, client_id="retain-check")
    client.connect()
    client.subscribe("factory/state/#", qos=1)
    msg = client.wait_for_message("factory/state/press")
    assert msg.retain

To prove that a message did *not* arrive, :meth:`RecordingClient.sync` makes a
round trip through the broker: the broker handles one client's packets in
order, so once our own marker message comes back, everything it had queued
for us before it has arrived too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from mqtt_factory_lab.core.connection import PROTOCOLS, ConnectionSettings, code_as_sent, no_delay

SYNC_PREFIX = "lab/sync"
#: how long a wait for queued messages goes on after the round trip that should follow them
QUEUED_GRACE = 0.5
#: the broker's answer to the latest QoS 1/2 publish on each topic by any client of this
#: process (None: accepted): a wait for a topic whose every publish was refused ends at once.
#: Clients publish from several threads at once (lessons start runs ahead in threads), so the
#: table is written and read under its lock only (a wait that iterated it while another thread
#: added a topic failed with "dictionary changed size during iteration").
_LAST_PUBLISH: dict[str, ReasonCode | None] = {}
#: the refused entries of ``_LAST_PUBLISH`` alone: a session publishes to thousands of topics
#: and refusals are rare, so a wait looks here first and reads the whole table only on a match
_REFUSED_PUBLISH: dict[str, ReasonCode] = {}
_LAST_PUBLISH_LOCK = threading.Lock()

Matcher = str | Callable[["ReceivedMessage"], bool] | None


@dataclass(frozen=True)
class ReceivedMessage:
    """One PUBLISH as the client received it."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    properties: dict[str, Any] = field(default_factory=dict)
    received_at: float = 0.0
    #: the packet id (QoS 1/2), for a client with manual acknowledgement (``paho.ack``)
    mid: int = 0

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The payload parsed as JSON (raises ``ValueError`` with the payload when it is not)."""
        try:
            return json.loads(self.payload)
        except ValueError as error:
            raise ValueError(
                f"payload on {self.topic} is not JSON: {self.payload[:200]!r}"
            ) from error

    def describe(self) -> str:
        flags = f"q{self.qos}{' retained' if self.retain else ''}{' dup' if self.dup else ''}"
        body = self.text if len(self.payload) <= 80 else self.text[:77] + "..."
        return f"{self.topic} [{flags}] {body}"


class MQTTTimeout(AssertionError):
    """An awaited MQTT event did not happen before the deadline."""


def _matcher(what: Matcher) -> Callable[[ReceivedMessage], bool]:
    if what is None:
        return lambda m: True
    if isinstance(what, str):
        return lambda m: mqtt.topic_matches_sub(what, m.topic)
    return what


def _describe_matcher(what: Matcher) -> str:
    if what is None:
        return "any message"
    if isinstance(what, str):
        return f"a message matching {what!r}"
    # A predicate's name is the harness's, not the student's: say what it stands for.
    doc = (getattr(what, "__doc__", None) or "").strip()
    name = getattr(what, "__name__", "<lambda>")
    if doc and not isinstance(what, type):
        return f"a message ({doc.splitlines()[0].rstrip('.')})"
    if name.isidentifier() and name != "<lambda>":
        return f"a message ({name.replace('_', ' ')})"
    return "the message this experiment waits for"


class RecordingClient:
    """A connected MQTT client for experiments.

    :param host: broker address.
    :param port: broker port.
    :param client_id: client identifier; unique per test on a shared broker.
    :param protocol: ``"5"`` or ``"3.1.1"``.
    :param clean_start: MQTT 5 clean start / MQTT 3.1.1 clean session.
    :param session_expiry: MQTT 5 session expiry interval (seconds).
    :param will: Last Will as ``(topic, payload, qos, retain)``.
    :param describe_broker: returns a line about the broker's health, added to
        timeout messages (so a killed broker reads as such, not as a lost message).
    :param connection: transport, TLS and credentials (default: plain TCP, anonymous);
        ``username``/``password`` given here win over its login.
    :param connect_properties: more MQTT 5 CONNECT properties by paho name, such as
        ``{"ReceiveMaximum": 1, "MaximumPacketSize": 256}`` (lesson 09).
    """

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str | None = None,
        *,
        protocol: str = "5",
        clean_start: bool = True,
        session_expiry: int | None = None,
        will: tuple[str, bytes | str, int, bool] | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive: int = 30,
        describe_broker: Callable[[], str] | None = None,
        connection: ConnectionSettings | None = None,
        connect_properties: dict[str, Any] | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        self.host, self.port = host, port
        self.client_id = client_id or f"lab-{uuid.uuid4().hex[:10]}"
        self.protocol = protocol
        self.clean_start = clean_start
        self.session_expiry = session_expiry
        self.connect_properties = dict(connect_properties or {})
        self.keepalive = keepalive
        self._describe_broker = describe_broker
        kwargs: dict[str, Any] = {}
        if protocol == "3.1.1":
            kwargs["clean_session"] = clean_start
        self.connection = connection or ConnectionSettings(host, port)
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=PROTOCOLS[protocol],
            transport=self.connection.transport,
            # A lost connection is an event an experiment observes, never one to hide by
            # reconnecting in the background (and a dropped client's loop then ends at once).
            reconnect_on_failure=False,
            **kwargs,
        )
        self.connection.configure(self.paho)
        if username:
            self.paho.username_pw_set(username, password)
        if will:
            topic, payload, qos, retain = will
            self.paho.will_set(topic, _encode(payload), qos=qos, retain=retain)
        self.messages: list[ReceivedMessage] = []
        self.connack: dict[str, Any] = {}
        self.disconnects: list[ReasonCode | int] = []
        #: reason codes of the DISCONNECT packets the broker sent (MQTT 5), not of lost sockets
        self.server_disconnects: list[ReasonCode] = []
        self._cond = threading.Condition()
        self._connected = False
        self._suback: dict[int, list[ReasonCode]] = {}
        #: reason code of the broker's acknowledgement of each QoS 1/2 publish, by message id
        self.pubacks: dict[int, ReasonCode] = {}
        #: the QoS the broker granted for each topic filter (SUBACK), and the refused filters
        self.granted: dict[str, int] = {}
        self.refused: dict[str, ReasonCode] = {}
        self._sync_count = 0
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_unsubscribe = self._on_subscribe
        self.paho.on_publish = self._on_publish

    # -- paho callbacks (network thread) ----------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self.connack = {
                "reason_code": reason_code,
                "session_present": bool(flags.session_present),
                "properties": _properties(properties),
            }
            self._connected = not reason_code.is_failure
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._connected = False
            self.disconnects.append(reason_code)
            if getattr(flags, "is_disconnect_packet_from_server", False):
                self.server_disconnects.append(reason_code)
            self._cond.notify_all()

    def _on_message(self, client, userdata, msg: mqtt.MQTTMessage) -> None:
        record = ReceivedMessage(
            topic=msg.topic,
            payload=bytes(msg.payload),
            qos=msg.qos,
            retain=bool(msg.retain),
            dup=bool(msg.dup),
            properties=_properties(getattr(msg, "properties", None)),
            received_at=time.monotonic(),
            mid=msg.mid,
        )
        with self._cond:
            self.messages.append(record)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self._suback[mid] = list(reason_codes)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:  # wakes publish() waits; paho marks the message published itself
            self.pubacks[mid] = reason_code
            self._cond.notify_all()

    def puback_reason(self, info: mqtt.MQTTMessageInfo) -> ReasonCode | None:
        """The broker's answer to a QoS 1/2 publish (PUBACK or PUBREC reason code), if any.

        MQTT 3.1.1 acknowledgements carry no code: paho reports success for them. An MQTT 5
        broker may answer 0x87 "Not authorized" to a publish its ACL denies.
        """
        with self._cond:
            return self.pubacks.get(info.mid)

    # -- connection ---------------------------------------------------------
    def connect(self, timeout: float = 5.0) -> dict[str, Any]:
        """Connect, start the network loop, and wait for the CONNACK.

        :returns: ``{"reason_code", "session_present", "properties"}``.
        :raises ConnectionError: when refused or unreachable, saying why.
        """
        __tracebackhide__ = True
        kwargs: dict[str, Any] = {}
        if self.protocol == "5":
            kwargs["clean_start"] = self.clean_start
            if self.session_expiry is not None or self.connect_properties:
                props = Properties(PacketTypes.CONNECT)
                if self.session_expiry is not None:
                    props.SessionExpiryInterval = self.session_expiry
                for name, value in self.connect_properties.items():
                    setattr(props, name, value)
                kwargs["properties"] = props
        with self._cond:
            self.connack = {}
            before = len(self.disconnects)
        try:
            self.paho.connect(self.host, self.port, keepalive=self.keepalive, **kwargs)
        except OSError as error:
            raise ConnectionError(
                f"{self.client_id} cannot reach the broker at {self.host}:{self.port}: {error}. "
                f"{self._broker_note()}"
            ) from error
        no_delay(self.paho)
        self.paho.loop_start()
        with self._cond:
            answered = self._cond.wait_for(
                lambda: bool(self.connack) or len(self.disconnects) > before, timeout
            )
            connack = dict(self.connack)
            closed = self.disconnects[before:]
        if connack and not connack["reason_code"].is_failure:
            return connack
        # A refused client must not go on reconnecting in the background.
        self.disconnect()
        if connack:
            code = connack["reason_code"]
            what = "return code" if self.protocol == "3.1.1" else "reason code"
            raise ConnectionError(
                f"the broker refused {self.client_id} (MQTT {self.protocol}): CONNACK "
                f"{code} ({what} 0x{code_as_sent(code, self.protocol):02X})"
            )
        if answered:
            raise ConnectionError(
                f"the broker closed {self.client_id}'s connection (MQTT {self.protocol}) before "
                f"any CONNACK ({closed[0]}). {self._broker_note()}"
            )
        raise ConnectionError(
            f"{self.client_id} got no CONNACK from {self.host}:{self.port} within {timeout}s. "
            f"{self._broker_note()}"
        )

    @property
    def connected(self) -> bool:
        return self._connected

    def disconnect(self) -> None:
        """Send DISCONNECT (the Last Will is discarded) and stop the network loop."""
        try:
            if self._connected:
                self.paho.disconnect()
                with self._cond:
                    self._cond.wait_for(lambda: not self._connected, 2.0)
        finally:
            self.paho.loop_stop()

    def drop(self) -> None:
        """Close the socket without DISCONNECT, as a crash would: the broker sends our Last Will.

        The TCP socket is shut down first: that wakes paho's network loop at once (it would
        otherwise finish its wait of up to a second), and nothing more — not even a
        DISCONNECT or a WebSocket close frame — can reach the broker through it. Over
        WebSockets paho's socket is a wrapper without ``shutdown()``: the TCP (or TLS)
        socket beneath it is the one shut down, as a crash would.
        """
        sock = self.paho.socket()
        raw = getattr(sock, "_socket", sock)  # paho's _WebsocketWrapper keeps it as _socket
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_RDWR)
        self.paho.loop_stop()
        if raw is not None:
            with contextlib.suppress(OSError):
                raw.close()
        self._connected = False

    # -- talking --------------------------------------------------------------
    def subscribe(
        self,
        topic: str,
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        subscription_id: int | None = None,
        timeout: float = 5.0,
    ) -> list[ReasonCode]:
        """Subscribe and wait for the SUBACK; return its reason codes (granted QoS or failure).

        ``subscription_id`` (MQTT 5): the broker sends it back with every message this
        subscription delivers.
        """
        __tracebackhide__ = True
        if self.protocol == "5":
            options = SubscribeOptions(
                qos=qos,
                noLocal=no_local,
                retainAsPublished=retain_as_published,
                retainHandling=retain_handling,
            )
            properties = None
            if subscription_id is not None:
                properties = Properties(PacketTypes.SUBSCRIBE)
                properties.SubscriptionIdentifier = subscription_id
            result, mid = self.paho.subscribe(topic, options=options, properties=properties)
        else:
            result, mid = self.paho.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"{self.client_id} could not send SUBSCRIBE {topic!r}: {result}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._suback or not self._connected, timeout):
                raise MQTTTimeout(
                    f"{self.client_id} subscribed to {topic!r} but got no SUBACK within {timeout}s. "
                    f"{self._broker_note()}"
                )
            if mid not in self._suback:
                raise ConnectionError(
                    f"{self.client_id} subscribed to {topic!r} and the broker closed the "
                    f"connection instead of answering: {self._lost()}"
                )
            codes = self._suback.pop(mid)
        if codes and codes[0].is_failure:
            self.refused[topic] = codes[0]
            self.granted.pop(topic, None)
        elif codes:
            self.granted[topic] = codes[0].value
            self.refused.pop(topic, None)
        return codes

    def subscribe_all(
        self, filters: list[tuple[str, int]], timeout: float = 5.0
    ) -> list[ReasonCode]:
        """One SUBSCRIBE packet with several ``(filter, qos)`` pairs; the SUBACK's reason codes,
        as the broker sent them (one per filter, in order, when it follows the rules)."""
        __tracebackhide__ = True
        if self.protocol == "5":
            pairs: list[Any] = [(topic, SubscribeOptions(qos=qos)) for topic, qos in filters]
        else:
            pairs = list(filters)
        result, mid = self.paho.subscribe(pairs)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"{self.client_id} could not send SUBSCRIBE {filters}: {result}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._suback or not self._connected, timeout):
                raise MQTTTimeout(
                    f"{self.client_id} subscribed to {filters} but got no SUBACK within "
                    f"{timeout}s. {self._broker_note()}"
                )
            if mid not in self._suback:
                raise ConnectionError(
                    f"{self.client_id} subscribed to {filters} and the broker closed the "
                    f"connection instead of answering: {self._lost()}"
                )
            return self._suback.pop(mid)

    def granted_qos(self, topic: str) -> int:
        """The QoS the broker granted in its SUBACK for the filter ``topic`` (it may grant less
        than asked: MQTT 3.1.1 §3.9.3, MQTT 5 §3.9.3).

        :raises AssertionError: when the broker refused the subscription, naming its reason.
        """
        __tracebackhide__ = True
        if topic in self.refused:
            code = self.refused[topic]
            raise AssertionError(
                f"the broker refused {self.client_id}'s subscription to {topic!r}: SUBACK "
                f"{code} (reason code 0x{code.value:02X})"
            )
        return self.granted[topic]

    def unsubscribe(self, topic: str, timeout: float = 5.0) -> None:
        _result, mid = self.paho.unsubscribe(topic)
        with self._cond:
            self._cond.wait_for(lambda: mid in self._suback or not self._connected, timeout)
            if mid not in self._suback:
                if not self._connected:
                    raise ConnectionError(
                        f"{self.client_id} unsubscribed from {topic!r} and the broker closed the "
                        f"connection instead of answering: {self._lost()}"
                    )
                raise MQTTTimeout(
                    f"{self.client_id} got no UNSUBACK for {topic!r} within {timeout}s"
                )
            self._suback.pop(mid)

    def publish(
        self,
        topic: str,
        payload: bytes | str | dict | list | None = b"",
        qos: int = 0,
        retain: bool = False,
        *,
        properties: Properties | None = None,
        timeout: float = 5.0,
    ) -> mqtt.MQTTMessageInfo:
        """Publish and wait until paho has sent it (QoS 0) or the broker acknowledged it (QoS 1/2).

        A ``dict`` or ``list`` payload is sent as JSON.
        """
        __tracebackhide__ = True
        was_connected = self._connected
        info = self.paho.publish(
            topic, _encode(payload), qos=qos, retain=retain, properties=properties
        )
        step = "PUBACK" if qos == 1 else "PUBREC/PUBCOMP"
        if info.rc != mqtt.MQTT_ERR_SUCCESS and qos and was_connected and not self._connected:
            # paho wrote the PUBLISH and the broker's answer (a DISCONNECT) was read before
            # publish() returned: the same refusal as below, seen a moment earlier
            raise ConnectionError(
                f"{self.client_id} published to {topic!r} at QoS {qos} and the broker closed "
                f"the connection before the {step}: {self._lost()}"
            )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(
                f"{self.client_id} could not publish to {topic!r}: {mqtt.error_string(info.rc)}. "
                f"{self._broker_note()}"
            )
        if qos == 0:
            try:
                info.wait_for_publish(timeout)
            except RuntimeError as error:
                raise ConnectionError(
                    f"{self.client_id} lost its connection publishing to {topic!r}: {self._lost()}"
                ) from error
        else:
            with self._cond:
                self._cond.wait_for(lambda: info.is_published() or not self._connected, timeout)
            if not info.is_published() and not self._connected:
                raise ConnectionError(
                    f"{self.client_id} published to {topic!r} at QoS {qos} and the broker closed "
                    f"the connection before the {step}: {self._lost()}"
                )
        if info.is_published():  # QoS 0 counts as accepted: nothing says otherwise
            answer = self.puback_reason(info) if qos else None
            refused = answer if answer is not None and answer.is_failure else None
            with _LAST_PUBLISH_LOCK:
                _LAST_PUBLISH[topic] = refused
                if refused is None:
                    _REFUSED_PUBLISH.pop(topic, None)
                else:
                    _REFUSED_PUBLISH[topic] = refused
        if not info.is_published():
            raise MQTTTimeout(
                f"{self.client_id} published to {topic!r} at QoS {qos} but it was not "
                f"{'acknowledged' if qos else 'sent'} within {timeout}s. {self._broker_note()}"
            )
        return info

    # -- what arrived --------------------------------------------------------
    def received(self, what: Matcher = None) -> list[ReceivedMessage]:
        """Messages received so far that match a topic filter or predicate (no waiting)."""
        match = _matcher(what)
        with self._cond:
            return [m for m in self.messages if match(m) and not _is_sync(m)]

    def clear(self) -> None:
        """Forget the messages received so far."""
        with self._cond:
            self.messages.clear()

    def wait_for_messages(
        self,
        count: int,
        what: Matcher = None,
        timeout: float = 5.0,
        why: str = "",
        *,
        queued: bool = False,
    ) -> list[ReceivedMessage]:
        """Wait until ``count`` matching messages have arrived (counting earlier ones); return them.

        :param why: the MQTT rule that promised these messages; it leads the
            failure message, so a student reads the concept before the details.
        :param queued: the messages were queued for this client before it connected (a
            resumed session): after a :meth:`sync` round trip they have arrived or never
            will, so the wait ends there (plus a short grace) instead of at ``timeout``.
        """
        __tracebackhide__ = True
        match = _matcher(what)
        if queued:
            self.sync(timeout)
            timeout = min(timeout, QUEUED_GRACE)

        def found() -> list[ReceivedMessage]:
            return [m for m in self.messages if not _is_sync(m) and match(m)]

        def refused_publishes() -> list[str]:
            if not isinstance(what, str):
                return []
            with _LAST_PUBLISH_LOCK:
                refused = [
                    (t, a) for t, a in _REFUSED_PUBLISH.items() if mqtt.topic_matches_sub(what, t)
                ]
                if not refused or any(
                    a is None and mqtt.topic_matches_sub(what, t) for t, a in _LAST_PUBLISH.items()
                ):
                    return []
            return [f"PUBACK {a} (0x{a.value:02X}) to the publish on {t!r}" for t, a in refused]

        def hopeless() -> bool:
            # Evidence that nothing more will come: the connection is gone, the broker
            # refused the very subscription the wait is for, or every publish it waits for.
            return (
                (not self._connected and bool(self.disconnects))
                or (isinstance(what, str) and what in self.refused)
                or bool(refused_publishes())
            )

        started = time.monotonic()
        with self._cond:
            self._cond.wait_for(lambda: len(found()) >= count or hopeless(), timeout)
            if len(found()) >= count:
                return found()[:count]
            got = found()
        waited = time.monotonic() - started
        cut = f" (stopped after {waited:.1f}s: nothing more can come)" if waited < timeout else ""
        if refused_publishes():
            cut += f"; the broker refused it: {'; '.join(refused_publishes()[:3])}"
        raise MQTTTimeout(
            (f"{why}\n" if why else "")
            + f"{self.client_id} waited {timeout}s for {count} × {_describe_matcher(what)} "
            f"but received {len(got)}{cut}.\n{self._near_misses()}{self._broker_note()}"
        )

    def wait_for_message(
        self, what: Matcher = None, timeout: float = 5.0, why: str = "", *, queued: bool = False
    ) -> ReceivedMessage:
        """Wait for the first message matching a topic filter or predicate (earlier ones count).

        :param why: the MQTT rule that promised it (see :meth:`wait_for_messages`).
        :param queued: it was queued before this client connected (see :meth:`wait_for_messages`).
        """
        __tracebackhide__ = True
        return self.wait_for_messages(1, what, timeout, why, queued=queued)[0]

    def sync(self, timeout: float = 5.0) -> None:
        """Round trip through the broker: afterwards, every message it queued for us earlier has arrived.

        Subscribes (once) to ``lab/sync/<client id>/#``, publishes a marker
        there and waits for it to come back.
        """
        __tracebackhide__ = True
        base = f"{SYNC_PREFIX}/{self.client_id}"
        if self._sync_count == 0:
            codes = self.subscribe(f"{base}/#", qos=1, timeout=timeout)
            if codes and codes[0].is_failure:
                raise ConnectionError(f"{self.client_id} may not subscribe to {base}/#: {codes[0]}")
        self._sync_count += 1
        marker = f"{base}/{self._sync_count}"
        self.publish(marker, b"sync", qos=1, timeout=timeout)
        with self._cond:
            if not self._cond.wait_for(
                lambda: any(m.topic == marker for m in self.messages), timeout
            ):
                raise MQTTTimeout(
                    f"{self.client_id}'s round trip through the broker did not come back within "
                    f"{timeout}s. {self._broker_note()}"
                )

    def assert_nothing_received(
        self, what: Matcher = None, timeout: float = 5.0, why: str = ""
    ) -> None:
        """After a :meth:`sync` round trip, assert that no matching message has arrived."""
        __tracebackhide__ = True
        self.sync(timeout)
        got = self.received(what)
        assert not got, (
            (f"{why}\n" if why else "")
            + f"{self.client_id} expected no {_describe_matcher(what).removeprefix('a ')} "
            f"but received {len(got)}:\n" + "\n".join("    " + m.describe() for m in got[:5])
        )

    # -- helpers -------------------------------------------------------------
    def _near_misses(self) -> str:
        others = [m for m in self.messages if not _is_sync(m)]
        if not others:
            return "  It received nothing at all.\n"
        lines = "\n".join("    " + m.describe() for m in others[-8:])
        return f"  It received instead ({len(others)} in all, last shown):\n{lines}\n"

    def _broker_note(self) -> str:
        notes = [
            f"the broker refused the subscription to {t!r}: {c}" for t, c in self.refused.items()
        ]
        if self.disconnects and not self._connected:
            notes.append(f"the connection was closed: {self._lost()}")
        if self._describe_broker:
            notes.append(self._describe_broker())
        return f"({'; '.join(notes)})" if notes else ""

    def _lost(self) -> str:
        """How the connection ended, as the broker or the network put it."""
        if not self.disconnects:
            return "no reason given"
        code = self.disconnects[-1]
        value = getattr(code, "value", code)
        return f"{code} (reason code 0x{value:02X})" if isinstance(value, int) else str(code)

    def __repr__(self) -> str:
        return f"<RecordingClient {self.client_id} MQTT {self.protocol} {self.host}:{self.port}>"


def _is_sync(message: ReceivedMessage) -> bool:
    return message.topic.startswith(SYNC_PREFIX + "/")


def _encode(payload: bytes | str | dict | list | None) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, str):
        return payload.encode()
    return json.dumps(payload, separators=(",", ":")).encode()


def _properties(properties: Properties | None) -> dict[str, Any]:
    if properties is None:
        return {}
    try:
        return {k: v for k, v in properties.json().items() if v not in (None, [], "")}
    except (AttributeError, TypeError):
        return {}

"""Hand-made MQTT packets: what a correct client library refuses to send, sent anyway.

Lesson 01 proves that a broker refuses a malformed topic filter (``factory/#/x``) and a
PUBLISH to a topic name with a wildcard. paho checks both before sending, so they can only
reach the broker as bytes built by hand. :class:`RawConnection` builds the few packets
needed — CONNECT, SUBSCRIBE, PUBLISH (MQTT 3.1.1 §3.1/§3.3/§3.8; MQTT 5 the same sections
plus an empty property block) — over the stream of :mod:`mqtt_factory_lab.core.wire` (TCP,
TLS or a WebSocket, logged in as the lab's other clients are), and reads the broker's
answer. :func:`refused` and :func:`describe_answer` judge and name that answer the way each
protocol version allows a refusal.
"""

from __future__ import annotations

import socket
import struct

from mqtt_factory_lab.brokers.base import Broker
from mqtt_factory_lab.core.wire import WebSocketStream, open_stream

#: MQTT control packet types (the high nibble of a packet's first byte)
CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, DISCONNECT = 1, 2, 3, 4, 8, 9, 14
PACKET_NAMES = {CONNACK: "CONNACK", PUBACK: "PUBACK", SUBACK: "SUBACK", DISCONNECT: "DISCONNECT"}

#: a packet as read: ``(type, body)``, the body being everything after the fixed header
Packet = tuple[int, bytes]


def varint(n: int) -> bytes:
    """``n`` as MQTT's Variable Byte Integer (the remaining length: 7 bits a byte, high bit = more)."""
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(text: str) -> bytes:
    """``text`` as an MQTT UTF-8 string: a two-byte big-endian length, then the bytes."""
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def packet(first_byte: int, body: bytes) -> bytes:
    """A whole packet: the first byte (type and flags), the remaining length, the body."""
    return bytes([first_byte]) + varint(len(body)) + body


class RawConnection:
    """A connection speaking MQTT byte by byte, to send what a correct library refuses to.

    It connects (clean session, keepalive 30 s) as ``client_id`` with the broker's login, TLS
    or WebSocket settings for ``protocol`` (``"3.1.1"`` or ``"5"``), as the lab's other
    clients do (``--broker-url``). ``with RawConnection(...) as raw:`` closes it at the end.

    :raises AssertionError: when the broker does not answer the CONNECT with a CONNACK.
    """

    def __init__(self, broker: Broker, client_id: str, protocol: str) -> None:
        settings = broker.connection.for_protocol(protocol)
        self.v5 = protocol == "5"
        self.sock: socket.socket | WebSocketStream = open_stream(settings, timeout=3)
        props = b"\x00" if self.v5 else b""
        flags = 0x02 | (0x80 if settings.username else 0) | (0x40 if settings.password else 0)
        header = string("MQTT") + bytes([5 if self.v5 else 4, flags]) + struct.pack("!H", 30)
        login = b"".join(string(v) for v in (settings.username, settings.password) if v)
        self.send(CONNECT << 4, header + props + string(client_id) + login)
        answer = self.read()
        assert answer is not None and answer[0] == CONNACK, f"no CONNACK but {answer}"

    def send(self, first_byte: int, body: bytes) -> None:
        self.sock.sendall(packet(first_byte, body))

    def read(self) -> Packet | None:
        """The next packet as ``(type, body)``, or None once the broker closed the connection."""
        try:
            first = self.sock.recv(1)
            if not first:
                return None
            length, shift = 0, 0
            while True:
                byte = self.sock.recv(1)[0]
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            body = b""
            while len(body) < length:
                chunk = self.sock.recv(length - len(body))
                if not chunk:
                    return None
                body += chunk
            return first[0] >> 4, body
        except (ConnectionResetError, TimeoutError):
            return None

    def answer(self) -> Packet | None:
        """The broker's answer to what we sent: the next packet that is not a PUBLISH (a broker
        may send messages, such as retained ones, at any time), or None once it closed."""
        while True:
            received = self.read()
            if received is None or received[0] != PUBLISH:
                return received

    def subscribe(self, topic_filter: str, qos: int = 1) -> Packet | None:
        """SUBSCRIBE (packet id 1) to ``topic_filter`` as sent, unchecked; the broker's answer."""
        props = b"\x00" if self.v5 else b""
        self.send(
            SUBSCRIBE << 4 | 0x02,
            struct.pack("!H", 1) + props + string(topic_filter) + bytes([qos]),
        )
        return self.answer()

    def publish(self, topic: str, payload: bytes) -> Packet | None:
        """PUBLISH at QoS 1 (packet id 2) to ``topic`` as sent, unchecked; the broker's answer."""
        props = b"\x00" if self.v5 else b""
        self.send(PUBLISH << 4 | 0x02, string(topic) + struct.pack("!H", 2) + props + payload)
        return self.answer()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe_answer(answer: Packet | None, v5: bool) -> str:
    """The broker's answer in a few words: ``it sent SUBACK with code 0x80``."""
    if answer is None:
        return "it closed the connection"
    kind, body = answer
    name = PACKET_NAMES.get(kind, f"packet type {kind}")
    if kind == DISCONNECT and body:
        return f"it sent DISCONNECT with reason code 0x{body[0]:02X}"
    if kind == SUBACK:
        return f"it sent SUBACK with code 0x{body[-1]:02X}"
    if kind == PUBACK and v5 and len(body) > 2:
        return f"it sent PUBACK with reason code 0x{body[2]:02X}"
    return f"it sent {name}"


def refused(answer: Packet | None, expected_ack: int, v5: bool) -> bool:
    """A refusal as the protocol version allows it.

    MQTT 3.1.1 has no server DISCONNECT: the broker closes the connection (or, for SUBSCRIBE,
    answers the failure code 0x80). MQTT 5 adds a DISCONNECT or an acknowledgement with a
    reason code of 0x80 or more before closing.
    """
    if answer is None:
        return True
    kind, body = answer
    if kind == DISCONNECT:
        return v5 and bool(body) and body[0] >= 0x80
    if kind == SUBACK == expected_ack:
        return body[-1] >= 0x80
    if kind == PUBACK == expected_ack:
        return v5 and len(body) > 2 and body[2] >= 0x80
    return False

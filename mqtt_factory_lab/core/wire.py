"""A byte stream to the broker for hand-made MQTT packets, over every transport the lab speaks.

Lesson 01 sends packets a correct library refuses to (a wildcard in a topic name, a malformed
filter) and reads the broker's answer byte by byte. :func:`open_stream` gives it the same
``sendall`` / ``recv`` / ``close`` whether the broker is reached over TCP, TLS, or a WebSocket
(RFC 6455: an HTTP upgrade with the ``mqtt`` subprotocol, then masked binary frames — MQTT 3.1.1
and MQTT 5 §6), so ``ws://`` is judged by the same experiments as ``mqtt://``.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import struct

from mqtt_factory_lab.core.connection import ConnectionSettings

BINARY, CLOSE, PING, PONG = 0x2, 0x8, 0x9, 0xA


def open_stream(
    settings: ConnectionSettings, timeout: float = 3.0
) -> socket.socket | WebSocketStream:
    """A connected stream to ``settings`` (TLS and the WebSocket upgrade done)."""
    sock: socket.socket = socket.create_connection((settings.host, settings.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if settings.tls:
        context = ssl.create_default_context(cafile=settings.ca)
        if settings.cert:
            context.load_cert_chain(settings.cert, settings.key)
        sock = context.wrap_socket(sock, server_hostname=settings.host)
    if settings.transport == "websockets":
        return WebSocketStream(sock, f"{settings.host}:{settings.port}", settings.path)
    return sock


class WebSocketStream:
    """MQTT bytes in WebSocket binary frames: ``sendall`` frames them, ``recv`` unframes."""

    def __init__(self, sock: socket.socket, host: str, path: str) -> None:
        self.sock = sock
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(
                    f"the broker closed the connection at the WebSocket upgrade of {path}"
                )
            head += chunk
        head, _, rest = head.partition(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(
                f"the WebSocket upgrade of {path} was refused: {status.decode(errors='replace')}"
            )
        self._raw = bytearray(rest)  # frame bytes that came with the upgrade's answer
        self._payload = bytearray()

    def sendall(self, data: bytes) -> None:
        self._send_frame(BINARY, data)

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes of MQTT; ``b""`` once the broker closed the connection."""
        while not self._payload:
            frame = self._frame()
            if frame is None:
                return b""
            opcode, payload = frame
            if opcode == CLOSE:
                return b""
            if opcode == PING:
                self._send_frame(PONG, payload)
            elif opcode in (0x0, BINARY):
                self._payload += payload
        out = bytes(self._payload[:size])
        del self._payload[:size]
        return out

    def close(self) -> None:
        self.sock.close()

    def _send_frame(self, opcode: int, data: bytes) -> None:
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            length = bytes([0x80 | n])
        elif n < 65536:
            length = bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            length = bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(bytes([0x80 | opcode]) + length + mask + masked)

    def _exactly(self, n: int) -> bytes | None:
        while len(self._raw) < n:
            chunk = self.sock.recv(max(4096, n - len(self._raw)))
            if not chunk:
                return None
            self._raw += chunk
        out = bytes(self._raw[:n])
        del self._raw[:n]
        return out

    def _frame(self) -> tuple[int, bytes] | None:
        head = self._exactly(2)
        if head is None:
            return None
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length in (126, 127):
            extra = self._exactly(2 if length == 126 else 8)
            if extra is None:
                return None
            (length,) = struct.unpack("!H" if len(extra) == 2 else "!Q", extra)
        mask = self._exactly(4) if head[1] & 0x80 else None
        payload = self._exactly(length) if length else b""
        if payload is None:
            return None
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return opcode, payload

"""How the lab reaches a broker: one :class:`ConnectionSettings`, and a CONNECT that explains itself.

Every client the lab makes (the readiness and capability probes, ``mqtt_client``'s
:class:`~mqtt_factory_lab.core.client.RecordingClient`) and every program it starts (through
the ``VF_*`` variables of :func:`~mqtt_factory_lab.core.factory.program_env`) connects with
the same settings. For a broker the lab starts they are plain TCP to its port; for a
broker someone else runs they come from the command line, parsed once per run::

    --broker-url mqtts://lab:PASSWORD@broker.example:8883   (or mqtt://, ws://, wss://)
    --broker-url-mqtt5 mqtt://broker.example:1885           MQTT 5 on another listener
    --broker-username lab                                    password: $MQTT_LAB_BROKER_PASSWORD
    --broker-ca ca.pem --broker-cert client.pem --broker-key client.key

The password is never printed: :meth:`ConnectionSettings.display_url` and ``repr`` mask it.

:func:`try_connect` is the one CONNECT the lab uses to ask "is it there, and will it talk
to us?": it waits for the CONNACK on an event (no spinning), and its
:class:`ConnectOutcome` says in one sentence what the broker answered and what to do.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

#: MQTT versions the lab speaks, as paho names them
PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
#: the environment variable that holds the password of ``--broker-username`` (never an option)
ENV_PASSWORD = "MQTT_LAB_BROKER_PASSWORD"
#: URL scheme → (transport, TLS, default port)
SCHEMES = {
    "mqtt": ("tcp", False, 1883),
    "tcp": ("tcp", False, 1883),
    "mqtts": ("tcp", True, 8883),
    "ssl": ("tcp", True, 8883),
    "ws": ("websockets", False, 80),
    "wss": ("websockets", True, 443),
}
MASK = "****"


@dataclass(frozen=True)
class ConnectionSettings:
    """Where a broker is and how to talk to it (immutable; ``replace()`` for variants).

    :param host: broker address.
    :param port: broker port.
    :param transport: ``"tcp"`` or ``"websockets"``.
    :param tls: wrap the connection in TLS (``mqtts://``, ``wss://``).
    :param path: the WebSocket path (``ws://host:port/mqtt``).
    :param username: MQTT user name, if the broker wants one.
    :param password: its password (masked in ``repr`` and in every message).
    :param ca: CA certificate file that signed the broker's certificate (default: the system's).
    :param cert: client certificate for mutual TLS.
    :param key: the client certificate's private key.
    :param mqtt5: settings of another listener for MQTT 5 clients, when the broker serves
        MQTT 5 elsewhere (``--broker-url-mqtt5``).
    """

    host: str = "127.0.0.1"
    port: int = 1883
    transport: str = "tcp"
    tls: bool = False
    path: str = "/mqtt"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    mqtt5: ConnectionSettings | None = None

    # -- reading ------------------------------------------------------------------------
    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> ConnectionSettings:
        """``mqtts://user:pass@host:8883`` → settings; ``overrides`` win over the URL.

        :raises ValueError: for another scheme or a malformed address, naming the accepted form.
        """
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in SCHEMES:
            raise ValueError(
                f"--broker-url must look like mqtt://HOST:PORT (or mqtts://, ws://, wss://), "
                f"not {mask_url(url)!r}"
            )
        transport, tls, default_port = SCHEMES[parts.scheme]
        try:
            port = parts.port or default_port
        except ValueError as error:
            raise ValueError(f"--broker-url {mask_url(url)!r} has an invalid port") from error
        if not parts.hostname:
            raise ValueError(f"--broker-url {mask_url(url)!r} has no host")
        values: dict[str, Any] = {
            "host": parts.hostname,
            "port": port,
            "transport": transport,
            "tls": tls,
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None,
        }
        if transport == "websockets" and parts.path not in ("", "/"):
            values["path"] = parts.path
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_options(
        cls,
        url: str,
        *,
        mqtt5_url: str | None = None,
        username: str | None = None,
        password_env: str = ENV_PASSWORD,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        environ: dict[str, str] | None = None,
    ) -> ConnectionSettings:
        """The settings of a run: ``--broker-url`` and friends, the password from ``password_env``.

        Credentials and certificates apply to both listeners; a password in the URL wins.
        """
        environ = os.environ if environ is None else environ
        common = {
            "username": username,
            "password": environ.get(password_env) or None,
            "ca": ca,
            "cert": cert,
            "key": key,
        }
        for name in ("ca", "cert", "key"):
            path = common[name]
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"--broker-{name} {path}: no such file")
        if (cert is None) != (key is None):
            raise ValueError("--broker-cert and --broker-key go together (mutual TLS needs both)")

        def parse(text: str) -> ConnectionSettings:
            settings = cls.from_url(text)
            return replace(
                settings,
                username=settings.username or common["username"],
                password=settings.password or common["password"],
                ca=common["ca"],
                cert=common["cert"],
                key=common["key"],
                tls=settings.tls or common["ca"] is not None,
            )

        main = parse(url)
        return replace(main, mqtt5=parse(mqtt5_url)) if mqtt5_url else main

    # -- using ---------------------------------------------------------------------------
    def for_protocol(self, protocol: str) -> ConnectionSettings:
        """The settings an MQTT ``protocol`` client uses (the MQTT 5 listener, if there is one)."""
        return self.mqtt5 if protocol == "5" and self.mqtt5 is not None else self

    @property
    def scheme(self) -> str:
        if self.transport == "websockets":
            return "wss" if self.tls else "ws"
        return "mqtts" if self.tls else "mqtt"

    def display_url(self) -> str:
        """The URL with the password masked: safe for headers, logs and messages."""
        user = f"{self.username}{':' + MASK if self.password else ''}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = self.path if self.transport == "websockets" else ""
        return f"{self.scheme}://{user}{host}:{self.port}{path}"

    def describe(self) -> str:
        """The URL plus what else is in use (certificates, the MQTT 5 listener)."""
        extras = [f"{n} {v}" for n, v in (("CA", self.ca), ("client cert", self.cert)) if v]
        if self.mqtt5 is not None:
            extras.append(f"MQTT 5 at {self.mqtt5.display_url()}")
        return self.display_url() + (f" ({', '.join(extras)})" if extras else "")

    def paho_client(self, client_id: str, protocol: str = "5", **kwargs: Any) -> mqtt.Client:
        """A paho client (callback API 2) with these settings' transport, TLS and credentials."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=PROTOCOLS[protocol],
            transport=self.transport,
            **kwargs,
        )
        self.configure(client)
        return client

    def configure(self, client: mqtt.Client) -> None:
        """Apply credentials, TLS and the WebSocket path to a paho client made elsewhere."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set_context(client_tls_context(self.ca, self.cert, self.key))
        if self.transport == "websockets":
            client.ws_set_options(path=self.path)

    def to_env(self) -> dict[str, str]:
        """These settings as the ``VF_*`` variables a factory program reads (``sim/connection.py``).

        Nothing goes on a command line, where ``ps`` would show the password.
        """
        values = {
            "VF_BROKER_HOST": self.host,
            "VF_BROKER_PORT": str(self.port),
            "VF_TRANSPORT": self.transport,
            "VF_WS_PATH": self.path if self.transport == "websockets" else None,
            "VF_TLS": "1" if self.tls else None,
            "VF_USERNAME": self.username,
            "VF_PASSWORD": self.password,
            "VF_TLS_CA": self.ca,
            "VF_TLS_CERT": self.cert,
            "VF_TLS_KEY": self.key,
        }
        return {name: value for name, value in values.items() if value is not None}

    def mask(self, text: str) -> str:
        """``text`` with this (and the MQTT 5 listener's) password replaced by ``****``."""
        for settings in (self, self.mqtt5):
            if settings is not None and settings.password:
                text = text.replace(settings.password, MASK)
        return text


def client_tls_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext:
    """The verifying client context paho's ``tls_set(ca, cert, key)`` would build, made once.

    Loading the system's trust store (no ``ca``) costs about 50 ms, and a lesson makes dozens
    of TLS clients with the same files; one context serves them all (an ``SSLContext`` is
    shared safely between sockets). The files' size and modification time are part of the
    key, so a certificate rewritten in place gets a fresh context.
    """
    return _tls_context(ca, cert, key, tuple(_file_stamp(path) for path in (ca, cert, key)))


def _file_stamp(path: str | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        status = os.stat(path)
    except OSError:
        return None  # let ssl say which file is missing, as paho's tls_set would
    return status.st_mtime_ns, status.st_size


@functools.lru_cache(maxsize=32)
def _tls_context(
    ca: str | None, cert: str | None, key: str | None, _stamps: tuple[object, ...]
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
    if cert:
        context.load_cert_chain(cert, key)
    if ca is not None:
        context.load_verify_locations(ca)
    else:
        context.load_default_certs()
    return context


#: the ``VF_*`` connection variables, so a caller can clear stale ones before setting new ones
VF_CONNECTION_VARIABLES = (
    "VF_BROKER_HOST",
    "VF_BROKER_PORT",
    "VF_TRANSPORT",
    "VF_WS_PATH",
    "VF_TLS",
    "VF_USERNAME",
    "VF_PASSWORD",
    "VF_TLS_CA",
    "VF_TLS_CERT",
    "VF_TLS_KEY",
)


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def mask_url(text: str) -> str:
    """``text`` (a URL, or a command-line argument holding one) with URL passwords masked."""
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", text)


# -- one CONNECT that explains itself ---------------------------------------------------

#: outcome kinds, and what to do about each
ADVICE = {
    "refused": "nothing listens there: start the broker, or correct the host and port",
    "unresolved": "the host name does not resolve: correct the host in the URL",
    "unreachable": "the network cannot reach that address: check the host, VPN or firewall",
    "timeout": "no answer to the TCP connection: a firewall drops the packets or the host is "
    "down; check the host and port",
    "tls": "check --broker-ca (the CA that signed the broker's certificate), that the URL's host "
    "name matches the certificate, and that the listener speaks TLS (else use mqtt:// or ws://)",
    "not_tls": "the broker does not speak TLS here: use mqtt:// (or ws://) for this port, or "
    "give the port of its TLS listener",
    "tls_unknown_ca": "the broker's certificate is not signed by the CA the lab trusts: give the "
    "CA that signed it with --broker-ca (never switch verification off)",
    "tls_expired": "the broker's certificate is outside its validity period: the broker needs a "
    "new certificate (or this machine a correct clock)",
    "tls_hostname": "the broker's certificate is made out to another host name: use a host name "
    "the certificate lists in the URL, or give the broker a certificate for this one",
    "tls_client_cert": "the broker refused the lab's client certificate (mutual TLS): give one "
    "its CA issued, with --broker-cert and --broker-key",
    "tls_cert_required": "the listener may require a client certificate (mutual TLS): give one "
    "with --broker-cert and --broker-key",
    "not_authorized": "give the broker a login it accepts: --broker-username NAME and the password "
    f"in ${ENV_PASSWORD} (or mqtt://NAME:PASSWORD@HOST:PORT)",
    "bad_credentials": "the broker refused this user name and password: check them "
    f"(--broker-username, ${ENV_PASSWORD} or the URL)",
    "unsupported_protocol": "this listener does not speak this MQTT version; if the broker serves "
    "it on another listener, give that one with --broker-url-mqtt5",
    "unavailable": "the broker says it cannot serve clients now (busy, shutting down, or a "
    "required backend is down): check its state and log",
    "identifier_rejected": "the broker refused the client identifier: it may restrict ids "
    "(a prefix, a length); configure it to accept the lab's ids",
    "refused_other": "see the reason code in the broker's documentation",
    "no_connack": "the broker accepted the connection but answered no CONNACK: is this an MQTT "
    "listener (a WebSocket listener needs ws://, a TLS one mqtts://)?",
    "closed": "the broker closed the connection without a CONNACK: it may not speak this MQTT "
    "version, or it dropped the client (see its log)",
    "error": "see the error above",
}

#: outcomes after which another MQTT version on the same address is not worth a try: nothing
#: answered, or what answered does not speak MQTT (a broker refuses a version with a CONNACK)
NOT_MQTT = frozenset(
    {"refused", "unresolved", "unreachable", "timeout", "tls", "not_tls", "no_connack"}
    | {"tls_unknown_ca", "tls_expired", "tls_hostname", "tls_client_cert", "tls_cert_required"}
)

#: MQTT 3.1.1 CONNACK return codes, by the MQTT 5 name paho gives them (paho reports a 3.1.1
#: refusal as an MQTT 5 reason code: 0x05 "Not authorized" arrives as 0x87)
CONNACK_311 = {
    "Unsupported protocol version": 0x01,
    "Client identifier not valid": 0x02,
    "Server unavailable": 0x03,
    "Bad user name or password": 0x04,
    "Not authorized": 0x05,
}


def code_as_sent(reason: Any, protocol: str, packet: str = "CONNACK") -> int:
    """The value the broker put on the wire for paho's ``reason``: MQTT 3.1.1's CONNACK
    return code (0x05, not paho's 0x87), else the reason code's value."""
    value = getattr(reason, "value", reason)
    if protocol == "3.1.1" and packet == "CONNACK":
        return CONNACK_311.get(str(reason), value)
    return int(value)


#: CONNACK reason names (paho spells MQTT 3.1.1 return codes the MQTT 5 way) → outcome kind
_REFUSALS = {
    "Unsupported protocol version": "unsupported_protocol",
    "Not authorized": "not_authorized",
    "Bad user name or password": "bad_credentials",
    "Server unavailable": "unavailable",
    "Server busy": "unavailable",
    "Server shutting down": "unavailable",
    "Client identifier not valid": "identifier_rejected",
    "Banned": "not_authorized",
    "Bad authentication method": "not_authorized",
}


@dataclass
class ConnectOutcome:
    """What one CONNECT attempt came to.

    :ivar kind: ``"accepted"``, or one of the :data:`ADVICE` keys.
    :ivar detail: the broker's reason (``"Not authorized"``) or the network error.
    :ivar reason_code: the CONNACK reason code's value, when one came.
    :ivar properties: the MQTT 5 CONNACK properties (``{"MaximumQoS": 1, ...}``).
    :ivar seconds: how long the attempt took.
    """

    settings: ConnectionSettings
    protocol: str
    kind: str
    detail: str = ""
    reason_code: int | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.kind == "accepted"

    def sentence(self) -> str:
        """One line: who, what the broker said, what to do."""
        where = f"the broker at {self.settings.display_url()} (MQTT {self.protocol})"
        if self.accepted:
            return f"{where} accepted the CONNECT in {self.seconds:.2f}s"
        advice = ADVICE.get(self.kind, ADVICE["error"])
        if self.kind == "not_authorized" and self.settings.username:
            advice = ADVICE["bad_credentials"]
        end = "" if advice.endswith("?") else "."
        return self.settings.mask(f"{where} {self.what_it_said()} — {advice}{end}")

    def what_it_said(self) -> str:
        """What came back, without advice: "refused the CONNECT: Not authorized (reason code 0x87)"."""
        said = {
            "refused": "refused the TCP connection",
            "unresolved": "has a host name that does not resolve",
            "unreachable": "is unreachable",
            "timeout": f"did not answer within {self.seconds:.1f}s",
            "tls": "failed the TLS handshake",
            "not_tls": "did not complete a TLS handshake",
            "tls_unknown_ca": "failed TLS verification: unknown CA",
            "tls_expired": "failed TLS verification: certificate expired",
            "tls_hostname": "failed TLS verification: host name mismatch",
            "tls_client_cert": "ended the TLS connection before any CONNACK (a refused client "
            "certificate)",
            "tls_cert_required": "closed the TLS connection before any CONNACK",
            "no_connack": f"sent no CONNACK within {self.seconds:.1f}s",
            "closed": "closed the connection before any CONNACK",
            "error": "could not be reached",
        }.get(self.kind, "refused the CONNECT")
        what = "return code" if self.protocol == "3.1.1" else "reason code"
        code = f" ({what} 0x{self.reason_code:02X})" if self.reason_code is not None else ""
        detail = f": {self.detail}{code}" if self.detail else code
        return self.settings.mask(f"{said}{detail}")


#: what an SSL error says when the other end is no TLS server at all (a plain MQTT listener
#: reads the ClientHello as a malformed packet and hangs up, or answers bytes that are not TLS)
_NOT_TLS = (
    "WRONG_VERSION_NUMBER",
    "wrong version",
    "UNEXPECTED_EOF",
    "EOF occurred",
    "RECORD_LAYER",
)


#: tls_probe's kinds → this module's outcome kinds
_TLS_KINDS = {
    "unknown_ca": "tls_unknown_ca",
    "expired": "tls_expired",
    "hostname": "tls_hostname",
    "client_unknown_ca": "tls_client_cert",
    "cert_required": "tls_cert_required",
    "not_tls": "not_tls",
}


def _classify_error(error: BaseException, tls: bool = False) -> str:
    from mqtt_factory_lab.core.tls_probe import classify_ssl_error

    named = _TLS_KINDS.get(classify_ssl_error(error) or "")
    if named is not None:
        return named
    if isinstance(error, ssl.SSLError | ssl.CertificateError):
        text = str(error)
        if isinstance(error, ssl.SSLCertVerificationError | ssl.CertificateError):
            return "tls"
        return "not_tls" if any(word in text for word in _NOT_TLS) else "tls"
    if isinstance(error, socket.gaierror):
        return "unresolved"
    if isinstance(error, ConnectionRefusedError):
        return "refused"
    if tls and isinstance(error, ConnectionResetError | BrokenPipeError):
        return "not_tls"  # the TCP connection was made; the listener hung up at the ClientHello
    if isinstance(error, TimeoutError | socket.timeout):
        # a TCP connection was made, but the listener never answered the TLS handshake
        return "not_tls" if "handshake" in str(error) else "timeout"
    if isinstance(error, OSError) and error.errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH
        return "unreachable"
    return "error"


def try_connect(
    settings: ConnectionSettings,
    protocol: str = "3.1.1",
    *,
    timeout: float = 2.0,
    client_id: str | None = None,
    keep: bool = False,
) -> tuple[ConnectOutcome, mqtt.Client | None]:
    """One CONNECT with ``protocol`` to ``settings.for_protocol(protocol)``; never retries.

    Waits for the CONNACK (or the connection's end) on an event, at most ``timeout``
    seconds for the TCP/TLS connection and as long again for the CONNACK.

    :param keep: return the connected client (network loop running) instead of closing it;
        the caller must ``disconnect()`` and ``loop_stop()`` it.
    :returns: the outcome, and the client when ``keep`` and accepted (else ``None``).
    """
    target = settings.for_protocol(protocol)
    client = target.paho_client(
        client_id or f"lab-probe-{uuid.uuid4().hex[:8]}", protocol, reconnect_on_failure=False
    )
    client.connect_timeout = timeout
    done = threading.Event()
    result: dict[str, Any] = {}

    def on_connect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        result.setdefault("connack", (reason, properties))
        done.set()

    def on_disconnect(c: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        result.setdefault("closed", reason)
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    started = time.monotonic()

    def outcome(kind: str, detail: str = "", **extra: Any) -> ConnectOutcome:
        return ConnectOutcome(
            target, protocol, kind, detail, seconds=time.monotonic() - started, **extra
        )

    try:
        client.connect(target.host, target.port, keepalive=10)
    except (OSError, ssl.SSLError, ValueError) as error:
        kind = _classify_error(error, target.tls)
        if kind.startswith("tls_"):  # the check that failed, without OpenSSL's decoration
            detail = getattr(error, "verify_message", None) or getattr(error, "reason", None)
            return outcome(kind, str(detail or "").lower()), None
        return outcome(kind, str(error) or type(error).__name__), None
    no_delay(client)
    client.loop_start()
    done.wait(timeout)
    if "connack" in result:
        reason, properties = result["connack"]
        if not reason.is_failure:
            found = outcome("accepted", properties=_props(properties))
            if keep:
                return found, client
            _close(client)
            return found, None
        _close(client)
        name = str(reason)
        return outcome(
            _REFUSALS.get(name, "refused_other"),
            name,
            reason_code=code_as_sent(reason, protocol),
        ), None
    closed = result.get("closed")  # before our own disconnect adds one
    _close(client)
    if closed is not None:
        if target.tls:  # Mosquitto's require_certificate under TLS 1.3: no alert, just the end
            kind = "tls_cert_required" if target.cert is None else "tls_client_cert"
            return outcome(kind, ""), None
        return outcome("closed", str(closed)), None
    return outcome("no_connack"), None


def no_delay(client: mqtt.Client) -> None:
    """Turn off Nagle's algorithm on a connected paho client's TCP socket.

    Paho leaves it on. Over plain TCP that costs little, because paho writes each packet at
    once; over WebSockets the small frames of a request and its answer wait out the peer's
    delayed ACK (40 ms on Linux) at every round trip: measured on Mosquitto 2.0.11, 50 QoS 1
    round trips took 1.36 s over ws:// and 0.03 s over mqtt:// — and 0.03 s over ws:// with
    TCP_NODELAY. For a WebSocket the socket is the one beneath paho's wrapper.
    """
    sock = client.socket()
    raw = getattr(sock, "_socket", sock)  # paho's _WebsocketWrapper keeps the TCP/TLS socket
    with contextlib.suppress(AttributeError, OSError):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _close(client: mqtt.Client) -> None:
    """Disconnect and stop the network thread: a failed client must not reconnect on its own."""
    try:
        client.disconnect()
    finally:
        client.loop_stop()


def _props(properties: Any) -> dict[str, Any]:
    if properties is None:
        return {}
    try:
        return {k: v for k, v in properties.json().items() if v not in (None, [], "")}
    except (AttributeError, TypeError):
        return {}


def ready(
    settings: ConnectionSettings,
    *,
    timeout: float = 2.0,
    protocols: tuple[str, ...] = ("3.1.1", "5"),
) -> list[ConnectOutcome]:
    """Readiness of an external broker: CONNECT with each protocol until one is accepted.

    A broker is ready when any protocol is accepted (an MQTT-5-only listener is fine). When the
    first attempt cannot even reach the address, the others are not tried: they would wait too.

    :returns: every attempt's outcome, in order.
    """
    outcomes: list[ConnectOutcome] = []
    for protocol in protocols:
        found, _ = try_connect(settings, protocol, timeout=timeout)
        outcomes.append(found)
        if found.accepted:
            break
        if found.kind in NOT_MQTT and settings.for_protocol(protocol) is settings.for_protocol("5"):
            break
    return outcomes

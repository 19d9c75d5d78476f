"""How every factory program finds and joins the broker.

Settings come from the environment, as in the Virtual Factory sandbox
(``VF_BROKER_HOST``, ``VF_BROKER_PORT``...), and every program accepts the same
command-line flags to override them. The lab's test harness starts programs
with these variables set, so a student's program that reads them connects to
the broker under test.

=====================  ============  =========================================
variable               default       meaning
=====================  ============  =========================================
``VF_BROKER_HOST``     ``localhost`` broker address
``VF_BROKER_PORT``     ``1884``      broker port (docker compose maps 1884)
``VF_MQTT_PROTOCOL``   ``5``         ``5`` or ``3.1.1``
``VF_USERNAME``        (none)        username, if the broker wants one
``VF_PASSWORD``        (none)        password
``VF_TLS``             (off)         ``1``: TLS with the system's CAs
``VF_TLS_CA``          (none)        CA file: turns TLS on with that CA
``VF_TLS_CERT``        (none)        client certificate (mutual TLS)
``VF_TLS_KEY``         (none)        client key
``VF_TRANSPORT``       ``tcp``       ``tcp`` or ``websockets``
``VF_WS_PATH``         ``/mqtt``     WebSocket path (with ``websockets``)
``VF_TOPIC_ROOT``      ``factory``   first topic level of the namespace
=====================  ============  =========================================

``--keepalive SECONDS`` (default 30) has no variable: it is a property of the
program, not of the broker. The broker declares a client that stays silent for
1.5 × its keepalive dead and publishes its Last Will; the lab gives devices the
shortest legal value (1) to see that happen quickly.
"""

from __future__ import annotations

import argparse
import os
import ssl
import threading
from dataclasses import dataclass, field, replace

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
TRANSPORTS = ("tcp", "websockets")


@dataclass(frozen=True)
class BrokerSettings:
    """Where the broker is and how to talk to it."""

    host: str = "localhost"
    port: int = 1884
    protocol: str = "5"
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls: bool = False
    transport: str = "tcp"
    ws_path: str = "/mqtt"
    topic_root: str = "factory"
    keepalive: int = field(default=30)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> BrokerSettings:
        env = os.environ if env is None else env
        port = env.get("VF_BROKER_PORT", "1884")
        if not port.isdigit():
            raise ValueError(f"VF_BROKER_PORT must be a port number, not {port!r}")
        protocol = env.get("VF_MQTT_PROTOCOL", "5")
        if protocol not in PROTOCOLS:
            raise ValueError(
                f"VF_MQTT_PROTOCOL must be one of {', '.join(PROTOCOLS)}, not {protocol!r}"
            )
        transport = env.get("VF_TRANSPORT", "tcp") or "tcp"
        if transport not in TRANSPORTS:
            raise ValueError(
                f"VF_TRANSPORT must be one of {', '.join(TRANSPORTS)}, not {transport!r}"
            )
        return cls(
            transport=transport,
            ws_path=env.get("VF_WS_PATH") or "/mqtt",
            tls=env.get("VF_TLS", "") not in ("", "0") or bool(env.get("VF_TLS_CA")),
            host=env.get("VF_BROKER_HOST", "localhost"),
            port=int(port),
            protocol=protocol,
            username=env.get("VF_USERNAME") or None,
            password=env.get("VF_PASSWORD") or None,
            tls_ca=env.get("VF_TLS_CA") or None,
            tls_cert=env.get("VF_TLS_CERT") or None,
            tls_key=env.get("VF_TLS_KEY") or None,
            topic_root=env.get("VF_TOPIC_ROOT", "factory"),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BrokerSettings:
        """Environment settings, overridden by the flags of :func:`add_arguments`."""
        settings = cls.from_env()
        overrides = {
            name: getattr(args, name)
            for name in (
                *("host", "port", "protocol", "username", "password", "topic_root"),
                *("tls_ca", "tls_cert", "tls_key", "keepalive"),
            )
            if getattr(args, name, None) is not None
        }
        return replace(settings, **overrides)

    def to_env(self) -> dict[str, str]:
        """These settings as the ``VF_*`` variables :meth:`from_env` reads back.

        This is how a program hands its settings to the programs it starts
        (``sim.run_all``): nothing goes on a command line, where ``ps`` would
        show a password to every user of the machine.
        """
        values = {
            "VF_BROKER_HOST": self.host,
            "VF_BROKER_PORT": str(self.port),
            "VF_MQTT_PROTOCOL": self.protocol,
            "VF_USERNAME": self.username,
            "VF_PASSWORD": self.password,
            "VF_TLS_CA": self.tls_ca,
            "VF_TLS_CERT": self.tls_cert,
            "VF_TLS_KEY": self.tls_key,
            "VF_TLS": "1" if self.tls else None,
            "VF_TRANSPORT": self.transport if self.transport != "tcp" else None,
            "VF_WS_PATH": self.ws_path if self.transport != "tcp" else None,
            "VF_TOPIC_ROOT": self.topic_root,
        }
        return {name: value for name, value in values.items() if value is not None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the common connection flags (each defaults to its ``VF_*`` variable)."""
    group = parser.add_argument_group("broker connection (defaults from VF_* variables)")
    group.add_argument("--host", help="broker host (VF_BROKER_HOST, default localhost)")
    group.add_argument("--port", type=int, help="broker port (VF_BROKER_PORT, default 1884)")
    group.add_argument(
        "--protocol", choices=sorted(PROTOCOLS), help="MQTT version (VF_MQTT_PROTOCOL, default 5)"
    )
    group.add_argument("--username", help="username (VF_USERNAME)")
    group.add_argument("--password", help="password (VF_PASSWORD)")
    group.add_argument("--topic-root", help="first topic level (VF_TOPIC_ROOT, default 'factory')")
    group.add_argument("--tls-ca", help="CA certificate file; turns TLS on (VF_TLS_CA)")
    group.add_argument("--tls-cert", help="client certificate for mutual TLS (VF_TLS_CERT)")
    group.add_argument("--tls-key", help="client private key for mutual TLS (VF_TLS_KEY)")
    group.add_argument(
        "--keepalive",
        type=_keepalive,
        metavar="SECONDS",
        help="MQTT keepalive: the broker declares us dead (and sends our Last Will) after "
        "1.5 x this many silent seconds (1-65535, default 30)",
    )


def _keepalive(text: str) -> int:
    """A keepalive the broker accepts: 1 to 65535 seconds (0 would switch the check off)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            f"keepalive must be a whole number of seconds from 1 to 65535, not {text!r}"
        )
    return value


def make_client(
    client_id: str,
    settings: BrokerSettings,
    *,
    clean_start: bool = True,
    session_expiry: int | None = None,
    will: tuple[str, bytes | str, int, bool] | None = None,
) -> mqtt.Client:
    """A configured, not yet connected paho client (callback API version 2).

    :param clean_start: start a fresh session (MQTT 5 clean start / 3.1.1 clean
        session).
    :param session_expiry: MQTT 5 session expiry interval in seconds; for 3.1.1 a
        persistent session is simply ``clean_start=False``.
    :param will: Last Will as ``(topic, payload, qos, retain)``.
    """
    protocol = PROTOCOLS[settings.protocol]
    kwargs: dict[str, object] = {}
    if protocol != mqtt.MQTTv5:
        kwargs["clean_session"] = clean_start
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        transport=settings.transport,
        **kwargs,
    )
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls or settings.tls_ca:
        client.tls_set(
            ca_certs=settings.tls_ca, certfile=settings.tls_cert, keyfile=settings.tls_key
        )
    if settings.transport == "websockets":
        client.ws_set_options(path=settings.ws_path)
    if will:
        topic, payload, qos, retain = will
        client.will_set(topic, payload, qos=qos, retain=retain)
    client._lab_clean_start = clean_start  # type: ignore[attr-defined]
    client._lab_session_expiry = session_expiry  # type: ignore[attr-defined]
    return client


def tls_files_problem(settings: BrokerSettings) -> str | None:
    """One sentence when the TLS files cannot be used (which file, which check, what to do).

    Checked when the settings are read, so that a wrong path or a key of another certificate
    ends the program with that sentence, before any connection and without a stack trace.
    """
    if not (settings.tls or settings.tls_ca):
        return None
    if (settings.tls_cert is None) != (settings.tls_key is None):
        return "VF_TLS_CERT (--tls-cert) and VF_TLS_KEY (--tls-key) go together: give both"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if settings.tls_ca:
            context.load_verify_locations(cafile=settings.tls_ca)
    except (ssl.SSLError, OSError) as error:
        return (
            f"VF_TLS_CA (--tls-ca) {settings.tls_ca} cannot be used as the CA certificate "
            f"({_ssl_reason(error)}): give the PEM file of the CA that signed the broker's "
            "certificate"
        )
    try:
        if settings.tls_cert and settings.tls_key:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
    except (ssl.SSLError, OSError) as error:
        if "KEY_VALUES_MISMATCH" in f"{getattr(error, 'reason', '')} {error}".upper():
            return (
                f"VF_TLS_KEY (--tls-key) {settings.tls_key} is not the private key of "
                f"VF_TLS_CERT {settings.tls_cert} (the key does not match the certificate): "
                "give this machine's own certificate and key"
            )
        return (
            f"VF_TLS_CERT {settings.tls_cert} and VF_TLS_KEY {settings.tls_key} cannot be "
            f"used as this machine's certificate and key ({_ssl_reason(error)}): give a PEM "
            "certificate and its unencrypted PEM key"
        )
    return None


def _ssl_reason(error: BaseException) -> str:
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, PermissionError):
        return "not readable by this user"
    reason = getattr(error, "reason", None)
    return str(reason or getattr(error, "strerror", None) or error).replace("_", " ").lower()


#: OpenSSL verification results (``verify_code``) → what failed, in words
_VERIFY = {
    10: "its certificate has expired",
    9: "its certificate is not valid yet",
    62: "its certificate is for another host name",
    64: "its certificate is for another IP address",
}


def tls_failure(error: ssl.SSLError, settings: BrokerSettings) -> str:
    """One sentence for a failed TLS handshake: which certificate, which check, what to do."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(error, ssl.SSLCertVerificationError):
        trusted = f"the CA in {settings.tls_ca}" if settings.tls_ca else "the system's CAs"
        what = _VERIFY.get(
            getattr(error, "verify_code", -1), f"its certificate is not signed by {trusted}"
        )
        return (
            f"refusing the broker at {where}: {what} (TLS certificate verification failed), so "
            "it may not be the factory's broker (a man in the middle); nothing was sent. Check "
            "VF_TLS_CA (--tls-ca) and VF_BROKER_HOST; never switch verification off."
        )
    text = f"{getattr(error, 'reason', '')} {error}".upper()
    if "UNKNOWN_CA" in text or "BAD_CERTIFICATE" in text:
        return (
            f"the broker at {where} refused our client certificate {settings.tls_cert} (mutual "
            "TLS: not signed by the CA it trusts); use the certificate the factory's CA issued "
            "for this machine (VF_TLS_CERT, VF_TLS_KEY)"
        )
    if "CERTIFICATE_REQUIRED" in text or "HANDSHAKE_FAILURE" in text:
        return (
            f"the broker at {where} requires a client certificate (mutual TLS) and we sent "
            "none; set VF_TLS_CERT and VF_TLS_KEY (--tls-cert, --tls-key)"
        )
    if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER" in text:
        return f"the listener at {where} does not speak TLS; unset VF_TLS / VF_TLS_CA or use its TLS port"
    return f"the TLS handshake with the broker at {where} failed: {error.reason or error}"


def connect(client: mqtt.Client, settings: BrokerSettings, timeout: float = 10.0) -> None:
    """Connect and start the network loop; return once the CONNACK accepted us.

    :raises ConnectionError: with the broker's reason when it refused, or a hint
        about VF_BROKER_HOST / VF_BROKER_PORT when nothing answered.
    """
    accepted = threading.Event()
    outcome: dict[str, object] = {}
    previous = client.on_connect

    def on_connect(c, userdata, flags, reason_code, properties):
        outcome["reason"] = reason_code
        accepted.set()
        if previous is not None:
            previous(c, userdata, flags, reason_code, properties)

    previous_disconnect = client.on_disconnect

    def on_disconnect(c, userdata, flags, reason_code, properties):
        outcome.setdefault("closed", reason_code)
        accepted.set()
        if previous_disconnect is not None:
            previous_disconnect(c, userdata, flags, reason_code, properties)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    kwargs: dict[str, object] = {}
    if client.protocol == mqtt.MQTTv5:
        kwargs["clean_start"] = client._lab_clean_start  # type: ignore[attr-defined]
        expiry = client._lab_session_expiry  # type: ignore[attr-defined]
        if expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = expiry
            kwargs["properties"] = props
    try:
        client.connect(settings.host, settings.port, keepalive=settings.keepalive, **kwargs)
    except ssl.SSLError as error:
        raise ConnectionError(tls_failure(error, settings)) from error
    except OSError as error:
        raise ConnectionError(
            f"cannot reach the MQTT broker at {settings.host}:{settings.port} ({error}); "
            "is it running? Set VF_BROKER_HOST / VF_BROKER_PORT (or --host / --port) to where it is."
        ) from error
    client.loop_start()
    answered = accepted.wait(timeout)
    client.on_disconnect = previous_disconnect
    if not answered or "reason" not in outcome:
        client.loop_stop()
        if (settings.tls or settings.tls_ca) and settings.tls_cert is None:
            raise ConnectionError(
                f"the broker at {settings.host}:{settings.port} closed the TLS connection "
                "without answering CONNECT: it probably requires a client certificate (mutual "
                "TLS); set VF_TLS_CERT and VF_TLS_KEY (--tls-cert, --tls-key)"
            )
        if answered and settings.tls_cert:
            raise ConnectionError(
                f"the broker at {settings.host}:{settings.port} closed the TLS connection "
                f"without answering CONNECT: it probably refused our client certificate "
                f"{settings.tls_cert} (mutual TLS: not issued by the CA it trusts); use the "
                "certificate the factory's CA issued for this machine (VF_TLS_CERT, VF_TLS_KEY)"
            )
        if answered:
            raise ConnectionError(
                f"the broker at {settings.host}:{settings.port} closed the connection before "
                f"answering CONNECT ({outcome['closed']})"
            )
        raise ConnectionError(
            f"the broker at {settings.host}:{settings.port} did not answer CONNECT within {timeout}s"
        )
    # Later reconnects call the caller's own handler directly.
    client.on_connect = previous
    reason = outcome["reason"]
    if getattr(reason, "is_failure", False):
        client.loop_stop()
        raise ConnectionError(f"the broker at {settings.host}:{settings.port} refused us: {reason}")

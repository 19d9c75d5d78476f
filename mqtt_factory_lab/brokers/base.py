"""What every broker backend offers, and the errors it raises.

A :class:`Broker` is a running (or stoppable) MQTT broker that a lesson talks
to. It knows nothing about pytest: it is a context manager that starts in
``__enter__`` and leaves nothing behind in ``__exit__``, so it can be used from
a script, a benchmark or a fixture alike.
"""

from __future__ import annotations

import random
import re
import socket
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from mqtt_factory_lab.core.connection import ConnectionSettings, try_connect
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until

if TYPE_CHECKING:
    from mqtt_factory_lab.brokers.tls import BrokerTLS

#: What a backend can do to its broker; lessons declare what they need.
RESTART = "restart"  #: stop() / start() / restart()
CONFIG = "config"  #: the harness chose the configuration files (ACL, persistence)
LOG = "log"  #: the broker's log can be read


class BrokerError(RuntimeError):
    """Something went wrong with a broker; the message says what to do."""


class BrokerStartError(BrokerError):
    """The broker did not come up. The message quotes its own log lines."""


class BrokerUnavailable(BrokerError):
    """No backend can provide a broker on this machine."""


class CapabilityMissing(BrokerError):
    """The backend cannot do what a test asked (restart an external broker...)."""


#: where :func:`free_port` looks first: below the ephemeral range (Linux: 32768-60999)
LISTEN_PORTS = range(10000, 32768)
_pick = random.SystemRandom()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return LISTEN_PORTS.stop


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now, for a server the lab starts next.

    The port comes from below the kernel's ephemeral range: a port the kernel hands out
    for ``bind(0)`` lies inside that range, where every outgoing client socket (a paho
    client, a browser) also takes its local port, so between this call and the server's
    own ``bind`` a client could take it ("address already in use"). Below the range only
    another listener can. The kernel's pick is the fallback when none is free there.
    """
    low = min(_ephemeral_low(), LISTEN_PORTS.stop)
    for _ in range(50):
        port = _pick.randrange(LISTEN_PORTS.start, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def mqtt_ping(host: str, port: int, timeout: float = 1.0) -> bool:
    """Return whether an MQTT broker answers a CONNECT to ``host:port`` within ``timeout``.

    This is the readiness test of a broker the lab starts: a port that accepts TCP is
    not yet a broker, but a CONNACK, even one that refuses an anonymous client, is. It
    waits for the CONNACK on an event; for an external broker,
    :func:`mqtt_factory_lab.core.connection.ready` also says why a broker is not ready.
    """
    outcome, _ = try_connect(ConnectionSettings(host, port), "3.1.1", timeout=timeout)
    # A CONNACK that refuses (a broker that wants a login) still proves a broker is there.
    return outcome.accepted or outcome.reason_code is not None


class Broker(ABC):
    """A broker the lab can talk to.

    :ivar backend: ``"local"``, ``"docker"`` or ``"external"``.
    :ivar variant: the configuration variant (``"open"``, ``"acl+persistent"``...).
    :ivar host: address clients connect to.
    :ivar port: port clients connect to.
    :ivar capabilities: subset of {``RESTART``, ``CONFIG``, ``LOG``}.
    :ivar ready_seconds: how long the last start took until a CONNECT succeeded.
    :ivar role: what the broker is in an experiment of several (``"site"``, ``"cloud"``);
        empty for the lab's usual single broker.
    """

    backend: str = "abstract"
    capabilities: frozenset[str] = frozenset()

    def __init__(self, variant: str = "open") -> None:
        self.variant = variant
        self.host = "127.0.0.1"
        self.port = 0
        self.ready_seconds: float | None = None
        #: the CA and server certificate of a ``tls``/``mtls`` broker (None: plaintext)
        self.tls: BrokerTLS | None = None
        self.role = ""

    @property
    def label(self) -> str:
        """How reports name the broker: its role in a pair (``site``), else its variant."""
        return self.role or self.variant

    # -- lifecycle ---------------------------------------------------------
    @abstractmethod
    def start(self) -> None:
        """Start the broker and return once it accepts an MQTT CONNECT."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the broker gracefully (it saves persistent state), then forcefully."""

    def restart(self) -> None:
        """Stop and start again on the same port with the same files."""
        self.require(RESTART)
        self.stop()
        self.start()

    def kill(self) -> None:
        """End the broker abruptly, without saving (a crash)."""
        raise CapabilityMissing(f"the {self.backend} backend cannot kill its broker")

    @abstractmethod
    def close(self) -> None:
        """Stop the broker and remove everything it used. Safe to call twice."""

    @abstractmethod
    def is_running(self) -> bool:
        """Whether the broker process or container is alive."""

    def __enter__(self) -> Broker:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what tests look at -------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls is not None else 'mqtt'}://{self.host}:{self.port}"

    @property
    def connection(self) -> ConnectionSettings:
        """How clients and programs connect: plain TCP to :attr:`host`/:attr:`port` for a
        broker the lab starts (TLS trusting the run's CA for a ``tls``/``mtls`` variant); the
        external backend returns its ``--broker-url`` settings."""
        if self.tls is not None:
            return self.tls.settings(self.host, self.port)
        return ConnectionSettings(self.host, self.port)

    def ping(self, timeout: float = 1.0) -> bool:
        """Whether the broker answers a CONNECT now (over TLS for a TLS variant)."""
        if self.tls is not None:
            return self.tls.ping(self.host, self.port, timeout)
        return mqtt_ping(self.host, self.port, timeout)

    @property
    def config_files(self) -> dict[str, Path]:
        """The configuration files in use, by name (empty when unknown)."""
        return {}

    def log(self) -> str:
        """The broker's log so far."""
        raise CapabilityMissing(f"the {self.backend} backend cannot read the broker's log")

    def log_lines(self) -> list[str]:
        return self.log().splitlines()

    def log_mark(self) -> int:
        """A position in the log; pass it to :meth:`wait_for_log` to ignore older lines."""
        return len(self.log_lines()) if LOG in self.capabilities else 0

    def wait_for_log(self, pattern: str, timeout: float = 5.0, since: int = 0) -> str:
        """Wait until a log line matches the regular expression ``pattern``.

        :param since: a :meth:`log_mark`; lines before it are ignored.
        :returns: the first matching line.
        :raises AssertionError: with the recent log, when no line matched in time.
        """
        self.require(LOG)
        regex = re.compile(pattern)

        def matching_line() -> str | None:
            return next((line for line in self.log_lines()[since:] if regex.search(line)), None)

        try:
            return wait_until(matching_line, timeout)
        except ProcessTimeout:
            pass
        lines = self.log_lines()[since:]
        tail = "\n".join("    " + line for line in lines[-15:]) or "    (no lines)"
        raise AssertionError(
            f"the broker never logged a line matching {pattern!r} within {timeout}s; "
            f"its last lines were:\n{tail}"
        )

    def require(self, *capabilities: str) -> None:
        """Raise :class:`CapabilityMissing` unless the backend has all ``capabilities``."""
        missing = sorted(set(capabilities) - self.capabilities)
        if missing:
            raise CapabilityMissing(
                f"the {self.backend} backend cannot {', '.join(_VERBS[m] for m in missing)} "
                f"for {self.url}"
            )

    def health(self) -> str:
        """One line on the broker's state, for failure messages."""
        if not self.is_running():
            return (
                f"the {self.backend} broker at {self.url} is NOT running (it exited or was killed)"
            )
        return f"the {self.backend} broker at {self.url} is running"

    def tail(self, n: int = 20) -> str:
        """The last ``n`` log lines, indented, or a note when there is no log."""
        if LOG not in self.capabilities:
            return "    (this backend has no broker log)"
        lines = self.log_lines()[-n:]
        return "\n".join("    " + line for line in lines) or "    (empty log)"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.variant} {self.url}>"


_VERBS = {
    RESTART: "stop, start or restart the broker",
    CONFIG: "choose the broker's configuration (ACL, persistence)",
    LOG: "read the broker's log",
}


def format_log(lines: Iterable[str], limit: int = 25) -> str:
    """Indent the last ``limit`` lines for an error message."""
    lines = list(lines)[-limit:]
    return "\n".join("    " + line for line in lines) or "    (the broker printed nothing)"

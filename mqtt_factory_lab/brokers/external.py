"""The external backend: a broker that someone else runs (``--broker-url``).

The lab can connect to it but cannot choose its configuration, read its log
or restart it; tests that need those are skipped with a reason saying so.
"""

from __future__ import annotations

from mqtt_factory_lab.brokers.base import Broker, BrokerStartError
from mqtt_factory_lab.core.connection import ConnectionSettings, ConnectOutcome, ready, try_connect


def parse_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` → ``(host, port)``; the port defaults to the scheme's (1883 for mqtt).

    :raises ValueError: for another scheme or a malformed address.
    """
    settings = ConnectionSettings.from_url(url)
    return settings.host, settings.port


class ExternalBroker(Broker):
    """A broker at a fixed address, checked once with a real CONNECT at start.

    :param url: ``mqtt://host:port`` (or ``mqtts://``, ``ws://``, ``wss://``, with
        ``user:password@``), or ready-made :class:`ConnectionSettings`.
    :param variant: what the caller asked for; only ``"open"`` is meaningful.
    :param start_timeout: seconds each CONNECT attempt may wait for the network, and again
        for the CONNACK.

    A start that fails remembers why: starting again raises the same error at once, so
    an unreachable broker costs one wait per run, not one per test.
    """

    backend = "external"
    capabilities = frozenset()

    def __init__(
        self,
        url: str | ConnectionSettings,
        variant: str = "open",
        start_timeout: float = 2.0,
    ) -> None:
        super().__init__(variant)
        self.settings = (
            url if isinstance(url, ConnectionSettings) else ConnectionSettings.from_url(url)
        )
        self.host, self.port = self.settings.host, self.settings.port
        self.start_timeout = start_timeout
        self.outcomes: list[ConnectOutcome] = []
        self._failure: BrokerStartError | None = None

    @property
    def url(self) -> str:
        return self.settings.display_url()

    @property
    def connection(self) -> ConnectionSettings:
        return self.settings

    def start(self) -> None:
        if self._failure is not None:
            raise self._failure
        self.outcomes = ready(self.settings, timeout=self.start_timeout)
        if self.outcomes[-1].accepted:
            self.ready_seconds = sum(o.seconds for o in self.outcomes)
            return
        self._failure = BrokerStartError(not_ready_message(self.outcomes))
        raise self._failure

    def stop(self) -> None:
        self.require("restart")

    def close(self) -> None:
        """Nothing to stop: the broker is someone else's."""

    def is_running(self) -> bool:
        protocol = self.outcomes[-1].protocol if self.outcomes else "3.1.1"
        outcome, _ = try_connect(self.settings, protocol, timeout=1.0)
        return outcome.accepted


def not_ready_message(outcomes: list[ConnectOutcome]) -> str:
    """Why no CONNECT was accepted, one line per attempt (what the broker said, what to do)."""
    where = outcomes[0].settings.display_url()
    lines = "\n".join(f"  - {o.sentence()}" for o in outcomes)
    return (
        f"no MQTT broker accepted a CONNECT at {where} (check --broker-url and the broker):\n"
        f"{lines}"
    )

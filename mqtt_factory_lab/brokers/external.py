"""The external backend: a broker that someone else runs (``--broker-url``).

The lab can connect to it but cannot choose its configuration, read its log
or restart it; tests that need those are skipped with a reason saying so.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from mqtt_factory_lab.brokers.base import Broker, BrokerStartError, mqtt_ping
from mqtt_factory_lab.process import ProcessTimeout, wait_until


def parse_url(url: str) -> tuple[str, int]:
    """``mqtt://host:port`` → ``(host, port)``; port defaults to 1883.

    :raises ValueError: for another scheme or a malformed address.
    """
    parts = urlsplit(url if "://" in url else f"mqtt://{url}")
    if parts.scheme not in ("mqtt", "tcp"):
        raise ValueError(f"--broker-url must look like mqtt://HOST:PORT, not {url!r}")
    try:
        port = parts.port or 1883
    except ValueError as error:
        raise ValueError(f"--broker-url {url!r} has an invalid port") from error
    if not parts.hostname:
        raise ValueError(f"--broker-url {url!r} has no host")
    return parts.hostname, port


class ExternalBroker(Broker):
    """A broker at a fixed address, checked with a real CONNECT at start.

    :param url: ``mqtt://host:port``.
    :param variant: what the caller asked for; only ``"open"`` is meaningful.
    """

    backend = "external"
    capabilities = frozenset()

    def __init__(self, url: str, variant: str = "open", start_timeout: float = 5.0) -> None:
        super().__init__(variant)
        self.host, self.port = parse_url(url)
        self.start_timeout = start_timeout

    def start(self) -> None:
        started = time.monotonic()
        try:
            # poll interval 0.05 s: a refused connection returns at once
            wait_until(
                lambda: mqtt_ping(self.host, self.port, timeout=1.0),
                self.start_timeout,
                interval=0.05,
            )
            self.ready_seconds = time.monotonic() - started
            return
        except ProcessTimeout:
            pass
        raise BrokerStartError(
            f"no MQTT broker accepted a CONNECT at {self.url} within {self.start_timeout}s: "
            "check that it runs and that --broker-url is right (it must allow anonymous clients)"
        )

    def stop(self) -> None:
        self.require("restart")

    def close(self) -> None:
        """Nothing to stop: the broker is someone else's."""

    def is_running(self) -> bool:
        return mqtt_ping(self.host, self.port, timeout=1.0)

"""Subscribe on every connection and say ``ready <id>`` once the broker has granted it.

The observer, ``sim.cli sub`` and the dashboard all need the same few steps: send
SUBSCRIBE in ``on_connect`` (so that a reconnect subscribes again), read the
SUBACK's reason codes, and print the ready line only when every filter was
granted. The line is printed from paho's network thread inside ``on_subscribe``,
so it comes before the retained messages that follow the SUBACK, and whoever
waits for it can publish at once and miss nothing.

    client = make_client("observer-1", settings)
    subscriber = Subscriber(client, "observer-1", ["factory/#"], qos=1)
    connect(client, settings)
    refused = subscriber.wait(10.0)   # None once granted, else why not
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from sim.runtime import print_ready


def describe_code(code: object) -> str:
    """A reason code as the broker sent it: ``Not authorized (135)``."""
    value = getattr(code, "value", code)
    return f"{code} ({value})"


class Subscriber:
    """Subscribes ``filters`` at ``qos`` on each connection of ``client``.

    :param announce: print ``ready <client_id>`` after the first complete grant.
    :param out: where the ready line goes (default stdout).
    :param on_connected: also called on each successful connection (for a log line).

    It takes over the client's ``on_connect`` and ``on_subscribe`` callbacks.
    """

    def __init__(
        self,
        client: mqtt.Client,
        client_id: str,
        filters: Sequence[str],
        qos: int = 1,
        *,
        announce: bool = True,
        out: TextIO | None = None,
        on_connected: Callable[[], Any] | None = None,
    ) -> None:
        self.client_id = client_id
        self.filters = list(filters)
        self.qos = qos
        self.announce = announce
        self.out = out
        self.on_connected = on_connected
        self.refused: str | None = None
        self.announced = False
        self.subscribed = threading.Event()
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            return
        self.subscribed.clear()
        if self.on_connected is not None:
            self.on_connected()
        # For MQTT 5, paho turns each QoS into SubscribeOptions(qos=...) itself.
        client.subscribe([(f, self.qos) for f in self.filters])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        refused = [
            f"{topic}: {describe_code(code)}"
            for topic, code in zip(self.filters, reason_codes, strict=False)
            if code.is_failure
        ]
        if refused:
            self.refused = "the broker refused the subscription: " + "; ".join(refused)
        elif not self.announced:
            self.announced = True
            if self.announce:
                print_ready(self.client_id, self.out)
        self.subscribed.set()

    def wait(self, timeout: float = 10.0) -> str | None:
        """Wait for the first SUBACK: None when every filter was granted, else why not."""
        if not self.subscribed.wait(timeout):
            return f"no SUBACK within {timeout:g}s"
        return self.refused

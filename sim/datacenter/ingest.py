"""The data center's subscriber: a persistent session, and acknowledgements only after commit.

The rule this module exists for: **a QoS 1 message is acknowledged (PUBACK) only
after the transaction that stores it has committed.** paho acknowledges a
message as soon as ``on_message`` returns, unless the client is made with
``manual_ack``; then nothing is acknowledged until :meth:`paho.mqtt.client.Client.ack`.
So:

* paho's network thread only queues what arrives (``on_message``);
* the main thread takes whatever is queued (up to ``batch_size`` messages),
  stores it in one transaction (:meth:`~sim.datacenter.storage.Store.ingest`),
  and after the commit acknowledges each QoS 1 message;
* killed between the two, the data center has acknowledged nothing it has not
  stored. The broker keeps the unacknowledged messages in the session (fixed
  client id, clean start off, session expiry) and sends them again when the
  data center comes back, together with whatever it queued meanwhile. Some of
  them may already be stored: the idempotency key makes that a no-op.

The batch is what arrived while the previous commit ran, so commits grow with the
load instead of waiting for a timer. Telemetry (QoS 0) is never queued by the broker
for an absent subscriber: what the line sent during an outage is a gap, by design.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from sim.connection import BrokerSettings, connect, make_client
from sim.datacenter.storage import Incoming, Store
from sim.runtime import StopSignals, print_ready

log = logging.getLogger("sim.datacenter")


class DataCenter:
    """Subscribes to the line and stores everything.

    :param settings: broker and topic root.
    :param store: the database.
    :param client_id: fixed, so the broker finds the session again after a restart.
    :param session_expiry: MQTT 5 session expiry (seconds) the broker keeps the session
        (and queues QoS 1 messages) while the data center is away.
    :param batch_size: at most this many messages per transaction.
    :param topic_filter: what to subscribe to (default: every line under the root).
    :param share: a shared subscription group: subscribe to ``$share/<share>/<filter>``, so
        the data centers of one group split the stream (each message to one of them).
    """

    def __init__(
        self,
        settings: BrokerSettings,
        store: Store,
        *,
        client_id: str = "datacenter",
        session_expiry: int = 86400,
        batch_size: int = 500,
        topic_filter: str | None = None,
        share: str | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.client_id = client_id
        self.session_expiry = session_expiry
        self.batch_size = batch_size
        self.topic_filter = topic_filter or f"{settings.topic_root}/+/+/+/+/+"
        if share:
            self.topic_filter = f"$share/{share}/{self.topic_filter}"
        self.inbox: queue.SimpleQueue[Incoming] = queue.SimpleQueue()
        self.counts = {"stored": 0, "duplicates": 0, "dead_letters": 0}
        self._subscribed = threading.Event()
        self._sub_error: str | None = None

    # -- paho callbacks (network thread): queue, never store here --------------------
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(
            Incoming(
                msg.topic,
                bytes(msg.payload),
                msg.qos,
                bool(msg.retain),
                time.time(),
                bool(msg.dup),
                msg.mid,
            )
        )

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if getattr(reason, "is_failure", False):
            return
        log.info(
            "connected (session present: %s); subscribing to %s",
            bool(getattr(flags, "session_present", False)),
            self.topic_filter,
        )
        # Subscribing again on every connect is harmless with a kept session and
        # necessary when the broker lost it (restarted without persistence).
        client.subscribe(self.topic_filter, qos=1)

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: Any, properties: Any
    ) -> None:
        failed = [c for c in codes if getattr(c, "is_failure", False)]
        if failed:
            self._sub_error = (
                f"the broker refused the subscription to {self.topic_filter}: {failed[0]}"
            )
        self._subscribed.set()

    # -- main loop ---------------------------------------------------------------------
    def _take(self, first: Incoming) -> list[Incoming]:
        batch = [first]
        while len(batch) < self.batch_size:
            try:
                batch.append(self.inbox.get_nowait())
            except queue.Empty:
                break
        return batch

    def _store_then_ack(self, batch: list[Incoming], stop: StopSignals) -> bool:
        """Commit ``batch``, then acknowledge its QoS 1 messages. False if stopped first."""
        while True:
            try:
                result = self.store.ingest(batch)
                break
            except sqlite3.Error as error:
                # Nothing was committed, so nothing is acknowledged: the broker keeps the
                # messages. Retry until the database is back or we are told to stop.
                log.error("could not commit %d messages (%s); retrying", len(batch), error)
                if stop.wait(1.0):
                    return False
        for message in batch:
            if message.qos > 0:
                self.client.ack(message.mid, message.qos)
        self.counts["stored"] += result.stored
        self.counts["duplicates"] += result.duplicates
        self.counts["dead_letters"] += result.dead_letters
        return True

    def run(self) -> int:
        self.client = make_client(
            self.client_id,
            self.settings,
            clean_start=False,
            session_expiry=self.session_expiry,
        )
        self.client.manual_ack_set(True)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)
        with StopSignals() as stop:
            try:
                connect(self.client, self.settings)
            except ConnectionError as error:
                log.error("%s", error)
                return 1
            try:
                if not self._subscribed.wait(10):
                    log.error("no SUBACK for %s within 10 s", self.topic_filter)
                    return 1
                if self._sub_error:
                    log.error("%s", self._sub_error)
                    return 1
                print_ready(self.client_id)
                log.info("storing into %s", self.store.path)
                while not stop.requested:
                    try:
                        first = self.inbox.get(timeout=0.1)
                    except queue.Empty:
                        continue
                    if not self._store_then_ack(self._take(first), stop):
                        break
                # Stopping: store what has arrived, so the broker need not send it again.
                leftover: list[Incoming] = []
                while True:
                    try:
                        leftover.append(self.inbox.get_nowait())
                    except queue.Empty:
                        break
                if leftover:
                    self._store_then_ack(leftover, stop)
            finally:
                self.client.disconnect()
                self.client.loop_stop()
                self.store.close()
        log.info(
            "stopped: %(stored)d stored, %(duplicates)d duplicates ignored, "
            "%(dead_letters)d dead letters",
            self.counts,
        )
        return 0

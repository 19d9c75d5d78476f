"""The chocolate line on the broker: one MQTT client per machine, paced in plant time.

Each machine is its own MQTT client (client id ``<prefix>-<machine>``) with its
own Last Will, its state ``offline``/``last-will`` retained: if the line
process dies, the broker tells every dashboard that each machine is gone. The
runner takes the messages :class:`~sim.chocolate.line.LineCore` decides, waits
until their plant time is due (``plant seconds / time scale``; a time scale of
0 means as fast as possible) and publishes them on their machine's client at
the seed's QoS and retain policy. At the end (``--batches`` done, SIGTERM or
Ctrl-C) every machine publishes ``offline``/``shutdown``, waits for its
acknowledgements and disconnects.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable

import paho.mqtt.client as mqtt

from sim.chocolate.line import LineCore, Outgoing
from sim.connection import BrokerSettings, connect, make_client
from sim.mqtt5 import chocolate_properties
from sim.runtime import StopSignals, print_ready, write_line

log = logging.getLogger("sim.chocolate")


class LineRunner:
    """Runs a :class:`LineCore` on a broker.

    :param core: the line's decisions.
    :param settings: where the broker is.
    :param client_prefix: machine client ids are ``<prefix>-<machine>``; the ready
        line is ``ready <prefix>``.
    :param time_scale: plant seconds per wall second (0: no pacing).
    """

    def __init__(
        self, core: LineCore, settings: BrokerSettings, client_prefix: str, time_scale: float
    ) -> None:
        self.core = core
        self.settings = settings
        self.prefix = client_prefix
        self.time_scale = time_scale
        self.clients: dict[str, mqtt.Client] = {}
        self.pending: list[tuple[Outgoing, mqtt.MQTTMessageInfo]] = []
        self.sent: Counter[str] = Counter()
        #: each machine's last retained state, published again when it reconnects: a
        #: restarted broker may have sent its Last Will (``offline``) meanwhile
        self.last_state: dict[str, Outgoing] = {}

    def _republish_state(self, machine: str) -> Callable[..., None]:
        def on_connect(client: mqtt.Client, *_: object) -> None:
            state = self.last_state.get(machine)
            if state is not None:
                client.publish(state.topic, state.encode(), state.qos, state.retain)

        return on_connect

    def connect_all(self) -> None:
        for step, machine in self.core.machines():
            client = make_client(
                f"{self.prefix}-{machine}", self.settings, will=self.core.will(step, machine)
            )
            client.reconnect_delay_set(min_delay=1, max_delay=5)
            client.on_connect = self._republish_state(machine)
            connect(client, self.settings)
            self.clients[machine] = client

    def publish(self, message: Outgoing) -> None:
        properties = chocolate_properties(
            message.message_type, message.payload, self.settings.protocol
        )
        info = self.clients[message.machine].publish(
            message.topic, message.encode(), message.qos, message.retain, properties=properties
        )
        self.sent[message.message_type] += 1
        if message.message_type == "state":
            self.last_state[message.machine] = message
        if message.qos > 0:
            self.pending.append((message, info))
            if len(self.pending) > 2000:
                self.pending = [(m, i) for m, i in self.pending if not i.is_published()]

    def confirm(self, timeout: float = 15.0) -> int:
        """Wait for every QoS 1 acknowledgement; return how many never came."""
        deadline = time.monotonic() + timeout
        missing = 0
        for message, info in self.pending:
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                missing += 1
                log.warning("no PUBACK for %s (%s)", message.topic, message.payload["msg_id"])
        self.pending.clear()
        return missing

    def run(self, messages: Iterable[Outgoing], stop: StopSignals) -> bool:
        """Publish ``messages`` in plant time; False when a stop signal cut the run short."""
        started = time.monotonic()
        for message in messages:
            if self.time_scale > 0:
                due = started + message.plant_time / self.time_scale
                delay = due - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return False
            if stop.requested:
                return False
            self.publish(message)
            if message.message_type == "batch" and message.payload["event"] in (
                "batch_started",
                "scrapped",
            ):
                log.info(
                    "%s %s (%s)",
                    message.payload["batch_id"],
                    message.payload["event"],
                    message.payload["recipe"],
                )
        return True

    def close(self) -> None:
        """Every machine says it is offline (retained), then disconnects."""
        for step, machine in self.core.machines():
            if machine in self.clients:
                self.publish(self.core.state(step, machine, "offline", reason="shutdown"))
        self.confirm()
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()
        self.clients.clear()


def run_line(
    core: LineCore,
    settings: BrokerSettings,
    *,
    client_prefix: str,
    time_scale: float,
    batches: int | None,
) -> int:
    """Connect every machine, say ``ready``, produce, shut down; the exit status."""
    runner = LineRunner(core, settings, client_prefix, time_scale)
    with StopSignals() as stop:
        try:
            runner.connect_all()
        except ConnectionError as error:
            log.error("%s", error)
            for client in runner.clients.values():
                client.loop_stop()
            return 1
        try:
            for step, machine in core.machines():
                runner.publish(core.state(step, machine, "idle"))
            if runner.confirm():
                log.error("the broker did not acknowledge the machines' initial state")
                return 1
            log.info(
                "%d machines online under %s/%s/%s, run %s, time scale %g",
                len(runner.clients),
                core.topics.root,
                core.topics.site,
                core.topics.line,
                core.run_id,
                time_scale,
            )
            print_ready(client_prefix)
            finished = runner.run(core.run(batches), stop)
            missing = runner.confirm()
        finally:
            runner.close()
    totals = ", ".join(f"{n} {kind}" for kind, n in sorted(runner.sent.items()))
    write_line(
        f"{'done' if finished else 'stopped'}: {core.batches_started} batches, "
        f"{core.shipments} shipments; sent {totals}"
    )
    return 0 if missing == 0 else 1

"""A bad actor: tries what the ACL forbids, and proves what the broker did about it.

::

    $ python -m sim.bad_actor --protocol 5
    ready bad-actor
    DENIED   publish   factory/commands/controller/press  q1 MQTT 5  PUBACK reason code 135 ...

Run it against the ``acl`` broker variant (``docker/acl``): only the users
``dashboard`` and ``observer`` may read ``factory/#``; a device (client id =
device id) may write only its own telemetry, alarms, state, status and events;
a command publisher only ``factory/commands/<its id>/#``; ``lab/sync/<client
id>/#`` is each client's own. As client ``bad-actor`` it tries to:

1. impersonate the controller: ``stop`` on ``<root>/commands/controller/press``;
2. overwrite the retained ``<root>/state/press``;
3. publish fake telemetry for the press;
4. subscribe to ``#``, to ``$SYS/#`` and to another client's
   ``lab/sync/<other>/#``.

Each attempt is reported with how the outcome was *proven*:

``denied``
    the broker said no: an MQTT 5 PUBACK (QoS 1) or a SUBACK with reason code
    135 "Not authorized" (128 for a refused MQTT 3.1.1 subscription).
``dropped``
    the broker accepted the packet but did not deliver it. MQTT 3.1.1 has no
    way to refuse a PUBLISH, so Mosquitto acknowledges it and drops it; and
    Mosquitto's ACL file grants every SUBSCRIBE and filters each message at
    delivery. Proof: a witness that should have received the message did a
    round trip through the broker on its own ``lab/sync/<id>/...`` topic;
    its own message came back, the forbidden one never did. (A broker handles
    one client's packets in order, so what it had queued before has arrived.)
``allowed``
    the message went through (an open broker).

For a PUBLISH the witness is a probe client (``<client id>-probe``) that may
read the target topic: it logs in as user ``observer`` (``--probe-username``),
whom ``docker/acl`` lets read the whole plant, so that "it never arrived" means
dropped and not "the probe could not have seen it". For a SUBSCRIBE the bad actor is its own witness: the
probe puts a message in its own ``lab/sync/<probe id>/`` space (the "other
client" of attempt 4), which ``#`` would match too; for ``$SYS/#`` the
witness messages are the retained ``$SYS/broker/...`` topics the broker
sends to anyone allowed to read them.

Every attempt is printed as a readable line, or with ``--json`` as a JSON
line (the readable line then goes to stderr)::

    {"action": "publish", "topic": "...", "qos": 1, "protocol": "5", "outcome": "denied",
     "reason_code": 135, "evidence": "...", "attempt": "impersonate-controller",
     "client_id": "bad-actor"}

Exit status: 0 when every attempt ran (whatever the outcomes), 1 when the
broker is unreachable or a round trip failed, so nothing could be proven.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from sim.connection import BrokerSettings, add_arguments, connect, make_client
from sim.runtime import (
    broker_settings,
    interrupt_on_sigterm,
    print_ready,
    setup_logging,
    write_line,
)
from sim.topics import SYNC_PREFIX, Topics

log = logging.getLogger("bad_actor")


class ProofError(RuntimeError):
    """A round trip through the broker failed, so no outcome can be proven."""


@dataclass(frozen=True)
class Attempt:
    """One thing the bad actor tries."""

    name: str
    action: str  # "publish" | "subscribe"
    topic: str
    qos: int
    retain: bool = False
    payload: bytes = b""
    why: str = ""


@dataclass(frozen=True)
class Report:
    """What happened to one attempt, and the evidence."""

    action: str
    topic: str
    qos: int
    protocol: str
    outcome: str  # "denied" | "allowed" | "dropped"
    reason_code: int | None
    evidence: str
    attempt: str
    client_id: str

    def json(self) -> str:
        return json.dumps(asdict(self))

    def readable(self) -> str:
        return (
            f"{self.outcome.upper():<8} {self.action:<9} {self.topic}  "
            f"q{self.qos} MQTT {self.protocol}  ({self.attempt}) {self.evidence}"
        )


class Peer:
    """A paho client that waits for its acks and keeps what it receives."""

    def __init__(self, client_id: str, settings: BrokerSettings) -> None:
        self.client_id = client_id
        self.settings = settings
        self.client = make_client(client_id, settings)
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_ack
        self.client.on_unsubscribe = self._on_ack
        self.client.on_publish = self._on_publish
        self.messages: list[mqtt.MQTTMessage] = []
        self._acks: dict[int, Any] = {}
        self._cond = threading.Condition()
        self._round_trips = 0

    @property
    def sync_base(self) -> str:
        return f"{SYNC_PREFIX}/{self.client_id}"

    def connect(self) -> None:
        connect(self.client, self.settings)
        code = self.subscribe(f"{self.sync_base}/#", 1)
        if code.is_failure:
            raise ProofError(
                f"{self.client_id} may not subscribe to its own {self.sync_base}/# ({code}); "
                "without it nothing can be proven"
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def _on_ack(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self._acks[mid] = reason_codes
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._acks[mid] = reason_code
            self._cond.notify_all()

    def _wait_ack(self, mid: int, what: str, timeout: float = 5.0) -> Any:
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._acks, timeout):
                raise ProofError(
                    f"{self.client_id} got no acknowledgement for {what} in {timeout}s"
                )
            return self._acks.pop(mid)

    def subscribe(self, topic: str, qos: int) -> ReasonCode:
        # For MQTT 5, paho turns the QoS into SubscribeOptions(qos=...) itself.
        result, mid = self.client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ProofError(f"{self.client_id} could not send SUBSCRIBE {topic}: {result}")
        return self._wait_ack(mid, f"SUBSCRIBE {topic}")[0]

    def unsubscribe(self, topic: str) -> None:
        result, mid = self.client.unsubscribe(topic)
        if result == mqtt.MQTT_ERR_SUCCESS:
            self._wait_ack(mid, f"UNSUBSCRIBE {topic}")

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> ReasonCode:
        """Publish; return the PUBACK reason code (QoS 1/2) or success once sent (QoS 0)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ProofError(f"{self.client_id} could not send PUBLISH {topic}: {info.rc}")
        return self._wait_ack(info.mid, f"PUBLISH {topic}")

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def received(
        self, since: int, match: Callable[[mqtt.MQTTMessage], bool]
    ) -> list[mqtt.MQTTMessage]:
        with self._cond:
            return [m for m in self.messages[since:] if match(m)]

    def round_trip(self, timeout: float = 5.0) -> str:
        """Publish to our own sync topic and wait for it to come back; return that topic.

        Afterwards everything the broker queued for us before has arrived.
        """
        self._round_trips += 1
        topic = f"{self.sync_base}/rt/{self._round_trips}"
        marker = uuid.uuid4().hex.encode()
        self.publish(topic, marker, 1)
        with self._cond:
            if not self._cond.wait_for(
                lambda: any(m.topic == topic and m.payload == marker for m in self.messages),
                timeout,
            ):
                raise ProofError(
                    f"{self.client_id}'s round trip on {topic} did not come back within {timeout}s"
                )
        return topic


class BadActor:
    """Runs the attempts with a bad client and a witness probe."""

    def __init__(
        self,
        settings: BrokerSettings,
        client_id: str,
        probe_id: str,
        probe_username: str | None = None,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.bad = Peer(client_id, settings)
        # The witness must be allowed to read what it watches (docker/acl: user observer).
        probe_settings = (
            replace(settings, username=probe_username, password=None)
            if probe_username
            else settings
        )
        self.probe = Peer(probe_id, probe_settings)

    def connect(self) -> None:
        self.bad.connect()
        self.probe.connect()

    def close(self) -> None:
        self.probe.close()
        self.bad.close()

    def report(self, attempt: Attempt, outcome: str, code: int | None, evidence: str) -> Report:
        return Report(
            action=attempt.action,
            topic=attempt.topic,
            qos=attempt.qos,
            protocol=self.settings.protocol,
            outcome=outcome,
            reason_code=code,
            evidence=evidence,
            attempt=attempt.name,
            client_id=self.client_id,
        )

    def run(self, attempt: Attempt) -> Report:
        if attempt.action == "publish":
            return self.try_publish(attempt)
        return self.try_subscribe(attempt)

    def try_publish(self, attempt: Attempt) -> Report:
        if self.settings.protocol == "5" and attempt.qos > 0:
            code = self.bad.publish(attempt.topic, attempt.payload, attempt.qos, attempt.retain)
            outcome = "denied" if code.is_failure else "allowed"
            return self.report(
                attempt, outcome, code.value, f"PUBACK reason code {code.value} ({code})"
            )
        # No reason code to read: watch for the message with a probe instead.
        probe_code = self.probe.subscribe(attempt.topic, 1)
        if probe_code.is_failure:
            raise ProofError(
                f"the probe {self.probe.client_id} may not read {attempt.topic} ({probe_code}), "
                "so it cannot witness whether the publish went through"
            )
        mark = self.probe.mark()
        try:
            code = self.bad.publish(attempt.topic, attempt.payload, attempt.qos, attempt.retain)
            own = self.bad.round_trip()  # the broker has handled our PUBLISH...
            probe_rt = self.probe.round_trip()  # ...and the probe has everything routed to it
            seen = self.probe.received(
                mark, lambda m: m.topic == attempt.topic and m.payload == attempt.payload
            )
        finally:
            self.probe.unsubscribe(attempt.topic)
        ack = (
            "sent at QoS 0 (no acknowledgement exists)"
            if attempt.qos == 0
            else f"the broker acknowledged it (PUBACK {code})"
        )
        if seen:
            return self.report(
                attempt,
                "allowed",
                None,
                f"{ack}; the probe {self.probe.client_id}, subscribed to the topic, received it",
            )
        return self.report(
            attempt,
            "dropped",
            None,
            f"{ack}, but the probe {self.probe.client_id}, subscribed to the topic, never "
            f"received it: our round trip on {own} and the probe's on {probe_rt} both came "
            "back first, so the broker dropped it silently",
        )

    def try_subscribe(self, attempt: Attempt) -> Report:
        mark = self.bad.mark()
        code = self.bad.subscribe(attempt.topic, attempt.qos)
        try:
            if code.is_failure:
                return self.report(
                    attempt, "denied", code.value, f"SUBACK reason code {code.value} ({code})"
                )
            granted = f"SUBACK granted ({code}, reason code {code.value})"
            bait_topic = f"{self.probe.sync_base}/bait/{uuid.uuid4().hex[:8]}"
            if mqtt.topic_matches_sub(attempt.topic, bait_topic):
                self.probe.publish(bait_topic, b"only the probe may read this", 1)
                witness = f"the probe's message on {bait_topic}"

                def matches(m: mqtt.MQTTMessage) -> bool:
                    return m.topic == bait_topic

            elif attempt.topic.startswith("$SYS"):
                witness = "the retained $SYS/broker/... messages"

                def matches(m: mqtt.MQTTMessage) -> bool:
                    return m.topic.startswith("$SYS/")

            else:
                return self.report(
                    attempt,
                    "allowed",
                    code.value,
                    f"{granted}; no witness message exists for this filter, so delivery "
                    "was not checked",
                )
            own = self.bad.round_trip()
            seen = self.bad.received(mark, matches)
            if seen:
                return self.report(
                    attempt,
                    "allowed",
                    code.value,
                    f"{granted}, and {witness} arrived ({len(seen)} message(s), "
                    f"first {seen[0].topic})",
                )
            return self.report(
                attempt,
                "dropped",
                code.value,
                f"{granted}, but {witness} never arrived: our round trip on {own} came back "
                "first, so the broker filters what this subscription delivers by read "
                "permission",
            )
        finally:
            self.bad.unsubscribe(attempt.topic)


def default_attempts(
    topics: Topics, client_id: str, probe_id: str, *, device: str, impersonate: str, qos: int
) -> list[Attempt]:
    """The attempts of the ACL lesson, with payloads nobody else could have sent."""
    now = time.time()
    nonce = uuid.uuid4().hex[:12]

    def dump(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    command = {
        "command": "stop",
        "reason": f"forged by {client_id}",
        "ts": now,
        "command_id": f"forged-{nonce}",
        "issued_by": impersonate,
    }
    state = {
        "ts": now,
        "device_id": device,
        "kind": device,
        "state": "stopped",
        "setpoints": {},
        "counters": {
            "produced": 0,
            "alarms_raised": 0,
            "commands_accepted": 0,
            "commands_rejected": 0,
        },
        "reason": f"forged by {client_id} ({nonce})",
    }
    telemetry = {
        "ts": now,
        "device_id": device,
        "sensor": "temperature",
        "value": 999.9,
        "unit": "C",
        "seq": int(nonce[:8], 16),
    }
    return [
        Attempt(
            "impersonate-controller",
            "publish",
            topics.command(impersonate, device),
            qos,
            payload=dump(command),
            why=f"send commands as {impersonate}",
        ),
        Attempt(
            "overwrite-state",
            "publish",
            topics.state(device),
            qos,
            retain=True,
            payload=dump(state),
            why=f"replace {device}'s retained state",
        ),
        Attempt(
            "fake-telemetry",
            "publish",
            topics.telemetry(device, "temperature"),
            qos,
            payload=dump(telemetry),
            why=f"publish readings as {device}",
        ),
        Attempt("subscribe-everything", "subscribe", "#", qos, why="read every topic"),
        Attempt("subscribe-sys", "subscribe", "$SYS/#", qos, why="read the broker's internals"),
        Attempt(
            "subscribe-other-private",
            "subscribe",
            f"{SYNC_PREFIX}/{probe_id}/#",
            qos,
            why=f"read {probe_id}'s private space",
        ),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.bad_actor",
        description="Try unauthorized publishes and subscribes and report, with evidence, "
        "whether the broker denied, dropped or allowed each one.",
        epilog="Exit status: 0 when every attempt ran; 1 when the broker is unreachable or a "
        "round trip failed.",
    )
    parser.add_argument(
        "--client-id", default="bad-actor", help="our client id (default bad-actor)"
    )
    parser.add_argument(
        "--probe-id",
        help="the witness client's id (default <client id>-probe); it also plays "
        "the 'other client' whose lab/sync space we try to read",
    )
    parser.add_argument(
        "--probe-username",
        default="observer",
        help="user name the witness probe logs in with; the ACL must let it read the attacked "
        "topics (default observer, who reads factory/# in docker/acl; '' for none)",
    )
    parser.add_argument("--device", default="press", help="the device to attack (default press)")
    parser.add_argument(
        "--impersonate", default="controller", help="whose commands to forge (default controller)"
    )
    parser.add_argument(
        "--qos",
        type=int,
        choices=(0, 1, 2),
        default=1,
        help="QoS of the attempts (default 1: MQTT 5 then answers with a reason code)",
    )
    parser.add_argument(
        "--json", action="store_true", help="JSON lines on stdout (readable lines on stderr)"
    )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = broker_settings(parser, args)
    setup_logging("bad_actor: %(message)s")
    # A short run: SIGTERM interrupts it like Ctrl-C, and both disconnect cleanly.
    interrupt_on_sigterm()
    probe_id = args.probe_id or f"{args.client_id}-probe"
    actor = BadActor(settings, args.client_id, probe_id, args.probe_username or None)
    attempts = default_attempts(
        Topics(settings.topic_root),
        args.client_id,
        probe_id,
        device=args.device,
        impersonate=args.impersonate,
        qos=args.qos,
    )
    try:
        actor.connect()
    except (ConnectionError, ProofError) as error:
        log.error("%s", error)
        actor.close()
        return 1
    try:
        print_ready(args.client_id)
        for attempt in attempts:
            log.info("trying to %s: %s %s", attempt.why, attempt.action, attempt.topic)
            report = actor.run(attempt)
            if args.json:
                write_line(report.json())
                log.info("%s", report.readable())
            else:
                write_line(report.readable())
        return 0
    except ProofError as error:
        log.error("cannot prove the outcome: %s", error)
        return 1
    except KeyboardInterrupt:
        log.info("interrupted")
        return 130
    finally:
        actor.close()


if __name__ == "__main__":
    sys.exit(main())

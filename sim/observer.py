"""A passive observer: prints every message of the factory and counts them per topic.

::

    $ python -m sim.observer --stats-interval 10
    ready observer-1a2b3c4d
    [q1 R] factory/state/press {"ts": 1767225600.0, "device_id": "press", ...}
    [q0 -] factory/telemetry/press/temperature {"ts": 1767225600.5, ...}

Each line shows the QoS the message was *delivered* with (the lower of the
publisher's QoS and the subscription's) and ``R`` when it carries the retain
flag, which a broker sets on messages it replays from its retained store when
a subscription is made; ``-`` means a live message. ``--json`` prints one JSON
object per message instead::

    {"ts": 1767225600.6, "topic": "factory/state/press", "qos": 1, "retain": true,
     "payload": {...}}

where ``payload`` is the parsed JSON payload, or the text when it is not JSON.

Statistics (count, overall rate and rate in the last interval, per topic)
are printed every ``--stats-interval`` seconds and once at exit; in ``--json``
mode as an object with a ``"stats"`` key, so they never look like a message.

The observer stops on SIGTERM / Ctrl-C, after ``--count`` messages or after
``--timeout`` seconds. Exit status: 0, or 1 when the broker is unreachable or
refuses the subscription, or 3 when ``--timeout`` passed before ``--count``
messages arrived.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import paho.mqtt.client as mqtt

from sim.connection import BrokerSettings, add_arguments, connect, make_client
from sim.runtime import StopSignals, broker_settings, setup_logging, write_line
from sim.subscriber import Subscriber

log = logging.getLogger("observer")

EXIT_TIMEOUT = 3


def decode_payload(payload: bytes) -> Any:
    """The payload as JSON when it parses, else as text (invalid UTF-8 replaced)."""
    text = payload.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def message_record(message: mqtt.MQTTMessage, ts: float | None = None) -> dict[str, Any]:
    """The JSON-lines form of a received message."""
    return {
        "ts": time.time() if ts is None else ts,
        "topic": message.topic,
        "qos": message.qos,
        "retain": bool(message.retain),
        "payload": decode_payload(message.payload),
    }


def format_message(message: mqtt.MQTTMessage) -> str:
    """``[q1 R] factory/state/press {...}``: delivered QoS, retain flag, topic, payload."""
    flag = "R" if message.retain else "-"
    body = message.payload.decode("utf-8", errors="replace") if message.payload else "<empty>"
    return f"[q{message.qos} {flag}] {message.topic} {body}"


@dataclass
class TopicStats:
    count: int = 0
    bytes: int = 0
    interval_count: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0


@dataclass
class Stats:
    """Per-topic counts and rates since the start and since the last report."""

    started: float = field(default_factory=time.monotonic)
    last_report: float = field(default_factory=time.monotonic)
    topics: dict[str, TopicStats] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, topic: str, size: int) -> None:
        now = time.monotonic()
        with self.lock:
            entry = self.topics.get(topic)
            if entry is None:
                entry = self.topics[topic] = TopicStats(first_seen=now)
            entry.count += 1
            entry.interval_count += 1
            entry.bytes += size
            entry.last_seen = now

    @property
    def total(self) -> int:
        with self.lock:
            return sum(t.count for t in self.topics.values())

    def snapshot(self, *, final: bool = False) -> dict[str, Any]:
        """The numbers as a dict, and start a new interval."""
        now = time.monotonic()
        with self.lock:
            elapsed = max(now - self.started, 1e-9)
            interval = max(now - self.last_report, 1e-9)
            rows = [
                {
                    "topic": topic,
                    "count": t.count,
                    "bytes": t.bytes,
                    "rate": round(t.count / elapsed, 3),
                    "recent_rate": round(t.interval_count / interval, 3),
                }
                for topic, t in sorted(self.topics.items())
            ]
            for t in self.topics.values():
                t.interval_count = 0
            self.last_report = now
        total = sum(r["count"] for r in rows)
        return {
            "ts": time.time(),
            "final": final,
            "elapsed": round(elapsed, 3),
            "total": total,
            "rate": round(total / elapsed, 3),
            "topics": rows,
        }


def format_stats(snapshot: dict[str, Any]) -> str:
    """A table: one row per topic, busiest first."""
    title = "summary" if snapshot["final"] else "stats"
    lines = [
        f"--- {title} after {snapshot['elapsed']:.1f}s: {snapshot['total']} messages, "
        f"{snapshot['rate']:.2f} msg/s, {len(snapshot['topics'])} topics ---",
        f"{'count':>8} {'msg/s':>8} {'recent':>8}  topic",
    ]
    for row in sorted(snapshot["topics"], key=lambda r: (-r["count"], r["topic"])):
        lines.append(
            f"{row['count']:>8} {row['rate']:>8.2f} {row['recent_rate']:>8.2f}  {row['topic']}"
        )
    return "\n".join(lines)


class Observer:
    """Subscribes, prints and counts.

    :param filters: topic filters to subscribe to.
    :param qos: maximum QoS of the subscriptions.
    :param out: where messages and statistics are printed.
    :param as_json: JSON lines instead of text.
    :param count: stop after this many messages (None: never).
    """

    def __init__(
        self,
        client_id: str,
        settings: BrokerSettings,
        filters: Sequence[str],
        *,
        qos: int = 1,
        out: TextIO = sys.stdout,
        as_json: bool = False,
        count: int | None = None,
    ) -> None:
        self.client_id = client_id
        self.settings = settings
        self.filters = list(filters)
        self.qos = qos
        self.out = out
        self.as_json = as_json
        self.count = count
        self.stats = Stats()
        self.received = 0
        self.done = threading.Event()
        self.client = make_client(client_id, settings)
        self.subscriber = Subscriber(
            self.client,
            client_id,
            self.filters,
            qos,
            out=out,
            on_connected=lambda: log.info(
                "connected; subscribing to %s at QoS %d", ", ".join(self.filters), qos
            ),
        )
        self.client.on_message = self._on_message

    def start(self) -> None:
        connect(self.client, self.settings)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def print(self, text: str) -> None:
        write_line(text, self.out)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        if self.done.is_set():
            return
        self.stats.add(message.topic, len(message.payload))
        self.print(json.dumps(message_record(message)) if self.as_json else format_message(message))
        self.received += 1
        if self.count is not None and self.received >= self.count:
            self.done.set()

    def report(self, *, final: bool = False) -> None:
        snapshot = self.stats.snapshot(final=final)
        if self.as_json:
            self.print(json.dumps({"stats": snapshot}))
        else:
            self.print(format_stats(snapshot))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.observer",
        description="Watch the factory's MQTT traffic: every message with its QoS and retain "
        "flag, and per-topic statistics.",
        epilog="Exit status: 0; 1 if the broker is unreachable or refuses the subscription; "
        f"{EXIT_TIMEOUT} if --timeout passed before --count messages arrived.",
    )
    parser.add_argument(
        "--topic",
        action="append",
        metavar="FILTER",
        help="topic filter to watch (repeatable; default <root>/#)",
    )
    parser.add_argument(
        "--qos", type=int, choices=(0, 1, 2), default=1, help="subscription QoS (default 1)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    parser.add_argument(
        "--stats-interval",
        type=float,
        default=0.0,
        metavar="S",
        help="print per-topic statistics every S seconds (default: only the summary at exit)",
    )
    parser.add_argument("--no-summary", action="store_true", help="no statistics at exit")
    parser.add_argument("--count", type=int, metavar="N", help="exit after N messages")
    parser.add_argument("--timeout", type=float, metavar="S", help="exit after S seconds")
    parser.add_argument("--client-id", help="client id (default observer-<random>)")
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = broker_settings(parser, args)
    if args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    setup_logging("%(asctime)s observer %(levelname)s %(message)s")
    client_id = args.client_id or f"observer-{uuid.uuid4().hex[:8]}"
    filters = args.topic or [f"{settings.topic_root}/#"]
    with StopSignals() as stop:
        observer = Observer(
            client_id, settings, filters, qos=args.qos, as_json=args.json, count=args.count
        )
        try:
            observer.start()
        except ConnectionError as error:
            log.error("%s", error)
            return 1
        try:
            return watch(observer, args, stop)
        finally:
            observer.stop()
            if not args.no_summary:
                observer.report(final=True)


def watch(observer: Observer, args: argparse.Namespace, stop: StopSignals) -> int:
    """Wait for the SUBACK, then print statistics on time until a stop, --count or --timeout."""
    refused = observer.subscriber.wait(10.0)
    if refused is not None:
        log.error("%s", refused)
        return 1
    finished = stop.wait(
        args.timeout, until=observer.done, every=args.stats_interval, tick=observer.report
    )
    if not finished and args.count is not None:
        log.warning(
            "--timeout %.1fs passed after %d of %d messages",
            args.timeout,
            observer.received,
            args.count,
        )
        return EXIT_TIMEOUT
    return 0


if __name__ == "__main__":
    sys.exit(main())

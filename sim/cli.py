"""Publish and subscribe from the command line, like ``mosquitto_pub`` / ``mosquitto_sub``.

::

    $ python -m sim.cli pub --client-id dashboard --qos 1 \\
          --topic factory/commands/dashboard/conveyor --message '{"command":"stop","reason":"manual"}'
    $ python -m sim.cli pub --topic factory/state/press --retain --null     # clear a retained message
    $ python -m sim.cli sub --topic 'factory/telemetry/+/temperature' --count 5 -v

Both print ``ready <client id>`` on stdout once connected (``sub``: once the
broker acknowledged the subscription, so a message published after that line
is received); ``--no-ready`` leaves it out for piping. ``pub`` returns once
the broker acknowledged the message (QoS 1/2) or it was sent (QoS 0).

``sub`` prints the payload of each message (``-v``: topic and payload;
``--json``: ``{"ts", "topic", "qos", "retain", "payload"}`` per line).

Exit status
-----------
== ===========================================================================
0  done: published and acknowledged; ``sub`` received ``--count`` messages, or
   was stopped (Ctrl-C, SIGTERM, or ``--timeout`` when no ``--count`` was given)
1  the broker is unreachable or refused the connection
2  wrong command-line arguments
3  timeout: ``--timeout`` seconds passed before ``--count`` messages arrived
   (``sub``), or before the broker acknowledged the message (``pub``)
4  the broker refused: PUBACK / SUBACK with a failure reason code (MQTT 5
   "Not authorized" is 135; a refused MQTT 3.1.1 subscription is 128)
== ===========================================================================
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import paho.mqtt.client as mqtt

from sim.connection import BrokerSettings, add_arguments, connect, make_client
from sim.observer import message_record
from sim.runtime import StopSignals, broker_settings, print_ready, setup_logging, write_line
from sim.subscriber import Subscriber, describe_code

log = logging.getLogger("cli")

EXIT_OK = 0
EXIT_CONNECT = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_REFUSED = 4


# -- pub ---------------------------------------------------------------------------


def pub(args: argparse.Namespace, settings: BrokerSettings) -> int:
    """Publish one message and wait for its acknowledgement."""
    payload = b"" if args.null else args.message.encode()
    client_id = args.client_id or f"cli-pub-{uuid.uuid4().hex[:8]}"
    client = make_client(client_id, settings)
    acked = threading.Event()
    outcome: dict[str, object] = {}

    def on_publish(c, userdata, mid, reason_code, properties) -> None:
        outcome["reason"] = reason_code
        acked.set()

    client.on_publish = on_publish
    try:
        connect(client, settings)
    except ConnectionError as error:
        log.error("%s", error)
        return EXIT_CONNECT
    try:
        if not args.no_ready:
            print_ready(client_id)
        info = client.publish(args.topic, payload, qos=args.qos, retain=args.retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.error("could not send the message: %s", mqtt.error_string(info.rc))
            return EXIT_CONNECT
        what = "acknowledged" if args.qos else "sent"
        if not acked.wait(args.timeout):
            log.error("the message to %s was not %s within %.1fs", args.topic, what, args.timeout)
            return EXIT_TIMEOUT
        reason = outcome.get("reason")
        if getattr(reason, "is_failure", False):
            log.error("the broker refused the message to %s: %s", args.topic, describe_code(reason))
            return EXIT_REFUSED
        log.info(
            "published %d bytes to %s (QoS %d%s): %s%s",
            len(payload),
            args.topic,
            args.qos,
            ", retained" if args.retain else "",
            what,
            f" ({reason})" if args.qos and settings.protocol == "5" else "",
        )
        return EXIT_OK
    finally:
        client.disconnect()
        client.loop_stop()


# -- sub ---------------------------------------------------------------------------


@dataclass
class _SubState:
    received: int = 0


def sub(args: argparse.Namespace, settings: BrokerSettings, stop: StopSignals) -> int:
    """Subscribe and print messages until --count, --timeout or a signal."""
    client_id = args.client_id or f"cli-sub-{uuid.uuid4().hex[:8]}"
    client = make_client(client_id, settings)
    done = threading.Event()
    state = _SubState()
    subscriber = Subscriber(client, client_id, args.topic, args.qos, announce=not args.no_ready)

    def on_message(c, userdata, message: mqtt.MQTTMessage) -> None:
        if done.is_set():
            return
        if args.json:
            write_line(json.dumps(message_record(message)))
        else:
            text = message.payload.decode("utf-8", errors="replace")
            write_line(f"{message.topic} {text}" if args.verbose else text)
        state.received += 1
        if args.count is not None and state.received >= args.count:
            done.set()

    client.on_message = on_message
    try:
        connect(client, settings)
    except ConnectionError as error:
        log.error("%s", error)
        return EXIT_CONNECT
    try:
        refused = subscriber.wait(10.0)
        if refused is not None:
            log.error("%s", refused)
            return EXIT_REFUSED if subscriber.refused else EXIT_TIMEOUT
        if not stop.wait(args.timeout, until=done) and args.count is not None:
            log.error(
                "timeout: %d of %d messages within %.1fs",
                state.received,
                args.count,
                args.timeout,
            )
            return EXIT_TIMEOUT
        return EXIT_OK
    finally:
        client.disconnect()
        client.loop_stop()


# -- command line --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.cli",
        description="Publish or subscribe from the command line (like mosquitto_pub/_sub).",
        epilog="Exit status: 0 done, 1 broker unreachable, 2 bad arguments, 3 timeout, "
        "4 refused by the broker (PUBACK/SUBACK failure reason code).",
    )
    commands = parser.add_subparsers(dest="action", required=True, metavar="{pub,sub}")

    p = commands.add_parser("pub", help="publish one message")
    p.add_argument("--topic", "-t", required=True, help="topic to publish to")
    body = p.add_mutually_exclusive_group(required=True)
    body.add_argument("--message", "-m", help="payload (an empty string is a zero-length one)")
    body.add_argument(
        "--null", "-n", action="store_true", help="zero-length payload (with --retain: clears)"
    )
    p.add_argument("--qos", "-q", type=int, choices=(0, 1, 2), default=0, help="QoS (default 0)")
    p.add_argument("--retain", "-r", action="store_true", help="ask the broker to retain it")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds to wait for the ack (default 10)"
    )

    s = commands.add_parser("sub", help="subscribe and print messages")
    s.add_argument(
        "--topic", "-t", action="append", required=True, help="topic filter (repeatable)"
    )
    s.add_argument("--qos", "-q", type=int, choices=(0, 1, 2), default=0, help="QoS (default 0)")
    s.add_argument("--count", "-C", type=int, help="exit 0 after N messages")
    s.add_argument(
        "--timeout",
        "-W",
        type=float,
        help="give up after S seconds (exit 3 if --count messages did not arrive)",
    )
    s.add_argument("--json", action="store_true", help="print JSON lines")
    s.add_argument("--verbose", "-v", action="store_true", help="print the topic too")

    for command in (p, s):
        command.add_argument("--client-id", "-i", help="client id (default cli-pub/sub-<random>)")
        command.add_argument(
            "--no-ready", action="store_true", help="do not print the 'ready <id>' line"
        )
        add_arguments(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(f"cli {args.action}: %(message)s")
    if args.action == "sub" and args.count is not None and args.count < 1:
        parser.error("--count must be at least 1")
    settings = broker_settings(parser, args)
    if args.action == "pub":
        return pub(args, settings)
    with StopSignals() as stop:
        return sub(args, settings, stop)


if __name__ == "__main__":
    sys.exit(main())

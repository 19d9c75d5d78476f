"""``python -m sim.datacenter``: store the line's messages; ``... trace``: answer a recall.

Examples::

    $ python -m sim.datacenter --db datacenter.db                 # ingest until Ctrl-C
    ready datacenter
    $ python -m sim.datacenter trace --db datacenter.db backward FG-B-e8955b-0002-1
    $ python -m sim.datacenter trace --db datacenter.db forward HZP-e8955b-001
    $ python -m sim.datacenter trace --db datacenter.db recall HZP-e8955b-001 --output recall.csv
    $ python -m sim.datacenter trace --db datacenter.db balance
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sim.connection import add_arguments
from sim.datacenter.ingest import DataCenter
from sim.datacenter.storage import Store
from sim.datacenter.trace import Traceability, UnknownLot
from sim.runtime import add_log_level, broker_settings, setup_logging

DEFAULT_DB = "datacenter.db"


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.datacenter",
        description="The chocolate factory's data center: subscribe to every line under the "
        "topic root with a persistent session and store each message in SQLite (table "
        "mqtt_messages, plus traceability tables); rejected payloads go to dead_letters. "
        "A QoS 1 message is acknowledged only after it is committed.",
        epilog="Prints 'ready <client id>' once subscribed; logs go to stderr. "
        "'python -m sim.datacenter trace --help' for the traceability queries.",
    )
    parser.add_argument("--db", default=DEFAULT_DB, help=f"SQLite file (default {DEFAULT_DB})")
    parser.add_argument(
        "--client-id",
        default="datacenter",
        help="fixed MQTT client id: the broker keeps its session across restarts "
        "(default datacenter)",
    )
    parser.add_argument(
        "--session-expiry",
        type=_at_least(0),
        default=86400,
        metavar="S",
        help="MQTT 5 session expiry: how long the broker queues QoS 1 messages while the "
        "data center is away (default 86400)",
    )
    parser.add_argument(
        "--share",
        metavar="GROUP",
        help="subscribe through the shared subscription $share/GROUP/...: the data centers "
        "started with the same GROUP split the stream, each message going to one of them "
        "(lesson 09; scale out by starting a second process)",
    )
    parser.add_argument(
        "--batch-size",
        type=_at_least(1),
        default=500,
        metavar="N",
        help="at most N messages per transaction (default 500)",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help="fsync every commit (SQLite synchronous=FULL): survives a power cut, not only "
        "a killed process",
    )
    add_log_level(parser)
    add_arguments(parser)
    return parser


def build_trace_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.datacenter trace",
        description="Traceability queries on a data center database.",
    )
    parser.add_argument("--db", default=DEFAULT_DB, help=f"SQLite file (default {DEFAULT_DB})")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--output", help="write the answer to this file instead of stdout (recall: the CSV)"
    )
    sub = parser.add_subparsers(dest="query", required=True, metavar="QUERY")
    backward = sub.add_parser("backward", help="everything that went into a lot")
    backward.add_argument("lot", help="lot code, e.g. a finished lot FG-...")
    forward = sub.add_parser("forward", help="every lot and shipment made from a lot")
    forward.add_argument("lot", help="lot code, e.g. a raw lot HZP-...")
    recall = sub.add_parser("recall", help="recall report (CSV) for a lot")
    recall.add_argument("lot", help="the lot that is recalled")
    recall.add_argument("--output", help="write the CSV here (default: stdout)")
    balance = sub.add_parser("balance", help="mass balance per batch")
    balance.add_argument("batch", nargs="?", help="one batch (default: all)")
    balance.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="unexplained mass allowed, as a share of raw input (default 0.01)",
    )
    return parser


def _print_backward(found: dict[str, Any], say: Callable[[str], object]) -> None:
    say(
        f"lot {found['lot']}: {found['material']}, {found['quantity']} kg, "
        f"batch {found['batch_id']}"
    )
    for step in found["steps"]:
        say(
            f"  {step['step']} attempt {step['attempt']} on {step['machine']}: "
            f"{step['started']} .. {step['completed']}, {step['quantity_in']} kg in, "
            f"{step['quantity_out']} kg out"
            + "".join(f", {name} {value}" for name, value in step["parameters"].items())
        )
        for lot in step["inputs"]:
            say(f"    in  {lot['lot']} {lot['material']} {lot['quantity']} kg")
        for alarm in step["alarms"]:
            say(f"    alarm {alarm['alarm']} {alarm['state']} ({alarm['severity']})")
        for check in step["quality"]:
            say(
                f"    quality {check['check_name']} = {check['value']} {check['unit']}: "
                f"{check['result']} -> {check['action']}"
            )
    say(f"  raw lots: {', '.join(found['raw_lots'])}")


def _print_forward(found: dict[str, Any], say: Callable[[str], object]) -> None:
    say(
        f"lot {found['lot']} went into {len(found['batches'])} batch(es): "
        f"{', '.join(found['batches'])}"
    )
    if found["scrapped_batches"]:
        say(f"  scrapped: {', '.join(found['scrapped_batches'])}")
    say(f"  finished lots ({len(found['finished_lots'])}):")
    for lot in found["finished"]:
        say(f"    {lot['lot']} {lot['recipe']} {lot['quantity']} kg")
    say(f"  shipments ({len({s['shipment_id'] for s in found['shipments']})}):")
    for row in found["shipments"]:
        say(
            f"    {row['shipment_id']} to {row['destination']}: {row['lot']} "
            f"{row['quantity']} {row['unit']}"
        )


def _answer(trace: Traceability, args: argparse.Namespace) -> str:
    """The query's answer as text (JSON with ``--json``; recall is always CSV)."""
    if args.query == "recall":
        return trace.recall_csv(args.lot)
    if args.query == "backward":
        found: Any = trace.backward(args.lot)
        show = _print_backward
    elif args.query == "forward":
        found = trace.forward(args.lot)
        show = _print_forward
    else:
        found = trace.mass_balance(args.batch, args.tolerance)
        show = _print_balance
    if args.json:
        return json.dumps(found, indent=2) + "\n"
    lines: list[str] = []
    show(found, lines.append)
    return "".join(line + "\n" for line in lines)


def _print_balance(rows: list[dict[str, Any]], say: Callable[[str], object]) -> None:
    for row in rows:
        say(
            f"{row['batch_id']} {row['recipe']:5} in {row['raw_in_kg']:9.3f} kg  "
            f"out {row['out_kg']:9.3f} kg  declared loss {row['declared_loss_kg']:8.3f} kg  "
            f"unexplained {row['unexplained_kg']:8.3f} kg  {row['status']}"
        )


def trace_main(argv: Sequence[str]) -> int:
    parser = build_trace_parser()
    args = parser.parse_args(argv)
    if not Path(args.db).exists():
        parser.error(f"no database at {args.db}: run the data center first, or give --db PATH")
    with Traceability(args.db) as trace:
        try:
            text = _answer(trace, args)
        except UnknownLot as error:
            print(f"trace: {error}", file=sys.stderr)
            return 1
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["trace"]:
        return trace_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = broker_settings(parser, args)
    setup_logging(f"%(asctime)s %(levelname)s {args.client_id}: %(message)s", args.log_level)
    logging.getLogger("sim.datacenter").debug("arguments: %s", args)
    try:
        store = Store(args.db, settings.topic_root, durable=args.durable)
    except Exception as error:  # sqlite3.Error, OSError: an unusable --db
        parser.error(f"cannot open the database {args.db}: {error}")
    return DataCenter(
        settings,
        store,
        client_id=args.client_id,
        session_expiry=args.session_expiry,
        batch_size=args.batch_size,
        share=args.share,
    ).run()


if __name__ == "__main__":
    sys.exit(main())

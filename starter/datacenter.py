"""Your data center (lesson 07): it stores every record of the chocolate line, and answers recalls.

The lab starts it like this, waits for ``ready <client id>``, and may kill it (SIGKILL) and
start it again on the same database::

    python datacenter.py --db /tmp/x/plant.sqlite --client-id datacenter-1a2b

and asks it a recall question like this (it writes the answer to ``--output`` and exits 0)::

    python datacenter.py trace --db /tmp/x/plant.sqlite --output answer.json forward LOT-0042

What is left is yours: look for TODO. The whole contract is in docs/chocolate.md, "Your line
and data center".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
SCHEMA = """
CREATE TABLE IF NOT EXISTS mqtt_messages (
    topic TEXT NOT NULL, payload TEXT NOT NULL, qos INTEGER NOT NULL,
    retain INTEGER NOT NULL DEFAULT 0, received_at REAL
);
CREATE TABLE IF NOT EXISTS dead_letters (topic TEXT NOT NULL, payload TEXT, reason TEXT NOT NULL);
"""


def store(args: argparse.Namespace) -> int:
    root = os.environ.get("VF_TOPIC_ROOT", "factory")
    database = sqlite3.connect(args.db, check_same_thread=False)
    database.executescript(SCHEMA)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    # TODO: a persistent session (clean start off, a session expiry), so that QoS 1 records
    # sent while the data center is down are queued for it.
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=PROTOCOLS[os.environ.get("VF_MQTT_PROTOCOL", "5")],
    )
    try:
        client.connect(
            os.environ.get("VF_BROKER_HOST", "localhost"),
            int(os.environ.get("VF_BROKER_PORT", "1884")),
        )
    except OSError as error:
        print(f"datacenter: cannot reach the broker: {error}", flush=True)
        return 1
    client.loop_start()
    # TODO: subscribe to every line under f"{root}/..." at QoS 1; in on_message, validate the
    # payload, insert it into mqtt_messages (or dead_letters with the reason), commit, and
    # only then acknowledge (paho's manual_ack); store a redelivered record only once.
    print(f"datacenter: connected; the lines publish under {root}/", flush=True)
    print(f"ready {args.client_id}", flush=True)  # exactly this line: the lab waits for it
    stop.wait()
    client.disconnect()
    client.loop_stop()
    database.close()
    return 0


def trace(args: argparse.Namespace) -> int:
    # TODO: follow the batch records in the database from lot args.lot forward to every
    # finished lot made (directly or not) from it.
    finished_lots: list[str] = []
    with open(args.output, "w") as answer:
        json.dump({"lot": args.lot, "finished_lots": finished_lots}, answer)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    query = commands.add_parser("trace", help="answer a recall question")
    query.add_argument("--db", required=True)
    query.add_argument("--output", required=True)
    query.add_argument("direction", choices=("forward",))
    query.add_argument("lot")
    parser.add_argument("--db")
    parser.add_argument("--client-id")
    args = parser.parse_args()
    if args.command == "trace":
        return trace(args)
    if not args.db or not args.client_id:
        parser.error("--db and --client-id are needed to run the data center")
    return store(args)


if __name__ == "__main__":
    sys.exit(main())

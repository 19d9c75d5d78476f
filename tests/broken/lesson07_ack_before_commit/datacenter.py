"""BROKEN ON PURPOSE (lesson 07): acknowledges a message when it arrives, commits later.

The naive data center: paho's default acknowledgement (PUBACK as soon as
``on_message`` returns) and a commit once a second for speed. Killed between
the two, the records it acknowledged but had not committed are lost for good:
the broker has forgotten them. Lesson 07's kill experiment must catch it.
"""

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from sim.connection import BrokerSettings, connect, make_client
from sim.datacenter.storage import Incoming, Store
from sim.runtime import StopSignals, print_ready


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--client-id", default="datacenter")
    args = parser.parse_args()
    settings = BrokerSettings.from_env()
    store = Store(args.db, settings.topic_root)
    pending: list[Incoming] = []
    lock = threading.Lock()
    subscribed = threading.Event()
    client = make_client(args.client_id, settings, clean_start=False, session_expiry=3600)

    def on_message(c, userdata, msg):  # paho sends the PUBACK right after this returns
        with lock:
            pending.append(
                Incoming(msg.topic, bytes(msg.payload), msg.qos, bool(msg.retain), time.time())
            )

    def on_connect(c, userdata, flags, reason, properties):
        c.subscribe(f"{settings.topic_root}/+/+/+/+/+", qos=1)

    client.on_message = on_message
    client.on_connect = on_connect
    client.on_subscribe = lambda *a: subscribed.set()
    with StopSignals() as stop:
        connect(client, settings)
        subscribed.wait(10)
        print_ready(args.client_id)
        while not stop.wait(1.0):  # commit once a second: fast, and wrong
            with lock:
                batch = list(pending)
                pending.clear()
            if batch:
                store.ingest(batch)
        client.disconnect()
        client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

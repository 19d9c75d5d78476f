"""Your factory controller: it watches alarms and sends commands.

The lab starts it like this and waits for its line ``ready <client id>``::

    python controller.py --client-id controller-7d1e --session clean [--rule press/temperature=conveyor]

and stops it with SIGTERM. What is left is yours: look for TODO.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--session", choices=("clean", "persistent"), default="clean")
    parser.add_argument("--rule", action="append", default=[], help="SOURCE/SENSOR=TARGET")
    args = parser.parse_args()
    root = os.environ.get("VF_TOPIC_ROOT", "factory")
    host = os.environ.get("VF_BROKER_HOST", "localhost")
    port = int(os.environ.get("VF_BROKER_PORT", "1884"))
    protocol = PROTOCOLS[os.environ.get("VF_MQTT_PROTOCOL", "5")]

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    # TODO (lesson 05): a persistent session keeps the alarms raised while we were away.
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=protocol)
    # Lesson 08: under TLS the lab sets VF_TLS_CA (the factory's CA) and gives this machine its
    # own certificate and key in VF_TLS_CERT / VF_TLS_KEY (its CN is the machine's identity).
    ca = os.environ.get("VF_TLS_CA")
    if ca:
        # TODO (lesson 08): present this machine's certificate too (certfile=, keyfile=), or a
        # mutual-TLS broker refuses us in the handshake. Never switch verification off.
        client.tls_set(ca_certs=ca)
    try:
        client.connect(host, port, keepalive=30)
    except OSError as error:
        print(f"controller: cannot reach the broker at {host}:{port}: {error}", flush=True)
        return 1
    client.loop_start()
    # TODO (lessons 02, 05): subscribe to every alarm under f"{root}/alarms/..." at QoS 1
    # (client.subscribe(...), again in on_connect after a reconnect), and
    # when an alarm is raised send a command to <root>/commands/<publisher>/<device_id>, where
    # <publisher> is your client id (args.client_id): the broker's ACL lets you write there.
    print(f"controller: connected; alarms arrive under {root}/alarms/", flush=True)
    print(f"ready {args.client_id}", flush=True)  # exactly this line: the lab waits for it
    stop.wait()
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Your Prometheus exporter (lesson 11): the factory's MQTT traffic as metrics.

The lab starts it like this and waits for its line ``ready <client id>``::

    python exporter.py --metrics-port 9108 --client-id exporter-7d1e

then scrapes http://127.0.0.1:9108/metrics and stops it with SIGTERM. The metrics and their
labels are in the lab's docs/observability.md. What is left is yours: look for TODO.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import CollectorRegistry, Gauge, start_http_server

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--client-id", required=True)
    args = parser.parse_args()
    root = os.environ.get("VF_TOPIC_ROOT", "factory")
    host = os.environ.get("VF_BROKER_HOST", "localhost")
    port = int(os.environ.get("VF_BROKER_PORT", "1884"))
    protocol = PROTOCOLS[os.environ.get("VF_MQTT_PROTOCOL", "5")]

    registry = CollectorRegistry()
    online = Gauge(
        "factory_device_online", "1 while the device is online", ["device"], registry=registry
    )
    # TODO: factory_device_state, factory_telemetry_value, factory_alarms_raised_total (count
    # each alarm once: QoS 1 may deliver it twice), factory_messages_total, mqtt_broker_*.
    start_http_server(args.metrics_port, addr="127.0.0.1", registry=registry)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=protocol)

    def on_message(client, userdata, message) -> None:
        # TODO: set online from <root>/status/<device> (offline too: the Last Will), such as
        # online.labels(device=...).set(1), and the rest.
        print(f"exporter: {message.topic} under {root}/ (not counted yet)", flush=True)

    client.on_message = on_message
    try:
        client.connect(host, port, keepalive=30)
    except OSError as error:
        print(f"exporter: cannot reach the broker at {host}:{port}: {error}", flush=True)
        return 1
    client.loop_start()
    # TODO: subscribe to f"{root}/#" and to "$SYS/broker/#" (`#` never matches $SYS topics).
    print(f"exporter: serving {len(list(online.collect()))} metric(s) so far", flush=True)
    print(f"ready {args.client_id}", flush=True)  # exactly this line: the lab waits for it
    stop.wait()
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

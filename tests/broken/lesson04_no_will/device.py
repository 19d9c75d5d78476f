"""A student's device for lesson 04 — with one mistake: it registers no Last Will.

It does everything else right: online and state retained at QoS 1, telemetry at
QoS 0, offline published before a clean DISCONNECT on SIGTERM. But a crash, a
SIGKILL or a hang leaves its retained ``online`` on the broker forever.
"""

import argparse
import json
import os
import signal
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

parser = argparse.ArgumentParser()
parser.add_argument("--kind", required=True)
parser.add_argument("--device-id", required=True)
parser.add_argument("--client-id", required=True)
parser.add_argument("--crash-after", type=float)
parser.add_argument("--keepalive", type=int, default=60)
args = parser.parse_args()

root = os.environ.get("VF_TOPIC_ROOT", "factory")
version = mqtt.MQTTv5 if os.environ.get("VF_MQTT_PROTOCOL", "5") == "5" else mqtt.MQTTv311
status_topic = f"{root}/status/{args.device_id}"


def status(value: str, reason: str) -> str:
    return json.dumps(
        {"ts": time.time(), "device_id": args.device_id, "status": value, "reason": reason}
    )


stop = threading.Event()
signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())

client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=version)
connected = threading.Event()
client.on_connect = lambda *a: connected.set()
client.connect(
    os.environ.get("VF_BROKER_HOST", "localhost"),
    int(os.environ.get("VF_BROKER_PORT", "1884")),
    keepalive=args.keepalive,
)
client.loop_start()
connected.wait(10)
client.publish(status_topic, status("online", "connected"), qos=1, retain=True).wait_for_publish(5)
state = {
    "ts": time.time(),
    "device_id": args.device_id,
    "kind": args.kind,
    "state": "running",
    "setpoints": {},
    "counters": {"produced": 0, "alarms_raised": 0, "commands_accepted": 0, "commands_rejected": 0},
}
client.publish(f"{root}/state/{args.device_id}", json.dumps(state), qos=1, retain=True)

started = time.monotonic()
seq = 0
while not stop.wait(0.2):
    if args.crash_after is not None and time.monotonic() - started >= args.crash_after:
        os._exit(3)  # a crash: no goodbye, no DISCONNECT
    reading = {
        "ts": time.time(),
        "device_id": args.device_id,
        "sensor": "temperature",
        "value": 20.0,
        "unit": "C",
        "seq": seq,
    }
    client.publish(f"{root}/telemetry/{args.device_id}/temperature", json.dumps(reading), qos=0)
    seq += 1

client.publish(status_topic, status("offline", "shutdown"), qos=1, retain=True).wait_for_publish(5)
client.disconnect()
client.loop_stop()

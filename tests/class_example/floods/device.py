"""A device that floods: online as it should be, then telemetry and output without pause.

The grader's CPU and file-size limits end it; its experiments fail, the class goes on.
"""

import argparse
import json
import os
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

parser = argparse.ArgumentParser()
parser.add_argument("--device-id", required=True)
parser.add_argument("--client-id", required=True)
args = parser.parse_args()
root = os.environ["VF_TOPIC_ROOT"]
protocol = mqtt.MQTTv5 if os.environ.get("VF_MQTT_PROTOCOL", "5") == "5" else mqtt.MQTTv311
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=protocol)
client.connect(os.environ["VF_BROKER_HOST"], int(os.environ["VF_BROKER_PORT"]))
client.loop_start()
online = {"ts": time.time(), "device_id": args.device_id, "status": "online", "reason": "connected"}
client.publish(f"{root}/status/{args.device_id}", json.dumps(online), qos=1, retain=True)
topic = f"{root}/telemetry/{args.device_id}/temperature"
n = 0
while True:  # no pause, no end
    n += 1
    reading = {"ts": time.time(), "device_id": args.device_id, "sensor": "temperature", "value": n}
    client.publish(topic, json.dumps(reading))
    print(f"published reading {n} on {topic}")

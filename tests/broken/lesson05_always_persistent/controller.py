"""A student's controller for lesson 05 — with one mistake: it always keeps its session.

It keeps the client id it is given and subscribes to the alarms at QoS 1, but it
asks for a persistent session whatever ``--session`` says: started as a clean
controller, it still acts on stale alarms the broker queued while it was stopped.
"""

import argparse
import json
import os
import signal
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

parser = argparse.ArgumentParser()
parser.add_argument("--client-id", required=True)
parser.add_argument("--session", choices=["clean", "persistent"], default="clean")
parser.add_argument("--rule", default="press/temperature=conveyor")
args = parser.parse_args()

root = os.environ.get("VF_TOPIC_ROOT", "factory")
v5 = os.environ.get("VF_MQTT_PROTOCOL", "5") == "5"
source, _, target = args.rule.partition("=")
client_id = args.client_id

# The mistake: --session is read, and then ignored (always persistent).
if v5:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
else:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=False,
    )
subscribed = threading.Event()


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe(f"{root}/alarms/#", qos=1)


def on_message(client, userdata, message):
    device, sensor = message.topic.split("/")[-2:]
    if f"{device}/{sensor}" != source:
        return
    state = json.loads(message.payload)["state"]
    command = "stop" if state == "raised" else "start"
    payload = {
        "command": command,
        "reason": f"{source} alarm {state}",
        "ts": time.time(),
        "issued_by": client_id,
    }
    client.publish(f"{root}/commands/{client_id}/{target}", json.dumps(payload), qos=1)


client.on_connect = on_connect
client.on_subscribe = lambda *a: subscribed.set()
client.on_message = on_message
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
connect_args = {}
if v5:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600
    connect_args = {"clean_start": False, "properties": properties}
client.connect(
    os.environ.get("VF_BROKER_HOST", "localhost"),
    int(os.environ.get("VF_BROKER_PORT", "1884")),
    **connect_args,
)
client.loop_start()
subscribed.wait(10)
print(f"ready {args.client_id}", flush=True)
stop.wait()
client.disconnect()
client.loop_stop()

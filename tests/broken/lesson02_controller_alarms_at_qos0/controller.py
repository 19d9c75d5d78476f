"""A student's factory controller (paho-mqtt 2.x) — with the mistake lesson 02 must catch.

THE MISTAKE: it subscribes to the alarms at QoS 0 ("alarms are small, QoS 0 is
faster"). Live, it works. But the broker delivers at the lower of publish and
subscription QoS, and queues nothing at QoS 0 for an offline client: the alarms
raised while the controller restarts are lost, although its session is persistent.

    python controller.py --client-id controller-1 --session persistent --rule press/temperature=conveyor

Broker settings come from VF_BROKER_HOST, VF_BROKER_PORT, VF_MQTT_PROTOCOL and
VF_TOPIC_ROOT, as ``sim/connection.py`` documents.
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
parser.add_argument("--session", choices=("clean", "persistent"), default="clean")
parser.add_argument("--rule", default="press/temperature=conveyor")
args = parser.parse_args()

root = os.environ.get("VF_TOPIC_ROOT", "factory")
v5 = os.environ.get("VF_MQTT_PROTOCOL", "5") == "5"
persistent = args.session == "persistent"
source, target = args.rule.split("=")
stop_event = threading.Event()


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe(f"{root}/alarms/#", qos=0)  # <-- the mistake


def on_subscribe(client, userdata, mid, reason_codes, properties):
    print(f"ready {args.client_id}", flush=True)


def on_message(client, userdata, msg):
    if msg.topic != f"{root}/alarms/{source}":
        return
    alarm = json.loads(msg.payload)
    command = "stop" if alarm["state"] == "raised" else "start"
    payload = {"command": command, "reason": f"{source} alarm {alarm['state']}", "ts": time.time()}
    client.publish(f"{root}/commands/{args.client_id}/{target}", json.dumps(payload), qos=1)


if v5:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=mqtt.MQTTv5
    )
else:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        protocol=mqtt.MQTTv311,
        clean_session=not persistent,
    )
client.on_connect = on_connect
client.on_subscribe = on_subscribe
client.on_message = on_message
signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
host, port = os.environ.get("VF_BROKER_HOST", "localhost"), int(os.environ["VF_BROKER_PORT"])
if v5:
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600 if persistent else 0
    client.connect(host, port, clean_start=not persistent, properties=properties)
else:
    client.connect(host, port)
client.loop_start()
stop_event.wait()
client.disconnect()
client.loop_stop()

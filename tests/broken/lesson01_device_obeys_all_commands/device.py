"""A student's factory device (paho-mqtt 2.x) — with the mistake lesson 01 must catch.

THE MISTAKE: it subscribes to ``<root>/commands/#`` and obeys every command it
receives, so a ``stop`` sent to the conveyor also stops the press. (Everything
else follows the seed: the topic tree, QoS, retained state and status, a will.)

    python device.py --device press --device-id press --client-id press-1 [--anomaly]

Broker settings come from VF_BROKER_HOST, VF_BROKER_PORT, VF_MQTT_PROTOCOL and
VF_TOPIC_ROOT, as ``sim/connection.py`` documents.
"""

import argparse
import json
import os
import random
import signal
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

# sensor: (unit, normal value, alarm limit above)
SENSORS = {
    "press": {"temperature": ("C", 65.0, 90.0), "pressure": ("bar", 150.0, 200.0)},
    "conveyor": {"speed": ("m/s", 1.2, 2.0), "motor_current": ("A", 8.0, 12.0)},
    "robot_arm": {"joint_temp": ("C", 45.0, 70.0), "cycle_time": ("s", 4.0, 8.0)},
    "oven": {"temperature": ("C", 180.0, 220.0)},
    "packer": {"rate": ("packs/min", 60.0, 100.0)},
    "environment": {"temperature": ("C", 22.0, 35.0), "humidity": ("%", 45.0, 80.0)},
}

parser = argparse.ArgumentParser()
parser.add_argument("--device", required=True)
parser.add_argument("--device-id", required=True)
parser.add_argument("--client-id", required=True)
parser.add_argument("--anomaly", action="store_true")
args = parser.parse_args()

root = os.environ.get("VF_TOPIC_ROOT", "factory")
v5 = os.environ.get("VF_MQTT_PROTOCOL", "5") == "5"
me = args.device_id
sensors = SENSORS[args.device]
setpoints = {name: normal for name, (_unit, normal, _limit) in sensors.items()}
state = {"state": "running", "accepted": 0, "alarms": 0}
lock = threading.Lock()
stop_event = threading.Event()


def status(text):
    return json.dumps({"ts": time.time(), "device_id": me, "status": text})


def publish_state(client):
    payload = {
        "ts": time.time(),
        "device_id": me,
        "kind": args.device,
        "state": state["state"],
        "setpoints": setpoints,
        "counters": {
            "produced": 0,
            "alarms_raised": state["alarms"],
            "commands_accepted": state["accepted"],
            "commands_rejected": 0,
        },
    }
    client.publish(f"{root}/state/{me}", json.dumps(payload), qos=1, retain=True)


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe(f"{root}/commands/#", qos=1)  # <-- every machine's commands
    client.publish(f"{root}/status/{me}", status("online"), qos=1, retain=True)
    publish_state(client)


def on_message(client, userdata, msg):
    try:
        command = json.loads(msg.payload)
    except ValueError:
        return
    with lock:
        if command.get("command") == "stop":
            state["state"] = "stopped"
        elif command.get("command") == "start":
            state["state"] = "running"
        elif command.get("command") == "set":
            setpoints[command["setpoint"]] = command["value"]
        state["accepted"] += 1
        publish_state(client)


kwargs = {} if v5 else {"clean_session": True}
client = mqtt.Client(
    CallbackAPIVersion.VERSION2,
    client_id=args.client_id,
    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    **kwargs,
)
client.will_set(f"{root}/status/{me}", status("offline"), qos=1, retain=True)
client.on_connect = on_connect
client.on_message = on_message
signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
client.connect(os.environ.get("VF_BROKER_HOST", "localhost"), int(os.environ["VF_BROKER_PORT"]))
client.loop_start()

seq = 0
while not stop_event.wait(0.1):
    for name, (unit, _normal, _limit) in sensors.items():
        value = setpoints[name] + random.uniform(-0.5, 0.5)
        reading = {"ts": time.time(), "device_id": me, "sensor": name, "value": value}
        reading.update({"unit": unit, "seq": seq})
        client.publish(f"{root}/telemetry/{me}/{name}", json.dumps(reading), qos=0)
    if args.anomaly and seq in (3, 13):
        name, (unit, normal, limit) = next(iter(sensors.items()))
        raised = seq == 3
        value = limit + 5 if raised else normal
        alarm = {
            "ts": time.time(),
            "device_id": me,
            "sensor": name,
            "state": "raised" if raised else "cleared",
            "value": value,
            "low": None,
            "high": limit,
            "severity": "warning",
            "message": f"{name} {value} {unit}",
        }
        state["alarms"] += raised
        client.publish(f"{root}/alarms/{me}/{name}", json.dumps(alarm), qos=1)
    seq += 1

client.publish(f"{root}/status/{me}", status("offline"), qos=1, retain=True).wait_for_publish(5)
client.disconnect()
client.loop_stop()

"""A student's factory device (paho-mqtt 2.x), with the mistakes students make, one at a time.

Without ``--mistake`` it follows the seed: telemetry on ``<root>/telemetry/<device>/<sensor>``
at QoS 0, alarms at QoS 1, state and status retained at QoS 1, a retained QoS 1 Last Will
registered before connecting, only its own commands (``<root>/commands/+/<device>``), the
keepalive it is given, and a goodbye (``offline``/``shutdown``, then DISCONNECT) on SIGTERM.
Each ``--mistake NAME`` switches on one common mistake, so that a broken solution under
``tests/broken/lessonNN_*/`` can prove that the lesson teaching the concept catches it:

======================  ===============================================  ==========================
``--mistake``           what it does wrong                               caught by (lesson:
                                                                         experiment)
======================  ===============================================  ==========================
``obeys-all-commands``  subscribes to ``<root>/commands/#`` and obeys    01: a_stop_for_the_conveyor
                        every machine's commands: a stop for the         _does_not_stop_the_press,
                        conveyor stops the press too                     a_device_subscribes_only
                                                                         _to_its_own_commands
``levels-swapped``      telemetry on ``<root>/telemetry/<sensor>/        01: devices_publish_on_the
                        <device>``: filters built on the seed's tree     _seed_topic_tree, each
                        find nothing                                     _filter_gets_exactly_...
``capital-sensor``      telemetry on ``<root>/telemetry/<device>/        01: devices_publish_on_the
                        Temperature``: topics are case-sensitive         _seed_topic_tree (lint-topics:
                                                                         characters)
``telemetry-qos1``      telemetry at QoS 1: every reading waits for a    02: device_sends_telemetry
                        PUBACK and is queued for offline subscribers     _at_qos0
``no-will``             registers no Last Will: a crash leaves the       04: killed_device_is
                        retained ``online`` on the broker                _declared_offline_by_its
                                                                         _retained_qos1_will
``will-after-online``   calls ``will_set()`` once connected: the will    04: killed_device_is
                        travels in CONNECT, so this connection has none  _declared_offline_...
``will-not-retained``   its will has ``retain=False``: a dashboard       04: killed_device_is
                        opened after a crash still sees ``online``       _declared_offline_...,
                                                                         device_crashing_by_itself
                                                                         _shows_offline_to_a_late
                                                                         _dashboard
``fixed-keepalive``     connects with paho's usual keepalive (60 s),     04: paused_device_is
                        not ``--keepalive``: a hung device is declared   _declared_offline_within
                        dead only after 90 s                             _its_keepalive_budget
``no-goodbye``          no SIGTERM handler: a planned stop dies like a   04: device_stopped
                        crash and the broker sends the will for it       _gracefully_publishes
                                                                         _offline_itself
``exits-on-bad-input``  trusts every command: an unknown command or a    01: a_device_rejects_a_bad
                        payload that is not JSON raises, and the device  _command_and_keeps_running
                        exits (a command is input from the network)
``subscribes-once``     subscribes once after ``connect()``, not in      05: a_device_hears_its
                        ``on_connect``: after its connection drops it    _commands_again_after_its
                        reconnects (clean session) with no subscription  _connection_drops
                        and never hears another command
======================  ===============================================  ==========================

    python device.py --kind press --device-id press --client-id press-1 [--anomaly]
        [--crash-after SECONDS] [--keepalive SECONDS] [--mistake NAME ...]

Broker settings come from VF_BROKER_HOST, VF_BROKER_PORT, VF_MQTT_PROTOCOL, VF_TOPIC_ROOT
(and VF_USERNAME / VF_PASSWORD), as ``sim/connection.py`` documents. Like a student's program,
it imports neither ``sim`` nor ``mqtt_factory_lab``: paho-mqtt only.

With no mistake it passes every solution experiment of lessons 01, 02 and 04: the manifest
``solution.toml`` beside it runs it so (``--solution tests/broken/student``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MISTAKES = (
    "obeys-all-commands",
    "levels-swapped",
    "capital-sensor",
    "telemetry-qos1",
    "no-will",
    "will-after-online",
    "will-not-retained",
    "fixed-keepalive",
    "no-goodbye",
    "exits-on-bad-input",
    "subscribes-once",
)

# sensor: (unit, normal value, alarm limit above)
SENSORS = {
    "press": {"temperature": ("C", 65.0, 90.0), "pressure": ("bar", 150.0, 200.0)},
    "conveyor": {"speed": ("m/s", 1.2, 2.0), "motor_current": ("A", 8.0, 12.0)},
    "robot_arm": {"joint_temp": ("C", 45.0, 70.0), "cycle_time": ("s", 4.0, 8.0)},
    "oven": {"temperature": ("C", 180.0, 220.0)},
    "packer": {"rate": ("packs/min", 60.0, 100.0)},
    "environment": {"temperature": ("C", 22.0, 35.0), "humidity": ("%", 45.0, 80.0)},
}

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--kind", required=True, choices=sorted(SENSORS))
parser.add_argument("--device-id", required=True)
parser.add_argument("--client-id", required=True)
parser.add_argument("--anomaly", action="store_true", help="raise an alarm, then clear it")
parser.add_argument("--crash-after", type=float, help="die (no goodbye) after SECONDS")
parser.add_argument("--keepalive", type=int, default=60)
parser.add_argument("--mistake", action="append", choices=MISTAKES, default=[])
args = parser.parse_args()
mistakes = set(args.mistake)

root = os.environ.get("VF_TOPIC_ROOT", "factory")
v5 = os.environ.get("VF_MQTT_PROTOCOL", "5") == "5"
me = args.device_id
sensors = SENSORS[args.kind]
setpoints = {name: normal for name, (_unit, normal, _limit) in sensors.items()}
state = {"state": "running", "accepted": 0, "alarms": 0}
lock = threading.Lock()
connected = threading.Event()
stop_event = threading.Event()
status_topic = f"{root}/status/{me}"


def status(value: str, reason: str) -> str:
    return json.dumps({"ts": time.time(), "device_id": me, "status": value, "reason": reason})


def publish_state(client: mqtt.Client) -> None:
    payload = {
        "ts": time.time(),
        "device_id": me,
        "kind": args.kind,
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


def subscribe_commands(client: mqtt.Client) -> None:
    if "obeys-all-commands" in mistakes:
        client.subscribe(f"{root}/commands/#", qos=1)  # every machine's commands
    else:
        client.subscribe(f"{root}/commands/+/{me}", qos=1)


def on_connect(client, userdata, flags, reason_code, properties):
    if "subscribes-once" not in mistakes:  # on every connection: a clean session has none
        subscribe_commands(client)
    client.publish(status_topic, status("online", "connected"), qos=1, retain=True)
    publish_state(client)
    connected.set()


def on_message(client, userdata, msg):
    if "exits-on-bad-input" in mistakes:
        try:
            command = json.loads(msg.payload)  # "the controller only sends valid JSON"
            if command["command"] not in ("start", "stop", "reset", "set"):
                raise ValueError(f"unknown command {command['command']!r}")
        except Exception as error:  # the mistake: give up on bad input
            print(f"{me}: cannot handle the command on {msg.topic}: {error!r}", flush=True)
            os._exit(1)
    try:
        command = json.loads(msg.payload)
    except ValueError:
        return
    if not isinstance(command, dict):
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


def publish_readings(client: mqtt.Client, seq: int) -> None:
    for name, (unit, _normal, _limit) in sensors.items():
        value = setpoints[name] + random.uniform(-0.5, 0.5)
        if "capital-sensor" in mistakes:
            name = name.capitalize()  # "Temperature" reads better, it thinks
        reading = {"ts": time.time(), "device_id": me, "sensor": name, "value": value}
        reading.update({"unit": unit, "seq": seq})
        if "levels-swapped" in mistakes:
            topic = f"{root}/telemetry/{name}/{me}"  # sensor before device
        else:
            topic = f"{root}/telemetry/{me}/{name}"
        qos = 1 if "telemetry-qos1" in mistakes else 0  # "so that no reading is lost"
        client.publish(topic, json.dumps(reading), qos=qos)


def publish_alarm(client: mqtt.Client, raised: bool) -> None:
    """The first sensor goes over its limit (raised), then back to normal (cleared)."""
    name, (unit, normal, limit) = next(iter(sensors.items()))
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


kwargs = {} if v5 else {"clean_session": True}
client = mqtt.Client(
    CallbackAPIVersion.VERSION2,
    client_id=args.client_id,
    protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    **kwargs,
)
if os.environ.get("VF_USERNAME"):
    client.username_pw_set(os.environ["VF_USERNAME"], os.environ.get("VF_PASSWORD"))
if not mistakes & {"no-will", "will-after-online"}:
    retain_will = "will-not-retained" not in mistakes
    client.will_set(status_topic, status("offline", "last-will"), qos=1, retain=retain_will)
client.on_connect = on_connect
client.on_message = on_message
if "no-goodbye" not in mistakes:  # otherwise Python's default: SIGTERM ends it on the spot
    signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
keepalive = 60 if "fixed-keepalive" in mistakes else args.keepalive  # 60: paho's default
client.connect(
    os.environ.get("VF_BROKER_HOST", "localhost"),
    int(os.environ.get("VF_BROKER_PORT", "1884")),
    keepalive=keepalive,
)
client.loop_start()
connected.wait(10)
if "subscribes-once" in mistakes:  # once, here: a reconnection does not come back this way
    subscribe_commands(client)
if "will-after-online" in mistakes:  # too late: CONNECT has gone, this connection has no will
    client.will_set(status_topic, status("offline", "last-will"), qos=1, retain=True)

started = time.monotonic()
seq = 0
while not stop_event.wait(0.1):
    if args.crash_after is not None and time.monotonic() - started >= args.crash_after:
        os._exit(3)  # a crash: no goodbye, no DISCONNECT
    publish_readings(client, seq)
    if args.anomaly and seq in (3, 13):
        publish_alarm(client, raised=seq == 3)
    seq += 1

client.publish(status_topic, status("offline", "shutdown"), qos=1, retain=True).wait_for_publish(5)
client.disconnect()
client.loop_stop()

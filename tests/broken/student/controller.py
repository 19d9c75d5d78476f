"""A student's factory controller (paho-mqtt 2.x), with the mistakes students make, one at a time.

It subscribes to ``<root>/alarms/#`` and applies one rule ``SOURCE=TARGET`` (such as
``press/temperature=conveyor``): an alarm raised on ``<root>/alarms/SOURCE`` sends ``stop`` to
TARGET, a cleared one ``start``, on ``<root>/commands/<publisher>/TARGET`` at QoS 1 (the
publisher level is its client id). Without ``--mistake`` it follows the seed: alarms
subscribed at QoS 1, the client id it is given, and the session ``--session`` asks for
(``persistent``: clean start off and a session expiry, so the broker queues the alarms raised
while it is stopped; ``clean``: a fresh session each start). Each ``--mistake NAME`` switches
on one common mistake, so that a broken solution under ``tests/broken/lessonNN_*/`` can prove
that the lesson teaching the concept catches it:

=====================  ===============================================  ===========================
``--mistake``          what it does wrong                               caught by (lesson:
                                                                        experiment)
=====================  ===============================================  ===========================
``alarms-qos0``        subscribes to the alarms at QoS 0 ("alarms are   02: controller_gets_the
                       small"): delivery is at the lower QoS, and       _alarms_raised_while_it
                       nothing is queued at QoS 0 for an offline        _was_away
                       client, persistent session or not
``always-clean``       ignores ``--session persistent``: every restart  05: persistent_controller
                       throws away the alarms queued while it was       _acts_on_alarms_raised
                       stopped                                          _while_it_was_stopped
``always-persistent``  ignores ``--session clean``: a clean controller  05: clean_session
                       still acts on stale alarms queued while it was   _controller_does_not_get
                       stopped                                          _alarms_raised_while_it
                                                                        _was_stopped
``random-client-id``   makes up a new client id at each start ("to      05: persistent_controller
                       avoid clashes"): each restart opens a new,       _acts_on_alarms_raised
                       empty session                                    _while_it_was_stopped
``commands-retained``  publishes its commands retained ("so a device    03: controller_does_not
                       that is offline gets them"): a device that       _retain_its_commands
                       starts hours later obeys a stale ``stop``
=====================  ===============================================  ===========================

    python controller.py --client-id controller-1 --session persistent
        [--rule press/temperature=conveyor] [--mistake NAME ...]

It prints ``ready <client id>`` once its subscription is acknowledged. Broker settings come
from VF_BROKER_HOST, VF_BROKER_PORT, VF_MQTT_PROTOCOL, VF_TOPIC_ROOT (and VF_USERNAME /
VF_PASSWORD), as ``sim/connection.py`` documents. Like a student's program, it imports
neither ``sim`` nor ``mqtt_factory_lab``: paho-mqtt only.

With no mistake it passes every solution experiment of lessons 02 and 05: the manifest
``solution.toml`` beside it runs it so (``--solution tests/broken/student``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MISTAKES = (
    "alarms-qos0",
    "always-clean",
    "always-persistent",
    "random-client-id",
    "commands-retained",
)

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--client-id", required=True)
parser.add_argument("--session", choices=("clean", "persistent"), default="clean")
parser.add_argument("--rule", default="press/temperature=conveyor", help="SOURCE=TARGET")
parser.add_argument("--mistake", action="append", choices=MISTAKES, default=[])
args = parser.parse_args()
mistakes = set(args.mistake)

root = os.environ.get("VF_TOPIC_ROOT", "factory")
protocol = mqtt.MQTTv5 if os.environ.get("VF_MQTT_PROTOCOL", "5") == "5" else mqtt.MQTTv311
source, _, target = args.rule.partition("=")
persistent = args.session == "persistent"
if "always-clean" in mistakes:
    persistent = False  # --session is read, then ignored
elif "always-persistent" in mistakes:
    persistent = True
client_id = args.client_id
if "random-client-id" in mistakes:
    client_id = f"controller-{uuid.uuid4().hex[:8]}"
subscribed = threading.Event()


def on_connect(client, userdata, flags, reason_code, properties):
    client.subscribe(f"{root}/alarms/#", qos=0 if "alarms-qos0" in mistakes else 1)


def on_message(client, userdata, msg):
    if msg.topic != f"{root}/alarms/{source}":
        return
    alarm = json.loads(msg.payload)
    command = {
        "command": "stop" if alarm["state"] == "raised" else "start",
        "reason": f"{source} alarm {alarm['state']}",
        "ts": time.time(),
        "issued_by": client_id,
    }
    retain = "commands-retained" in mistakes  # commands are events, never state
    client.publish(
        f"{root}/commands/{client_id}/{target}", json.dumps(command), qos=1, retain=retain
    )


if protocol == mqtt.MQTTv5:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = 3600 if persistent else 0
    session = {"clean_start": not persistent, "properties": properties}
else:  # MQTT 3.1.1: the session is chosen when the client is made
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        clean_session=not persistent,
    )
    session = {}
if os.environ.get("VF_USERNAME"):
    client.username_pw_set(os.environ["VF_USERNAME"], os.environ.get("VF_PASSWORD"))
client.on_connect = on_connect
client.on_subscribe = lambda *_: subscribed.set()
client.on_message = on_message
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
host = os.environ.get("VF_BROKER_HOST", "localhost")
port = int(os.environ.get("VF_BROKER_PORT", "1884"))
client.connect(host, port, **session)
client.loop_start()
if not subscribed.wait(10):
    sys.exit(f"no SUBACK from {host}:{port} within 10 s for {root}/alarms/#")
print(f"ready {args.client_id}", flush=True)
stop.wait()
client.disconnect()
client.loop_stop()

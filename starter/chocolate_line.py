"""Your chocolate line (lesson 07): 16 machines on 8 steps, each its own MQTT client.

The lab starts it like this, waits for ``ready <client id>``, and waits (60 s at most) for it
to exit 0::

    python chocolate_line.py --client-id line-1a2b --seed 1 --batches 4 --time-scale 80000 \
        --run-id 1a2b3c

It already connects every machine with its Last Will, publishes each machine's retained
state, says ready, and goes offline at the end. What is left is yours: look for TODO. The
contract (topics, QoS, recipes, lots, what a complete trace is) is in docs/chocolate.md,
"Your line and data center".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}
SITE, LINE = "tunis-01", "line-a"
MACHINES = {
    "s1_roasting": ["roaster-01", "roaster-02"],
    "s2_grinding": ["grinder-01"],
    "s3_refining": ["refiner-01", "refiner-02"],
    "s4_conching": ["conche-01", "conche-02"],
    "s5_tempering": ["temper-01"],
    "s6_molding": ["molder-01"],
    "s7_cooling": ["cooler-01"],
    "s8_packaging": ["packer-01", "packer-02", "packer-03"],
}


def state(step: str, machine: str, value: str, reason: str | None = None) -> str:
    """A machine state (schemas/chocolate_state.schema.json)."""
    payload = {
        "ts": time.time(),
        "msg_id": f"{machine}-{uuid.uuid4().hex[:12]}",
        "site": SITE,
        "line": LINE,
        "step": step,
        "machine": machine,
        "state": value,
    }
    if reason:
        payload["reason"] = reason
    return json.dumps(payload)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--time-scale", type=float, default=80000.0)
    parser.add_argument("--run-id", default=uuid.uuid4().hex[:6])
    args = parser.parse_args()
    root = os.environ.get("VF_TOPIC_ROOT", "factory")
    host = os.environ.get("VF_BROKER_HOST", "localhost")
    port = int(os.environ.get("VF_BROKER_PORT", "1884"))
    protocol = PROTOCOLS[os.environ.get("VF_MQTT_PROTOCOL", "5")]

    clients: dict[str, tuple[str, mqtt.Client]] = {}
    for step, machines in MACHINES.items():
        for machine in machines:
            topic = f"{root}/{SITE}/{LINE}/{step}/{machine}/state"
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=f"{args.client_id}-{machine}",
                protocol=protocol,
            )
            # The Last Will travels in CONNECT: set it before connecting.
            client.will_set(topic, state(step, machine, "offline", "last-will"), 1, retain=True)
            try:
                client.connect(host, port, keepalive=30)
            except OSError as error:
                print(f"chocolate line: cannot reach {host}:{port}: {error}", flush=True)
                return 1
            client.loop_start()
            client.publish(topic, state(step, machine, "idle"), 1, retain=True).wait_for_publish(5)
            clients[machine] = (step, client)
    print(f"ready {args.client_id}", flush=True)  # exactly this line, alone: the lab waits for it

    # TODO (lesson 07): make args.batches batches, the recipes in turn (dark, milk, white).
    # For each step of a batch's route: state running (QoS 1, retained), a batch event
    # step_started (QoS 1) naming the lots it consumes, telemetry (QoS 0), an alarm raised
    # and cleared now and then, step_completed with the lot it produces, a quality result at
    # the QC points, state idle. After packaging: a shipped event per finished lot.
    # Every payload follows schemas/chocolate_*.schema.json and has its own msg_id.

    for machine, (step, client) in clients.items():
        topic = f"{root}/{SITE}/{LINE}/{step}/{machine}/state"
        info = client.publish(topic, state(step, machine, "offline", "shutdown"), 1, retain=True)
        info.wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

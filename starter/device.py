"""Your factory device: one machine (press, conveyor, robot_arm, oven, packer, environment).

The lab starts it once per experiment, for example::

    python device.py --kind press --device-id press-01 --client-id press-01-3fa2 \
        --seed 1 --rate 10.0

and stops it with SIGTERM. It already connects to the broker the lab gives it and says
"online". What is left is yours: look for TODO. Run a lesson to see what to do next:
each failure names the MQTT rule, the topic and the fix.

Topics (VF_TOPIC_ROOT is the root, "factory" outside the lab)::

    <root>/telemetry/<device_id>/<sensor>   QoS 0, not retained   readings
    <root>/alarms/<device_id>/<sensor>      QoS 1                 raised / cleared
    <root>/state/<device_id>                QoS 1, retained       running / stopped / fault
    <root>/status/<device_id>               QoS 1, retained       online / offline (Last Will)
    <root>/commands/<publisher>/<device_id> you subscribe         start, stop, reset, set

Payloads are JSON; the lab's ``schemas/`` folder has a JSON Schema for each.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

PROTOCOLS = {"5": mqtt.MQTTv5, "3.1.1": mqtt.MQTTv311}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", required=True)
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=1.0, help="telemetry rounds per second")
    parser.add_argument("--anomaly", action="store_true", help="TODO: raise alarms")
    parser.add_argument("--crash-after", type=float, help="TODO: vanish after this many seconds")
    parser.add_argument("--duration", type=float, help="TODO: stop after this many seconds")
    parser.add_argument("--keepalive", type=int, default=30, help="MQTT keepalive, seconds")
    return parser.parse_args()


def status(device_id: str, value: str, reason: str) -> bytes:
    """A status payload (schemas/status.schema.json)."""
    return json.dumps(
        {"ts": time.time(), "device_id": device_id, "status": value, "reason": reason}
    ).encode()


def answer_request(client: mqtt.Client, msg: mqtt.MQTTMessage, device_id: str) -> bool:
    """Lesson 09 (MQTT 5 request/response): answer a request; return whether ``msg`` was one.

    A controller asks for our setpoints by publishing ``{"request": "setpoints"}`` on our
    command topic with two MQTT 5 properties: a Response Topic (where to answer) and
    Correlation Data (a label to send back unchanged, so it can tell its answers apart).
    """
    properties = getattr(msg, "properties", None)
    response_topic = getattr(properties, "ResponseTopic", None)
    if not response_topic:
        return False  # a plain command
    # TODO (lesson 09): publish {"ts", "device_id", "state", "setpoints"}
    # (schemas/setpoints_reply.schema.json) to response_topic at QoS 1, with
    # properties.CorrelationData set to the request's (paho.mqtt.properties.Properties).
    print(
        f"{device_id}: TODO (lesson 09): a request arrived with the Response Topic "
        f"{response_topic}: answer it there, with the request's Correlation Data",
        flush=True,
    )
    return True


def main() -> int:
    args = parse_args()
    root = os.environ.get("VF_TOPIC_ROOT", "factory")
    host = os.environ.get("VF_BROKER_HOST", "localhost")
    port = int(os.environ.get("VF_BROKER_PORT", "1884"))
    protocol = PROTOCOLS[os.environ.get("VF_MQTT_PROTOCOL", "5")]
    status_topic = f"{root}/status/{args.device_id}"

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # the lab stops us with SIGTERM

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=protocol)
    # Lesson 08: under TLS the lab sets VF_TLS_CA (the factory's CA) and gives this machine its
    # own certificate and key in VF_TLS_CERT / VF_TLS_KEY (its CN is the machine's identity).
    ca = os.environ.get("VF_TLS_CA")
    if ca:
        # TODO (lesson 08): present this machine's certificate too (certfile=, keyfile=), or a
        # mutual-TLS broker refuses us in the handshake. Never switch verification off.
        client.tls_set(ca_certs=ca)
    # Every message on a topic we subscribe to arrives here (paho's network thread).
    # TODO: a message that is not a request is a command to obey.
    client.on_message = lambda c, userdata, msg: answer_request(c, msg, args.device_id)
    # TODO (lesson 04): set a Last Will before connecting, so that the broker announces
    # "offline" (reason "last-will") for you when you vanish: client.will_set(...)
    try:
        client.connect(host, port, keepalive=args.keepalive)
    except OSError as error:
        print(f"{args.device_id}: cannot reach the broker at {host}:{port}: {error}", flush=True)
        return 1
    client.loop_start()

    # TODO (lesson 03): a dashboard that opens later must still learn that we are online:
    # which flag makes the broker keep this message? And which QoS does the factory use?
    client.publish(status_topic, status(args.device_id, "online", "connected"), qos=0)
    print(f"{args.device_id}: online", flush=True)

    # TODO: publish the state (retained), telemetry every 1/rate seconds, alarms with
    # --anomaly, and obey commands on <root>/commands/+/<device_id>.
    stop.wait()

    # TODO (lesson 04): a graceful stop says "offline" (reason "shutdown") itself.
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

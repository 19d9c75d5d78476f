"""Run a reference program with one mistake a student could make, to prove a check can fail.

    python tests/broken/mutate.py --retain telemetry,alarms sim.device --device press ...

patches paho-mqtt inside the program, then runs the module as ``__main__``:

``--retain KINDS``      publishes on these topic kinds (the level after the topic root:
                        telemetry, alarms, commands, state, status, events) go out retained
``--no-retain KINDS``   ...go out without the retain flag
``--retain-once KINDS`` ...keep their retain flag only the first time on each topic
``--qos KIND=N``        ...go out at QoS N (repeatable)
``--no-will``           the program connects without its Last Will
``--tls-insecure``      TLS without verifying the broker (``CERT_NONE``, ``tls_insecure_set(True)``)
``--no-client-cert``    TLS without presenting the client certificate (``VF_TLS_CERT`` ignored)
``--strip-property P``  MQTT 5: every publish goes out without the property P (paho's name:
                        UserProperty, CorrelationData, MessageExpiryInterval...; repeatable)
``--no-share``          subscriptions to ``$share/<group>/<filter>`` subscribe to ``<filter>``

Every check of a solution in this project has a test that runs it against such a
variant and expects it to fail (see ``tests/test_mutants.py``); lessons' broken
solutions under ``tests/broken/lessonNN_*`` use the same runner in their manifests.
"""

from __future__ import annotations

import argparse
import os
import runpy
import ssl
import sys
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

#: the lab's folder, so that ``sim`` imports from any working directory (a broken solution's
#: folder is its programs' working directory)
LAB_ROOT = Path(__file__).resolve().parents[2]


def _kinds(text: str) -> set[str]:
    return {kind for kind in text.split(",") if kind}


def main() -> None:
    parser = argparse.ArgumentParser(prog="mutate.py", description=__doc__)
    parser.add_argument("--retain", type=_kinds, default=set(), metavar="KINDS")
    parser.add_argument("--no-retain", type=_kinds, default=set(), metavar="KINDS")
    parser.add_argument("--retain-once", type=_kinds, default=set(), metavar="KINDS")
    parser.add_argument("--qos", action="append", default=[], metavar="KIND=N")
    parser.add_argument("--no-will", action="store_true")
    parser.add_argument("--tls-insecure", action="store_true")
    parser.add_argument("--no-client-cert", action="store_true")
    parser.add_argument("--strip-property", action="append", default=[], metavar="NAME")
    parser.add_argument("--no-share", action="store_true")
    parser.add_argument("module", help="the program to run, such as sim.device")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    options = parser.parse_args()
    qos_by_kind = {kind: int(n) for kind, _, n in (item.partition("=") for item in options.qos)}
    root = os.environ.get("VF_TOPIC_ROOT", "factory")
    publish = mqtt.Client.publish
    published_once: set[str] = set()

    def mutated_publish(
        self: mqtt.Client,
        topic: str,
        payload: Any = None,
        qos: int = 0,
        retain: bool = False,
        properties: Any = None,
    ) -> mqtt.MQTTMessageInfo:
        kind = topic[len(root) + 1 :].split("/")[0] if topic.startswith(root + "/") else ""
        retain = (retain or kind in options.retain) and kind not in options.no_retain
        if kind in options.retain_once:
            retain = retain and topic not in published_once
            published_once.add(topic)
        for name in options.strip_property:
            if properties is not None and hasattr(properties, name):
                delattr(properties, name)
        return publish(self, topic, payload, qos_by_kind.get(kind, qos), retain, properties)

    mqtt.Client.publish = mutated_publish  # type: ignore[method-assign]
    subscribe = mqtt.Client.subscribe

    def unshared(topic: Any) -> Any:
        if isinstance(topic, str) and topic.startswith("$share/"):
            return topic.split("/", 2)[2]
        if isinstance(topic, tuple):
            return (unshared(topic[0]), *topic[1:])
        if isinstance(topic, list):
            return [unshared(item) for item in topic]
        return topic

    def mutated_subscribe(self: mqtt.Client, topic: Any, *args: Any, **kwargs: Any) -> Any:
        return subscribe(self, unshared(topic) if options.no_share else topic, *args, **kwargs)

    mqtt.Client.subscribe = mutated_subscribe  # type: ignore[method-assign]
    if options.no_will:
        mqtt.Client.will_set = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    if options.tls_insecure or options.no_client_cert:
        tls_set = mqtt.Client.tls_set

        def mutated_tls_set(self: mqtt.Client, *args: Any, **kwargs: Any) -> None:
            if options.no_client_cert:
                kwargs.pop("certfile", None)
                kwargs.pop("keyfile", None)
            if options.tls_insecure:
                kwargs["cert_reqs"] = ssl.CERT_NONE
            tls_set(self, *args, **kwargs)
            if options.tls_insecure:
                self.tls_insecure_set(True)

        mqtt.Client.tls_set = mutated_tls_set  # type: ignore[method-assign]
    sys.path.insert(0, str(LAB_ROOT))
    sys.argv = [options.module, *options.args]
    runpy.run_module(options.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

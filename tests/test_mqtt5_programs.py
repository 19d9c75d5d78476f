"""The reference programs' MQTT 5 features (lesson 09), and that they still work on 3.1.1.

* the ``schema`` user property names a schema that exists, at the version of its ``$id``;
* the controller asks a device for its setpoints (``--ask-setpoints``) and gets the answer;
* on MQTT 3.1.1 a device publishes the same messages, without properties, and the
  controller's commands still go out;
* ``sim.datacenter --share`` subscribes through ``$share`` on both versions.
"""

from __future__ import annotations

import json
import re

import pytest

from mqtt_factory_lab import contract
from mqtt_factory_lab.contract import validate
from sim.mqtt5 import SCHEMA_LABELS


@pytest.mark.parametrize("kind", sorted(SCHEMA_LABELS))
def test_schema_label_names_the_topic_kinds_schema_and_its_version(kind):
    name, version = re.fullmatch(r"vf\.(\w+)/(\d+)", SCHEMA_LABELS[kind]).groups()
    assert contract.TOPIC_SCHEMAS[kind][0] == name, (kind, SCHEMA_LABELS[kind])
    assert contract.schema(name)["$id"].endswith(f"/{name}/v{version}.json")


def test_controller_asks_two_devices_for_their_setpoints(sim_program, unique_id):
    for kind in ("press", "oven"):
        sim_program("sim.device", "--device", kind, "--device-id", f"{kind}-01", name=kind)
    controller = sim_program(
        "sim.controller",
        "--client-id",
        unique_id("ctl"),
        "--ask-setpoints",
        "press-01",
        "--ask-setpoints",
        "oven-01",
    )
    for device_id in ("press-01", "oven-01"):
        line = controller.wait_for_output(rf"^setpoints {device_id} ", timeout=10)
        answer = validate("setpoints_reply", json.loads(line.split(" ", 2)[2]))
        assert answer["device_id"] == device_id and answer["setpoints"], line


def test_on_mqtt311_devices_publish_without_properties_and_commands_still_flow(
    sim_program, mqtt_client, topic_root, unique_id
):
    watcher = mqtt_client(protocol="5")  # an MQTT 5 subscriber would see any property
    watcher.subscribe(f"{topic_root}/#", qos=1)
    sim_program("sim.device", "--device", "press", "--device-id", "press-01", protocol="3.1.1")
    sim_program(
        "sim.controller",
        "--client-id",
        unique_id("ctl"),
        "--rule",
        "press-01/temperature=conveyor-01",
        protocol="3.1.1",
    )
    watcher.wait_for_messages(3, f"{topic_root}/telemetry/press-01/#")
    device_messages = watcher.received(f"{topic_root}/+/press-01/#")
    assert device_messages and all(not m.properties for m in device_messages), [
        (m.topic, m.properties) for m in device_messages[:5]
    ]
    alarm = {
        "ts": 1767225600.0,
        "device_id": "press-01",
        "sensor": "temperature",
        "state": "raised",
        "value": 231.0,
        "low": None,
        "high": 220.0,
        "severity": "critical",
        "message": "temperature 231.0 C above 220.0 C",
    }
    mqtt_client(protocol="3.1.1").publish(
        f"{topic_root}/alarms/press-01/temperature", validate("alarm", alarm), qos=1
    )
    command = watcher.wait_for_message(f"{topic_root}/commands/+/conveyor-01")
    assert validate("command", command.payload)["command"] == "stop"
    assert not command.properties, "an MQTT 3.1.1 publish carries no properties"


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_datacenter_share_subscribes_through_a_shared_subscription(
    sim_program, unique_id, tmp_path, protocol
):
    datacenter = sim_program(
        "sim.datacenter",
        "--db",
        str(tmp_path / "dc.db"),
        "--client-id",
        unique_id("dc"),
        "--share",
        "datacenter",
        protocol=protocol,
    )
    assert "subscribing to $share/datacenter/" in datacenter.output(), datacenter.output()


def test_the_lab_acl_lets_the_controller_ask_a_device_for_its_setpoints(sim_program, make_broker):
    broker = make_broker("acl")  # docker/acl: the device answers only under replies/<itself>/
    sim_program(
        "sim.device", "--device", "press", "--device-id", "press-01", "--client-id", "press-01",
        broker=broker, topic_root="factory", name="press",
    )  # fmt: skip
    controller = sim_program(
        "sim.controller", "--client-id", "controller", "--ask-setpoints", "press-01",
        broker=broker, topic_root="factory",
    )  # fmt: skip
    line = controller.wait_for_output(r"^setpoints press-01 ", timeout=10)
    assert validate("setpoints_reply", json.loads(line.split(" ", 2)[2]))["setpoints"], line

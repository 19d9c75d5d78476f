"""Each fact of the factory has one home on each side of the harness/sim boundary, and they agree.

``sim/`` is a reference solution: it may not import the lab's harness, so a few facts
exist twice — once for the programs, once for the harness that grades any solution.
The contract in ``schemas/`` is the harness's home wherever it can be. These tests
tie the copies together, so that changing one without the other fails here, with
the file to fix, instead of drifting into a wrong grade.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt

import sim.connection
import sim.machines
import sim.topics
from mqtt_factory_lab import contract
from mqtt_factory_lab.core import client, factory
from mqtt_factory_lab.core.paths import DOCKER_DIR


def test_device_kinds_agree_between_simulator_contract_and_harness():
    assert contract.device_kinds() == sim.machines.DEVICE_KINDS, (
        "sim/machines.py (DEVICE_KINDS) and schemas/common.schema.json ($defs.device_kind) "
        "must list the same kinds, in the same order"
    )
    assert contract.device_kinds() == factory.DEVICE_KINDS, "the harness reads them from the schema"


def test_protocol_versions_agree_between_simulator_and_harness():
    assert sim.connection.PROTOCOLS == client.PROTOCOLS, (
        "sim/connection.py and mqtt_factory_lab/core/client.py must offer the same MQTT versions "
        "(VF_MQTT_PROTOCOL values) mapped to the same paho constants"
    )
    assert set(client.PROTOCOLS.values()) == {mqtt.MQTTv311, mqtt.MQTTv5}


def test_sync_space_agrees_between_simulator_harness_and_acl():
    assert sim.topics.SYNC_PREFIX == client.SYNC_PREFIX, (
        "sim/topics.py and mqtt_factory_lab/core/client.py must use the same private sync space"
    )
    acl = (DOCKER_DIR / "acl").read_text().splitlines()
    rule = f"pattern readwrite {client.SYNC_PREFIX}/%c/#"
    assert rule in acl, f"docker/acl must let each client use its own sync space: {rule!r}"


def test_topic_kinds_agree_between_simulator_and_contract():
    assert set(sim.topics.TOPIC_KINDS) == set(contract.TOPIC_SCHEMAS), (
        "sim/topics.py (QOS) and mqtt_factory_lab/contract/ (TOPIC_SCHEMAS) must know the "
        "same topic kinds"
    )

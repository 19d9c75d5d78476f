"""The factory fixtures: a whole plant started through the solution manifest, checked end to end."""

from __future__ import annotations

import os
import time

import pytest

from mqtt_factory_lab.brokers import CONFIG, LOG
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.factory import DEVICE_KINDS
from mqtt_factory_lab.fixtures.factory import ObserverCapture

PLANT_SECONDS = 30.0


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_factory_starts_every_device_and_the_controller(factory, mqtt_client, topic_root):
    plant = factory()

    assert sorted(h.kind for h in plant.devices.values()) == sorted(DEVICE_KINDS)
    assert plant.controller is not None and plant.controller.is_running()
    dashboard = mqtt_client()
    dashboard.subscribe(f"{topic_root}/status/+", qos=1)
    statuses = dashboard.wait_for_messages(len(plant.devices))
    assert all(m.retain for m in statuses), "a late dashboard gets each status as retained state"
    online = {validate("status", m.payload)["device_id"] for m in statuses}
    assert online == set(plant.devices), f"every device is online: {sorted(online)}"


def test_every_message_of_30_plant_seconds_follows_its_schema(
    factory, observer_capture, topic_root
):
    capture = observer_capture()
    plant = factory(anomaly=True)

    def late_enough(message) -> bool:
        return (
            "/telemetry/" in message.topic and message.json().get("plant_time", 0) >= PLANT_SECONDS
        )

    for device_id in plant.devices:
        capture.wait_for_message(
            lambda m, d=device_id: late_enough(m) and f"/telemetry/{d}/" in m.topic, timeout=10
        )
    capture.sync()

    checked = capture.assert_all_valid()
    kinds = capture.by_kind()
    assert checked > 0 and kinds["telemetry"] > 0 and kinds["state"] >= len(plant.devices), kinds
    assert kinds["status"] >= len(plant.devices), kinds


def test_device_options_reach_the_program_through_the_manifest(device, mqtt_client, topic_root):
    watcher = mqtt_client()
    watcher.subscribe(f"{topic_root}/status/#", qos=1)
    press = device("press", crash_after=0.3)

    offline = watcher.wait_for_message(
        lambda m: m.topic == press.topic("status") and m.json()["status"] == "offline", timeout=10
    )
    payload = validate("status", offline.payload)
    assert payload.get("reason") == "last-will", (
        "--crash-after ends the device without DISCONNECT, so the broker publishes its Last Will; "
        f"got {payload}"
    )
    assert press.process.wait_exit(5) != 0


def test_controller_in_a_running_factory_stops_the_conveyor_when_the_press_overheats(
    factory, mqtt_client, topic_root
):
    plant = factory(kinds=("press", "conveyor"))
    watcher = mqtt_client()
    watcher.subscribe(f"{topic_root}/state/conveyor", qos=1)
    watcher.wait_for_message(lambda m: m.json()["state"] == "running")

    alarm = {
        "ts": time.time(),
        "device_id": "press",
        "sensor": "temperature",
        "state": "raised",
        "value": 99.0,
        "low": None,
        "high": 90.0,
        "severity": "warning",
        "message": "press temperature above 90 C",
    }
    operator = mqtt_client()
    operator.publish(f"{topic_root}/alarms/press/temperature", validate("alarm", alarm), qos=1)

    stopped = watcher.wait_for_message(lambda m: m.json()["state"] == "stopped", timeout=10)
    assert validate("state", stopped.payload)["counters"]["commands_accepted"] >= 1
    assert plant.controller is not None and plant.controller.is_running()


def test_no_program_outlives_the_factory(factory_launcher):
    launcher = factory_launcher()
    press = launcher.start_device("press")
    controller = launcher.start_role("controller", "controller-x", session="clean")
    pids = [press.process.pid, controller.pid]

    launcher.close()

    assert all(pid is not None and _gone(pid) for pid in pids), "every program was stopped"


@pytest.mark.broker_needs(LOG)
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_devices_speak_the_protocol_the_lab_asks_for(factory_launcher, broker, protocol):
    launcher = factory_launcher(protocol=protocol)
    mark = broker.log_mark()
    press = launcher.start_device("press")
    expected = "p5" if protocol == "5" else "p2"  # mosquitto's names for MQTT 5 and 3.1.1
    line = broker.wait_for_log(rf"as {press.client_id} \({expected},", since=mark)
    assert press.client_id in line


@pytest.mark.broker_needs(CONFIG, LOG)
def test_the_reference_factory_needs_nothing_the_acl_denies(make_broker, factory_launcher):
    # As with docker/docker-compose.yml: the ACL in force, the default `factory` root, and each
    # program connecting under the client id the ACL's patterns expect. docker/acl lets only the
    # users `dashboard` and `observer` read the whole plant, so the capture logs in as observer
    # (and the launcher's anonymous status watcher could not see the devices come online).
    broker = make_broker("acl+persistent")
    capture = ObserverCapture(broker.host, broker.port, "observer", username="observer")
    capture.topic_root = "factory"
    capture.connect()
    try:
        capture.subscribe("factory/#", qos=1)
        launcher = factory_launcher(broker, root="factory")
        mark = broker.log_mark()
        for kind in DEVICE_KINDS:
            launcher.start_device(kind, kind, client_id=kind, anomaly=True, wait_online=False)
        launcher.start_role("controller", "controller", session="persistent")

        for kind in DEVICE_KINDS:
            capture.wait_for_message(f"factory/telemetry/{kind}/#", timeout=10)
        capture.sync()
        capture.assert_all_valid()
    finally:
        capture.disconnect()
    denied = [line for line in broker.log_lines()[mark:] if "Denied" in line]
    assert not denied, "the reference factory must work within docker/acl:\n" + "\n".join(denied)

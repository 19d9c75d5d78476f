"""``mqtt-lab sandbox fault …``: the seed's failure scenarios, on the running sandbox.

Each fault says what it does, does it, confirms the effect it can see from the broker, and
says what to watch on the dashboard:

=====================  ===============================================================
``kill DEVICE``        SIGKILL a device: no DISCONNECT, so the broker publishes its Last
                       Will; the card turns *offline*
``crash-datacenter``   kill -9 the data center mid-stream, restart it: its persistent
                       session made the broker queue the QoS 1 messages; nothing lost
``pause-broker S``     SIGSTOP the broker for S seconds, then SIGCONT: traffic freezes,
                       keepalives wait, queued QoS 1 messages arrive at once
``restart-broker``     stop and start the broker: persistence brings the retained
                       messages and the sessions back
``flood DEVICE RATE``  a misbehaving publisher: RATE telemetry messages a second as
                       DEVICE's sensor ``flood``; the traffic table's msg/s shows it
``bad-actor``          ``sim.bad_actor``: forged commands, spoofed telemetry, reading
                       what it should not; refused only under ``up --acl``
=====================  ===============================================================
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import threading
import time
import uuid

import paho.mqtt.client as mqtt
import psutil

from mqtt_factory_lab.core.paths import LAB_ROOT
from mqtt_factory_lab.core.process import ProcessTimeout, wait_until
from mqtt_factory_lab.sandbox import broker as sandbox_broker
from mqtt_factory_lab.sandbox import tls as sandbox_tls
from mqtt_factory_lab.sandbox.lifecycle import _datacenter_rows, _label, broker_env
from mqtt_factory_lab.sandbox.plan import DATACENTER_ID, DEVICES
from mqtt_factory_lab.sandbox.processes import (
    StartError,
    ended,
    family,
    program_env,
    python_module,
    spawn,
    wait_for_line,
)
from mqtt_factory_lab.sandbox.state import Record, StateDir


class FaultError(RuntimeError):
    """The fault cannot be injected (the sandbox or the target is not running)."""


def add_parser(
    actions: argparse._SubParsersAction,  # type: ignore[type-arg]
    common: argparse.ArgumentParser | None = None,
) -> None:
    """``fault`` and its kinds; ``common`` holds the options every action accepts."""
    fault = actions.add_parser(
        "fault",
        help="inject a failure into the running sandbox",
        description="The Virtual Factory seed's failure and fault scenarios. Each prints "
        "what to watch on the dashboard.",
    )
    kinds = fault.add_subparsers(dest="fault", required=True, metavar="FAULT")
    parents = [common] if common is not None else []
    real_add = kinds.add_parser
    kinds.add_parser = lambda name, **kw: real_add(name, parents=parents, **kw)  # type: ignore[method-assign]
    kill = kinds.add_parser("kill", help="SIGKILL a device: its Last Will says offline")
    kill.add_argument("device", choices=DEVICES)
    kill.set_defaults(fault_run=lambda a, s: kill_device(s, a.device))
    crash = kinds.add_parser("crash-datacenter", help="kill -9 the data center, restart it")
    crash.add_argument(
        "--down-for", type=float, default=3.0, help="seconds it stays dead (default 3)"
    )
    crash.set_defaults(fault_run=lambda a, s: crash_datacenter(s, a.down_for))
    pause = kinds.add_parser("pause-broker", help="SIGSTOP the broker for SECONDS")
    pause.add_argument("seconds", type=float)
    pause.set_defaults(fault_run=lambda a, s: pause_broker(s, a.seconds))
    restart = kinds.add_parser("restart-broker", help="stop and start the broker (persistence)")
    restart.set_defaults(fault_run=lambda a, s: restart_broker(s))
    flood = kinds.add_parser("flood", help="publish RATE messages/s as DEVICE's sensor 'flood'")
    flood.add_argument("device", choices=DEVICES)
    flood.add_argument("rate", type=float, help="messages per second")
    flood.add_argument("--for", dest="duration", type=float, default=10.0, help="seconds (10)")
    flood.set_defaults(fault_run=lambda a, s: flood_device(s, a.device, a.rate, a.duration))
    bad = kinds.add_parser("bad-actor", help="run sim.bad_actor against the sandbox")
    bad.set_defaults(fault_run=lambda a, s: bad_actor(s))
    fault.set_defaults(sandbox_run=_run)


def _run(args: argparse.Namespace, state: StateDir) -> int:
    try:
        return int(args.fault_run(args, state) or 0)
    except (FaultError, StartError) as error:
        print(f"mqtt-lab sandbox fault {args.fault}: {error}")
        return 1


def _say(text: str) -> None:
    print(text, flush=True)


def _settings(state: StateDir) -> dict:  # type: ignore[type-arg]
    settings = state.settings()
    if not settings or not state.records():
        raise FaultError(f"the sandbox is not running ({state.path}): `mqtt-lab sandbox up` first")
    return settings


def _record(state: StateDir, name: str) -> Record:
    record = state.record(name)
    if record is None or (record.pid and record.process() is None):
        raise FaultError(f"the sandbox's {name} is not running (`mqtt-lab sandbox status`)")
    return record


def _watch(settings: dict, what: str) -> None:  # type: ignore[type-arg]
    _say(f"watch on the dashboard ({settings.get('dashboard', 'not running')}): {what}")


# -- a small witness on the broker ----------------------------------------------------------


class Witness:
    """A client that records what arrives on one filter; waits for a message by event."""

    def __init__(self, port: int, *topic_filters: str, mtls: str | None = None) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"sandbox-fault-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.username_pw_set("observer")
        sandbox_tls.apply(self.client, mtls)  # under --mtls: the observer's certificate
        self.client.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in topic_filters])
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(sandbox_broker.HOST, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            self.close()
            raise FaultError(f"the broker on port {port} does not answer")

    def _on_message(self, client, userdata, message):  # type: ignore[no-untyped-def]
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait_for(self, predicate, timeout: float) -> mqtt.MQTTMessage | None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for message in self.messages:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _payload_field(message: mqtt.MQTTMessage, name: str) -> object:
    try:
        return json.loads(message.payload).get(name)
    except (ValueError, AttributeError):
        return None


# -- the faults ---------------------------------------------------------------------------


def device_process(state: StateDir, device: str) -> psutil.Process:
    factory = _record(state, "factory").process()
    assert factory is not None
    for child in family(factory)[1:]:
        if _label(child) == device:
            return child
    raise FaultError(f"no running {device}: it was killed already (`mqtt-lab sandbox status`)")


def kill_device(state: StateDir, device: str) -> int:
    settings = _settings(state)
    process = device_process(state, device)
    witness = Witness(int(settings["port"]), f"factory/status/{device}", mtls=settings.get("mtls"))
    try:
        witness.wait_for(lambda m: True, 2)  # its retained status: online
        witness.messages.clear()
        _say(f"SIGKILL {device} (pid {process.pid}): it cannot say goodbye, no DISCONNECT is sent")
        process.send_signal(signal.SIGKILL)
        will = witness.wait_for(lambda m: _payload_field(m, "status") == "offline", 10)
    finally:
        witness.close()
    if will is None:
        _say(f"no Last Will arrived on factory/status/{device} within 10 s")
        return 1
    _say(
        f"the broker published {device}'s Last Will: factory/status/{device} = offline "
        "(QoS 1, retained: a dashboard opened later sees it too)"
    )
    _watch(
        settings,
        f"the {device} card turns offline; the other devices keep running. "
        "It stays down until `mqtt-lab sandbox down` and `up`.",
    )
    return 0


def crash_datacenter(state: StateDir, down_for: float = 3.0) -> int:
    settings = _settings(state)
    record = _record(state, "datacenter")
    process = record.process()
    assert process is not None
    before = _datacenter_rows(state.database) or 0
    _say(f"kill -9 the data center (pid {record.pid}) with {before} messages stored")
    for member in family(process):
        member.send_signal(signal.SIGKILL)
    wait_until(lambda: ended(process), 5)
    at_crash = _datacenter_rows(state.database) or 0
    _say(
        f"it is down for {down_for:g} s; its session stays on the broker, which queues "
        "every QoS 1 message for it meanwhile"
    )
    time.sleep(down_for)  # the outage itself: how long the data center stays dead
    env = program_env(state, broker_env(int(settings["port"]), settings.get("mtls"), DATACENTER_ID))
    fresh = spawn(state, "datacenter", record.argv, env)
    wait_for_line(fresh, r"^ready datacenter\s*$", 20)
    try:
        after = wait_until(
            lambda: (n := _datacenter_rows(state.database) or 0) > at_crash and n, 20
        )
    except ProcessTimeout:
        after = _datacenter_rows(state.database) or 0
    _say(
        f"restarted (pid {fresh.pid}); it found its session and the queued messages: "
        f"{at_crash} rows at the crash, {after} now. A message already committed but not yet "
        "acknowledged comes again and is stored once (its msg_id)."
    )
    _say(
        "check: `mqtt-lab sandbox status` (data center rows), or `python -m sim.datacenter "
        f"trace --db {state.database} --help`"
    )
    _watch(settings, "the chocolate line never stopped; the data center's row count has no gap")
    return 0


def pause_broker(state: StateDir, seconds: float) -> int:
    settings = _settings(state)
    record = _record(state, sandbox_broker.NAME)
    _say(f"SIGSTOP the broker for {seconds:g} s: connections stay open, nothing is answered")
    _watch(
        settings,
        "the msg/s column of the traffic table falls to 0 and the live log stops; publishers "
        "keep their QoS 1 messages in flight; a client waits 1.5 x its keepalive (45 s by "
        "default) before it gives the broker up",
    )
    sandbox_broker.pause(record)
    try:
        time.sleep(seconds)  # the fault's length
    finally:
        sandbox_broker.resume(record)
    _say(
        "SIGCONT: the broker answers again; the queued messages arrive at once, then the usual flow"
    )
    return 0


def restart_broker(state: StateDir) -> int:
    settings = _settings(state)
    record = _record(state, sandbox_broker.NAME)
    port = int(settings["port"])
    _say("stopping the broker (SIGTERM: mosquitto writes mosquitto.db) and starting it again")
    _watch(
        settings,
        "the header shows the dashboard's connection lost, then back within a few seconds; "
        "the cards come back from the broker's database (retained messages and sessions "
        "persist): offline for a moment, since the restored sessions' Last Wills fire, then "
        "online as each device reconnects and publishes its state again",
    )
    started = time.monotonic()
    env = program_env(state, broker_env(port))
    sandbox_broker.restart(state, record, port, env)
    _say(f"the broker answers again after {time.monotonic() - started:.1f} s")
    witness = Witness(port, "factory/status/+", "factory/+/+/+/+/state", mtls=settings.get("mtls"))
    try:
        back = wait_until(lambda: everyone_back(witness, state), 20, interval=0.1)
    except ProcessTimeout:
        back = None
    finally:
        witness.close()
    if back is None:
        _say("not every device and machine was back online within 20 s: `mqtt-lab sandbox status`")
        return 1
    _say(
        f"{back} online again {time.monotonic() - started:.1f} s after the restart "
        "(they reconnected and published their retained state again)"
    )
    return 0


def everyone_back(witness: Witness, state: StateDir) -> str | None:
    """``"6 devices and 13 machines"`` once the latest retained word of each says online."""
    latest: dict[str, object] = {}
    for message in list(witness.messages):
        latest[message.topic] = _payload_field(message, "status") or _payload_field(
            message, "state"
        )
    devices = [t for t in latest if t.startswith("factory/status/")]
    machines = [t for t in latest if t.endswith("/state") and t.count("/") == 5]
    # only the devices still running are expected back (a killed one stays offline)
    running = {d for d in DEVICES if _device_running(state, d)}
    online = {t.rsplit("/", 1)[1] for t in devices if latest[t] == "online"}
    if not running <= online or any(latest[t] == "offline" for t in machines):
        return None
    return f"{len(running)} devices and {len(machines)} chocolate machines"


def _device_running(state: StateDir, device: str) -> bool:
    try:
        device_process(state, device)
        return True
    except FaultError:
        return False


def telemetry(device: str, seq: int) -> bytes:
    """A reading that passes schemas/telemetry.schema.json, on sensor ``flood``."""
    return json.dumps(
        {
            "ts": time.time(),
            "device_id": device,
            "sensor": "flood",
            "value": float(seq % 100),
            "unit": "%",
            "seq": seq,
        }
    ).encode()


def flood_device(state: StateDir, device: str, rate: float, duration: float) -> int:
    settings = _settings(state)
    if rate <= 0:
        raise FaultError("RATE must be more than 0 messages per second")
    topic = f"factory/telemetry/{device}/flood"
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device}-flood", protocol=mqtt.MQTTv5
    )
    # under --mtls the flood presents the device's own certificate: the broker (and
    # acl-machines) take it for the device
    sandbox_tls.apply(client, settings.get("mtls"), device)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(sandbox_broker.HOST, int(settings["port"]), keepalive=30)
    client.loop_start()
    if not connected.wait(5):
        raise FaultError("the broker does not answer")
    _say(f"publishing {rate:g} messages/s on {topic} for {duration:g} s (client {device}-flood)")
    note = (
        " Under --acl the broker drops them: client id "
        f"{device}-flood may not write factory/telemetry/{device}/#."
        if settings.get("acl") and not settings.get("mtls")
        else ""
    )
    _watch(settings, f"the traffic table's row {topic} climbs to about {rate:g} msg/s.{note}")
    sent = 0
    start = time.monotonic()
    try:
        while (elapsed := time.monotonic() - start) < duration:
            due = int(elapsed * rate) + 1
            while sent < due:
                client.publish(topic, telemetry(device, sent), qos=0)
                sent += 1
            time.sleep(max(0.0, sent / rate - (time.monotonic() - start)))  # pacing
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    _say(f"sent {sent} messages in {time.monotonic() - start:.1f} s")
    return 0


def bad_actor(state: StateDir) -> int:
    settings = _settings(state)
    # under --mtls the bad actor trusts the factory's CA but has no certificate of its own:
    # the broker ends its handshake, and its report says so in one sentence
    env = program_env(state, broker_env(int(settings["port"]), settings.get("mtls")))
    env.pop("MQTT_LAB_SANDBOX", None)  # it runs in this terminal and ends by itself
    protected = (
        "under --mtls the broker ends the handshake of a client without a certificate from "
        "the factory's CA: the bad actor gets nowhere"
        if settings.get("mtls")
        else "the broker refuses what docker/acl forbids"
        if settings.get("acl")
        else ("without --acl the broker lets all of it through: `sandbox down`, `sandbox up --acl`")
    )
    _watch(
        settings,
        "forged commands for the press appear in the live log (or, under --acl, do not); "
        f"the bad actor's report below says, attempt by attempt, what happened. {protected}",
    )
    return subprocess.run(
        python_module("sim.bad_actor"), env=env, cwd=LAB_ROOT, check=False
    ).returncode

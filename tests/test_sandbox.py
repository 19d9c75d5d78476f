"""``mqtt-lab sandbox``: a real sandbox on free ports, its page in Chromium, every fault.

Each test starts its own sandbox (``up`` as a subprocess, its own state folder, free
ports: never 1884 or 8080) and ends it with ``down``; the fixture then checks, by pid,
that nothing of it is left. Waits are for events: a ready line of ``up``, a message, an
element on the page (Playwright's ``expect``), never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psutil
import pytest

from mqtt_factory_lab.bench.dashboard import find_chromium, launch_chromium
from mqtt_factory_lab.brokers.base import free_port
from mqtt_factory_lab.core.process import wait_until
from mqtt_factory_lab.sandbox.plan import DEVICES
from mqtt_factory_lab.sandbox.processes import family, tagged
from mqtt_factory_lab.sandbox.state import TAG_ENV, StateDir

pytestmark = pytest.mark.timeout(120)
WAIT = 10_000  # ms the page may take to show something


def mqtt_lab(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != TAG_ENV}
    return subprocess.run(
        [sys.executable, "-m", "mqtt_factory_lab.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@dataclass
class Sandbox:
    state: StateDir
    port: int
    http_port: int
    up_output: str = ""
    up_seconds: float = 0.0

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return mqtt_lab("sandbox", "--state-dir", str(self.state.path), *args, timeout=timeout)

    def up(self, *options: str) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        result = self.run(
            "up",
            "--port",
            str(self.port),
            "--http-port",
            str(self.http_port),
            "--broker-backend",
            "local",
            *options,
        )
        self.up_seconds = time.monotonic() - started
        self.up_output = result.stdout + result.stderr
        return result

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    def pids(self) -> set[int]:
        """Every process of the sandbox now: the records' processes, their descendants, tags."""
        found = set()
        for record in self.state.records():
            process = record.process()
            if process is not None:
                found |= {p.pid for p in family(process)}
        return found | {p.pid for p in tagged(self.state)}


def still_running(pids: set[int]) -> list[str]:
    left = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(process.cmdline())[:100]}")
        except psutil.Error:
            continue
    return left


@pytest.fixture
def make_sandbox(tmp_path: Path) -> Iterator[Callable[[], Sandbox]]:
    made: list[Sandbox] = []

    def make() -> Sandbox:
        box = Sandbox(StateDir(tmp_path / f"state{len(made)}"), free_port(), free_port())
        made.append(box)
        return box

    yield make
    for box in made:
        pids = box.pids()
        box.run("down")
        for process in tagged(box.state):  # never leave anything, even when down is broken
            process.kill()
        assert not still_running(pids), f"`sandbox down` left processes: {still_running(pids)}"


@pytest.fixture
def sandbox(make_sandbox: Callable[[], Sandbox]) -> Sandbox:
    box = make_sandbox()
    result = box.up()
    assert result.returncode == 0, f"sandbox up failed:\n{box.up_output}"
    return box


# -- a witness on the broker -------------------------------------------------------------


@dataclass
class Witness:
    """A client recording every message on ``filters``, with the time it arrived."""

    port: int
    filters: tuple[str, ...] = ("factory/#",)
    messages: list[tuple[float, mqtt.MQTTMessage]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"witness-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_connect = lambda c, *_: c.subscribe([(f, 1) for f in self.filters])
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert subscribed.wait(5), "the witness could not subscribe"

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((time.monotonic(), message))
            self.cond.notify_all()

    def wait_for(
        self, predicate: Callable[[mqtt.MQTTMessage], bool], timeout: float = 10
    ) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for _, message in self.messages:
                    if predicate(message):
                        return message
                remaining = deadline - time.monotonic()
                assert remaining > 0, "the awaited message did not arrive"
                self.cond.wait(remaining)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def witness() -> Iterator[Callable[..., Witness]]:
    made: list[Witness] = []

    def make(port: int, *filters: str) -> Witness:
        made.append(Witness(port, filters or ("factory/#",)))
        return made[-1]

    yield make
    for w in made:
        w.close()


def field_of(message: mqtt.MQTTMessage, name: str) -> Any:
    try:
        return json.loads(message.payload).get(name)
    except (ValueError, AttributeError):
        return None


# -- the browser -------------------------------------------------------------------------


@pytest.fixture
def page() -> Iterator[Any]:
    playwright_api = pytest.importorskip("playwright.sync_api", reason="run scripts/setup")
    if find_chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium: CI must run the browser tests (scripts/setup)")
        pytest.skip("no Chromium found: run scripts/setup (apt-get install -y chromium)")
    errors: list[str] = []
    with playwright_api.sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1100})
            tab.on("pageerror", lambda error: errors.append(str(error)))
            yield tab
        finally:
            browser.close()
    assert not errors, f"the page raised script errors: {errors}"


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def device_card(page: Any, device: str) -> Any:
    return page.locator(f'#devices .device[data-device="{device}"]')


# -- up, status, logs --------------------------------------------------------------------


def test_up_shows_every_device_and_the_chocolate_line_on_the_dashboard(sandbox, page, tmp_path):
    assert sandbox.url in sandbox.up_output, sandbox.up_output
    assert str(sandbox.state.log_dir) in sandbox.up_output
    page.goto(sandbox.url)
    for device in DEVICES:
        expect(device_card(page, device)).to_have_attribute("data-status", "online", timeout=WAIT)
    expect(page.locator("#lines-section")).to_be_visible(timeout=WAIT)
    expect(page.locator("#lines")).to_contain_text("s5_tempering", timeout=WAIT)
    page.screenshot(path=str(tmp_path / "sandbox.png"), full_page=True)
    print(f"sandbox up returned after {sandbox.up_seconds:.1f} s")


def test_up_twice_says_it_already_runs(sandbox):
    again = sandbox.up()
    assert again.returncode == 1
    assert "already runs" in sandbox.up_output and sandbox.url in sandbox.up_output


def test_a_port_in_use_is_one_sentence_naming_who_holds_it(make_sandbox):
    box = make_sandbox()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", box.port))
        taken.listen()
        result = box.up()
    assert result.returncode == 1
    lines = [line for line in box.up_output.splitlines() if line.strip()]
    assert len(lines) == 1, box.up_output
    assert (
        f"port {box.port}" in lines[0] and f"pid {os.getpid()}" in lines[0] and "--port" in lines[0]
    )
    assert not box.state.records(), "nothing may start when a port is taken"


def test_status_lists_every_program_with_its_retained_status(sandbox):
    result = sandbox.run("status", "--window", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("broker", "factory", "datacenter", "chocolate", "dashboard", *DEVICES):
        assert name in result.stdout
    assert "6/6 devices online" in result.stdout and "answers" in result.stdout


def test_logs_shows_one_devices_lines_and_names_the_unknown(sandbox):
    press = sandbox.run("logs", "press")
    assert "ready press" in press.stdout and "ready oven" not in press.stdout
    assert "ready datacenter" in sandbox.run("logs", "datacenter").stdout
    unknown = sandbox.run("logs", "nothing-such")
    assert unknown.returncode == 2 and "factory" in unknown.stdout


# -- the faults --------------------------------------------------------------------------


def test_kill_device_turns_its_card_offline(sandbox, page):
    page.goto(sandbox.url)
    expect(device_card(page, "press")).to_have_attribute("data-status", "online", timeout=WAIT)
    result = sandbox.run("fault", "kill", "press")
    assert result.returncode == 0, result.stdout
    assert "Last Will" in result.stdout and "watch on the dashboard" in result.stdout
    expect(device_card(page, "press")).to_have_attribute("data-status", "offline", timeout=WAIT)
    expect(device_card(page, "oven")).to_have_attribute("data-status", "online")


def alarm_while_down(run: str, number: int) -> tuple[str, bytes]:
    """A valid chocolate alarm (the schema's example) from a test line, ``line-test``."""
    alarm = {
        "ts": time.time(), "msg_id": f"{run}-conche-01-{number}", "site": "tunis-01",
        "line": "line-test", "step": "s4_conching", "machine": "conche-01",
        "alarm": "motor_overload", "state": "raised", "severity": "warning", "value": 118.0,
        "batch_id": None, "message": "published while the data center is down",
    }  # fmt: skip
    return "factory/tunis-01/line-test/s4_conching/conche-01/alarm", json.dumps(alarm).encode()


def test_crash_datacenter_loses_no_qos1_message(sandbox, witness):
    seen = witness(sandbox.port, "factory/+/+/+/+/+")
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", sandbox.port)
    publisher.loop_start()
    fault = subprocess.Popen(
        [sys.executable, "-m", "mqtt_factory_lab.cli", "sandbox", "--state-dir",
         str(sandbox.state.path), "fault", "crash-datacenter", "--down-for", "2"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    times: dict[str, float] = {}
    run = uuid.uuid4().hex[:8]
    assert fault.stdout is not None
    for line in fault.stdout:
        if line.startswith("it is down"):  # printed once the data center has died
            times["down"] = time.monotonic()
            # QoS 1 messages certainly published while it is dead, besides the line's own
            for number in range(5):
                publisher.publish(*alarm_while_down(run, number), qos=1).wait_for_publish(5)
            times["published"] = time.monotonic()
        if line.startswith("restarted"):
            times["restart"] = time.monotonic()
    publisher.disconnect()
    publisher.loop_stop()
    assert fault.wait(30) == 0 and set(times) == {"down", "published", "restart"}
    assert times["published"] < times["restart"], "the test published after the restart"
    while_down = {
        field_of(m, "msg_id")
        for at, m in list(seen.messages)
        if m.qos == 1 and times["down"] < at < times["restart"]
    }
    assert {f"{run}-conche-01-{n}" for n in range(5)} <= while_down

    def stored() -> set[str]:
        with sqlite3.connect(sandbox.state.database) as db:
            rows = db.execute("SELECT payload FROM mqtt_messages").fetchall()
        return {json.loads(payload).get("msg_id") for (payload,) in rows}

    def missing() -> set[str]:
        return while_down - stored()

    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not missing(), 20, interval=0.2)
    lost = missing()
    assert not lost, (
        f"the data center lost {len(lost)} of {len(while_down)} QoS 1 messages: {sorted(lost)[:5]}"
    )


def test_pause_broker_freezes_the_traffic_then_it_flows_again(sandbox, witness):
    seen = witness(sandbox.port)
    seen.wait_for(lambda m: m.topic.startswith("factory/telemetry/"))
    result = sandbox.run("fault", "pause-broker", "2")
    assert result.returncode == 0 and "msg/s" in result.stdout
    after = time.monotonic()
    wait_until(lambda: seen.messages[-1][0] > after, 10)  # traffic flows again
    stamps = [at for at, _ in seen.messages]
    gap = max(b - a for a, b in itertools.pairwise(stamps))
    assert gap >= 1.5, f"the longest silence was {gap:.2f} s: the broker did not pause"
    offline = [m.topic for _, m in seen.messages if field_of(m, "status") == "offline"]
    assert not offline, f"a 2 s pause must not cost anyone their connection: {offline}"


def test_restart_broker_keeps_retained_messages_and_brings_everyone_back(sandbox, page):
    marker = f"lab/sync/sandbox-test/{uuid.uuid4().hex[:8]}"
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    publisher.connect("127.0.0.1", sandbox.port)
    publisher.loop_start()
    publisher.publish(marker, b"kept", qos=1, retain=True).wait_for_publish(5)
    publisher.disconnect()
    publisher.loop_stop()
    page.goto(sandbox.url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
    result = sandbox.run("fault", "restart-broker")
    assert result.returncode == 0, result.stdout
    assert "online again" in result.stdout
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
    for device in DEVICES:
        expect(device_card(page, device)).to_have_attribute("data-status", "online", timeout=WAIT)
    late = Witness(sandbox.port, (marker,))
    try:
        kept = late.wait_for(lambda m: m.topic == marker, 5)
    finally:
        late.close()
    assert kept.retain and kept.payload == b"kept", "persistence lost a retained message"


def test_flood_shows_in_the_traffic_tables_rate(sandbox, page):
    page.goto(sandbox.url)
    expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=WAIT)
    fault = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mqtt_factory_lab.cli",
            "sandbox",
            "--state-dir",
            str(sandbox.state.path),
            "fault",
            "flood",
            "oven",
            "100",
            "--for",
            "4",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        row = page.locator('#traffic tr[data-topic="factory/telemetry/oven/flood"] .rate')
        page.wait_for_function(
            "el => Number(el.textContent) >= 30",
            arg=row.element_handle(timeout=WAIT),
            timeout=WAIT,
        )
    finally:
        assert fault.wait(30) == 0


def test_bad_actor_is_refused_under_the_acl(make_sandbox):
    box = make_sandbox()
    assert box.up("--acl").returncode == 0, box.up_output
    assert "chocolate   not started" in box.up_output
    result = box.run("fault", "bad-actor")
    report = [
        line
        for line in result.stdout.splitlines()
        if line.split(" ", 1)[0] in ("ALLOWED", "DENIED", "DROPPED")
    ]
    assert report, result.stdout + result.stderr
    allowed = [line for line in report if line.startswith("ALLOWED")]
    assert len(allowed) < len(report), f"the ACL refused nothing:\n{result.stdout}"
    assert "watch on the dashboard" in result.stdout


# -- down ----------------------------------------------------------------------------------


def test_down_leaves_nothing_running(sandbox):
    pids = sandbox.pids()
    assert len(pids) >= 11, (
        f"expected broker, run_all and its 8 programs, line, data center, dashboard: {pids}"
    )
    result = sandbox.run("down")
    assert result.returncode == 0 and "nothing of it runs" in result.stdout
    assert not still_running(pids)
    assert not sandbox.state.records()


def test_down_after_up_was_killed_half_way(make_sandbox):
    box = make_sandbox()
    up = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mqtt_factory_lab.cli",
            "sandbox",
            "--state-dir",
            str(box.state.path),
            "up",
            "--port",
            str(box.port),
            "--http-port",
            str(box.http_port),
            "--broker-backend",
            "local",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert up.stdout is not None
    for line in up.stdout:
        if line.strip().startswith("datacenter"):
            break
    up.send_signal(signal.SIGKILL)
    up.wait(10)
    pids = box.pids()
    assert pids, "up was killed before it started anything"
    result = box.run("down")
    assert result.returncode == 0, result.stdout
    assert not still_running(pids) and not tagged(box.state)
    assert box.up().returncode == 0, f"a sandbox after a crashed up must start:\n{box.up_output}"


def test_down_after_a_component_died(sandbox):
    record = sandbox.state.record("factory")
    assert record is not None
    pids = sandbox.pids()
    os.kill(record.pid, signal.SIGKILL)  # run_all dies; its children get their parent-death signal
    result = sandbox.run("down")
    assert result.returncode == 0, result.stdout
    assert "factory (pid" in result.stdout and "was not running" in result.stdout
    assert not still_running(pids)


# -- lint-topics on the reference factory ----------------------------------------------


def test_the_reference_factory_breaks_no_topic_convention(sandbox):
    from mqtt_factory_lab.lint_topics import lint, listen

    messages = listen(f"mqtt://127.0.0.1:{sandbox.port}", 5, "observer")
    report = lint(messages)
    topics = set(report.topics)
    assert any(t.startswith("factory/telemetry/") for t in topics)
    assert any(t.startswith("factory/tunis-01/") for t in topics), "no chocolate topic heard"
    assert not report.findings, "\n".join(f"{f.topic}: {f}" for f in report.findings[:10])


def test_the_package_starts_the_factory_as_processes_and_never_imports_sim():
    code = (
        "import sys, mqtt_factory_lab.cli, mqtt_factory_lab.sandbox.lifecycle, "
        "mqtt_factory_lab.sandbox.faults, mqtt_factory_lab.lint_topics\n"
        "mqtt_factory_lab.cli.build_parser()\n"
        "print(sorted(m for m in sys.modules if m == 'sim' or m.startswith('sim.')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_foreground_stops_everything_on_ctrl_c(make_sandbox):
    box = make_sandbox()
    up = subprocess.Popen(
        [sys.executable, "-m", "mqtt_factory_lab.cli", "sandbox", "--state-dir",
         str(box.state.path), "up", "--port", str(box.port), "--http-port", str(box.http_port),
         "--broker-backend", "local", "--no-chocolate", "--foreground"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert up.stdout is not None
    for line in up.stdout:
        if "Ctrl-C stops" in line:
            break
    pids = box.pids()
    assert len(pids) >= 9, pids
    up.send_signal(signal.SIGINT)
    rest = up.stdout.read()
    assert up.wait(30) == 0 and "nothing of it runs" in rest, rest
    assert not still_running(pids)


def test_down_after_a_reboot_leaves_a_reused_pid_alone(tmp_path):
    """A record whose pid now belongs to another process (other start time) is stale."""
    from mqtt_factory_lab.sandbox.state import Record

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        state = StateDir(tmp_path / "state")
        state.prepare()
        started = psutil.Process(bystander.pid).create_time()
        state.write(Record("dashboard", bystander.pid, started - 3600, ["old"], ""))
        result = mqtt_lab("sandbox", "--state-dir", str(state.path), "down")
        assert result.returncode == 0 and "was not running" in result.stdout, result.stdout
        assert bystander.poll() is None, "down signalled a process the sandbox never started"
        assert not state.records()
    finally:
        bystander.kill()
        bystander.wait()


# -- lesson 08: the whole factory under mutual TLS ----------------------------------------


def tls_connect(port: int, folder: Path | None, identity: str | None) -> str:
    """Try one MQTT CONNECT over TLS (``folder``: trust its CA, present ``identity``'s
    certificate) or in plain text (``folder`` None); return what happened, in one word."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if folder is not None:
        client.tls_set(
            ca_certs=str(folder / "ca.crt"),
            certfile=str(folder / f"{identity}.crt") if identity else None,
            keyfile=str(folder / f"{identity}.key") if identity else None,
        )
    answered = threading.Event()
    outcome: dict[str, str] = {}

    def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        outcome.setdefault("said", "refused" if reason.is_failure else "accepted")
        answered.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *_: (outcome.setdefault("said", "closed"), answered.set())
    try:
        client.connect("127.0.0.1", port, keepalive=10)
    except OSError:  # ssl.SSLError among them
        return "handshake refused"
    client.loop_start()
    try:
        answered.wait(5)
        return outcome.get("said", "no answer")
    finally:
        client.disconnect()
        client.loop_stop()


def test_up_mtls_runs_the_factory_with_a_certificate_per_program(make_sandbox, page, tmp_path):
    box = make_sandbox()
    assert box.up("--mtls").returncode == 0, f"sandbox up --mtls failed:\n{box.up_output}"
    folder = box.state.path / "certs"
    assert f"mqtts://127.0.0.1:{box.port}" in box.up_output and str(folder) in box.up_output
    assert "variant mtls+persistent" in box.up_output, box.up_output
    # the dashboard keeps working: every device online, the chocolate line, over mutual TLS
    page.goto(box.url)
    for device in DEVICES:
        expect(device_card(page, device)).to_have_attribute("data-status", "online", timeout=WAIT)
    expect(page.locator("#lines")).to_contain_text("s5_tempering", timeout=WAIT)
    page.screenshot(path=str(tmp_path / "sandbox-mtls.png"), full_page=True)
    # each program connected as the identity of its own certificate (use_identity_as_username)
    log = box.state.log_file("broker").read_text()
    for identity in (*DEVICES, "controller", "observer", "datacenter", "dashboard"):
        assert f"as {identity} " in log and f"u'{identity}'" in log, (identity, log[-3000:])
    assert "u'choc-line-a'" in log, log[-3000:]
    status = box.run("status", "--window", "1")
    assert status.returncode == 0 and "6/6 devices online" in status.stdout, status.stdout
    # the broker takes no plain MQTT and no client without a certificate from its CA
    assert tls_connect(box.port, folder, "observer") == "accepted"
    assert tls_connect(box.port, None, None) != "accepted"
    assert tls_connect(box.port, folder, None) != "accepted"


@pytest.mark.parametrize("flaw", ["missing", "expired"])
def test_up_mtls_with_a_bad_certificate_folder_is_one_sentence(make_sandbox, tmp_path, flaw):
    from mqtt_factory_lab.certificates import make_folder
    from mqtt_factory_lab.core.certificates import LabCertificates
    from mqtt_factory_lab.sandbox.tls import IDENTITIES

    folder = tmp_path / "certs"
    if flaw == "missing":
        make_folder(folder, ["press"])  # no certificate for the other programs
        expected = ["lacks", "conveyor.crt", f"python -m mqtt_factory_lab.certificates {folder}"]
    else:
        make_folder(folder, list(IDENTITIES))
        certs = LabCertificates.create(tmp_path / "scratch")
        (folder / "server.crt").write_bytes(certs.expired_server().cert.read_bytes())
        expected = [str(folder / "server.crt"), "not today", "certificate expired"]
    box = make_sandbox()
    result = box.up("--mtls", str(folder))
    assert result.returncode == 1, box.up_output
    first = box.up_output.splitlines()[0]
    for phrase in expected:
        assert phrase in first, f"{phrase!r} not in {first!r}"
    assert "Traceback" not in box.up_output and "_ssl.c" not in box.up_output, box.up_output
    assert not box.state.records(), "nothing may start with a bad certificate folder"


@pytest.mark.parametrize("container", [False, True], ids=["local", "docker"])
def test_the_mtls_broker_folder_carries_the_folders_certificates(tmp_path, container):
    """What ``up --mtls --acl`` gives mosquitto, locally or mounted into the container."""
    from mqtt_factory_lab.certificates import make_folder
    from mqtt_factory_lab.core.paths import DOCKER_DIR
    from mqtt_factory_lab.sandbox import broker as sandbox_broker

    folder = tmp_path / "certs"
    make_folder(folder, ["observer"])
    state = StateDir(tmp_path / "state")
    state.prepare()
    where = (
        {"port": 1883, "bind_address": None, "local_paths": False} if container else {"port": 1883}
    )
    rendered = sandbox_broker._render(state, True, str(folder), **where)
    certs = rendered.config_dir / "certs"
    for name in ("ca.crt", "server.crt", "server.key"):
        assert (certs / name).read_bytes() == (folder / name).read_bytes(), name
    key = (certs / "server.key").stat()
    if container:  # the image's mosquitto user (any uid) reads it; the folder above is ours
        assert key.st_mode & 0o777 == 0o644
        assert rendered.root.stat().st_mode & 0o777 == 0o700, "nobody else reaches the key"
    else:
        assert key.st_mode & 0o077 == 0, "a local broker's key is ours alone"
    assert (rendered.config_dir / "acl").read_text() == (DOCKER_DIR / "acl-machines").read_text()
    conf = (rendered.config_dir / "conf.d" / "mtls.conf").read_text()
    prefix = "/mosquitto/config/certs" if container else str(certs)
    assert f"certfile {prefix}/server.crt" in conf and "require_certificate true" in conf, conf

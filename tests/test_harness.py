"""The broker harness tested the way students meet it: real brokers, real failures, real output.

A lesson is only as good as the harness under it. When Mosquitto is missing,
a port is taken, a configuration is wrong or the broker dies mid-test, the
student must read what happened and what to do, not a stack trace. When pytest
is interrupted, times out or fails, no broker and no factory program may be
left running. These tests provoke each of those situations with a real
``mosquitto`` and check the words the harness prints and the processes it
leaves.

Many of them run pytest itself in a child process (``run_pytest``), on the
lessons or on the small test files in ``tests/harness_support/``, because that
is the only honest way to see a failure report, an exit status or what
happens after SIGINT. Every child gets a ``TMPDIR`` of its own (``child_tmp``):
the local broker keeps its files there, so any ``mosquitto`` whose command
line mentions that folder belongs to the child run and to no other test, which
keeps the leftover checks exact under ``pytest -n 2``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from mqtt_factory_lab.brokers import (
    CONFIG,
    LOG,
    RESTART,
    BrokerStartError,
    BrokerUnavailable,
    CapabilityMissing,
    create_broker,
    resolve_backend,
)
from mqtt_factory_lab.brokers import local as local_backend
from mqtt_factory_lab.brokers.base import free_port
from mqtt_factory_lab.brokers.config import BrokerConfigError
from mqtt_factory_lab.brokers.external import ExternalBroker, parse_url
from mqtt_factory_lab.brokers.local import LocalMosquitto, find_mosquitto
from mqtt_factory_lab.core.client import MQTTTimeout
from mqtt_factory_lab.core.process import ChildProcess, ProcessTimeout, wait_reaped, wait_until

REPO = Path(__file__).resolve().parent.parent
SUPPORT = Path(__file__).resolve().parent / "harness_support"
NO_DOCKER = "unix:///nonexistent/mqtt-lab-test/docker.sock"
READY_LINE = r"mosquitto version \S+ running"
#: no cache files in the repository; hypothesis' plugin only costs start-up time here
CHILD_OPTIONS = ["-p", "no:cacheprovider", "-p", "no:hypothesispytest"]

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None,
    reason="these tests exercise the local backend, and the mosquitto executable is not installed",
)


# -- helpers: child pytest runs and the processes they leave ------------------------


@dataclass
class Run:
    """A finished child pytest run."""

    returncode: int
    output: str

    def explain(self) -> str:
        return f"exit status {self.returncode}; its output:\n{self.output[-6000:]}"


def child_env(child_tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a child pytest: ours minus anything that would steer it.

    ``PYTEST_*`` (xdist worker ids, PYTEST_ADDOPTS) and ``MQTT_LAB_*`` (backend,
    URL) from the outer run are dropped, so each child says exactly what it uses.
    ``TMPDIR`` is ``child_tmp``, which makes the child's brokers findable, and
    ``LAB_MARKER`` names it for the child's own programs.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MQTT_LAB_"))}
    env.update(
        PYTHONPATH=str(REPO), TMPDIR=str(child_tmp), PYTHONUNBUFFERED="1", LAB_MARKER=str(child_tmp)
    )
    env.update(extra)
    return env


def start_pytest(
    args: list[str], *, cwd: Path, env: dict[str, str], output: Path
) -> subprocess.Popen[bytes]:
    """Start ``python -m pytest ARGS`` writing everything it prints to ``output``."""
    with open(output, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pytest", *CHILD_OPTIONS, *args],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def finish(process: subprocess.Popen[bytes], output: Path, timeout: float) -> Run:
    """Wait for a child run; if it hangs, stop it the way a user would (TERM, then KILL)."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        pytest.fail(
            f"the child pytest did not finish within {timeout}s:\n{output.read_text()[-4000:]}"
        )
    return Run(process.returncode, output.read_text(errors="replace"))


def run_pytest(
    args: list[str], *, cwd: Path, env: dict[str, str], tmp_path: Path, timeout: float = 60
) -> Run:
    """Run a child pytest to the end (output in ``tmp_path/out.txt``)."""
    output = tmp_path / "out.txt"
    return finish(start_pytest(args, cwd=cwd, env=env, output=output), output, timeout)


def child_project(tmp_path: Path, case: str) -> Path:
    """A tiny project in ``tmp_path/project`` that loads the lab plugin, with one test file.

    It has its own ``pytest.ini``, so the child's rootdir and settings are its
    own and not the lab's ``pyproject.toml``.
    """
    project = tmp_path / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\npython_files = test_*.py\n")
    (project / "conftest.py").write_text('pytest_plugins = ["mqtt_factory_lab.plugin"]\n')
    shutil.copyfile(SUPPORT / case, project / "test_case.py")
    return project


def processes_mentioning(marker: str) -> dict[int, str]:
    """Living processes (zombies excluded) whose command line contains ``marker``."""
    found = {}
    for process in psutil.process_iter(["cmdline", "status"]):
        command = " ".join(process.info["cmdline"] or ())
        if marker in command and process.info["status"] != psutil.STATUS_ZOMBIE:
            found[process.pid] = command
    return found


def alive(pids: list[int]) -> dict[int, str]:
    """Those of ``pids`` that still run (not zombies), with their command lines."""
    running = {}
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.status() != psutil.STATUS_ZOMBIE:
                running[pid] = " ".join(process.cmdline())
        except psutil.NoSuchProcess:
            continue
    return running


def wait_for_file(
    path: Path, process: subprocess.Popen[bytes], output: Path, timeout: float
) -> str:
    """Poll for a file the child writes once its brokers run; fail early if the child exits."""
    try:
        wait_until(path.exists, timeout, stop_early=lambda: process.poll() is not None)
        return path.read_text()
    except ProcessTimeout:
        pass
    if process.poll() is not None:
        pytest.fail(f"the child pytest exited before its test was ready:\n{output.read_text()}")
    process.kill()
    process.wait(5)
    pytest.fail(f"the child's test was not ready within {timeout}s:\n{output.read_text()}")


def assert_nothing_left(child_tmp: Path, pids: list[int], how: str) -> None:
    """No broker, no role and no broker folder of the child run may survive it."""
    left = alive(pids)
    assert not left, (
        f"after the child pytest {how}, these processes it started still run:\n"
        + "\n".join(f"    {pid}: {args}" for pid, args in left.items())
        + "\nEvery broker and factory program must be stopped when pytest ends, whatever ended it."
    )
    strays = processes_mentioning(str(child_tmp))
    assert not strays, (
        f"after the child pytest {how}, processes using its temporary folder still run: {strays}"
    )
    folders = sorted(p.name for p in child_tmp.glob("mqtt-lab-*"))
    assert not folders, (
        f"after the child pytest {how}, broker folders or role logs were left in TMPDIR: {folders}"
    )


@pytest.fixture
def child_tmp() -> Iterator[Path]:
    """``TMPDIR`` for a child pytest: a fresh folder in the system's temp folder.

    Not ``tmp_path``: pytest makes that 0700, and Mosquitto started by root
    drops to the ``mosquitto`` user, which must still reach the ACL file and
    the database in the broker folders created here.
    """
    folder = Path(tempfile.mkdtemp(prefix="mqtt-lab-harness-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def local_mosquitto(direct_broker: Callable[..., LocalMosquitto]) -> Callable[..., LocalMosquitto]:
    """Start :class:`LocalMosquitto` brokers directly (no plugin); all are closed after the test."""
    return functools.partial(direct_broker, LocalMosquitto)


@pytest.fixture
def no_mosquitto(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make this process see a machine without Mosquitto and without Docker.

    ``MQTT_LAB_MOSQUITTO`` names an absolute path that does not exist, so
    neither ``PATH`` nor the sbin folders ``find_mosquitto`` also searches can
    supply one; ``PATH`` is emptied for good measure, and ``DOCKER_HOST`` points
    at a socket nobody serves.
    """
    monkeypatch.setenv("MQTT_LAB_MOSQUITTO", "/nonexistent/mosquitto")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)


# -- choosing a backend -------------------------------------------------------------


@needs_mosquitto
def test_local_backend_is_chosen_when_mosquitto_is_installed():
    assert resolve_backend("local") == "local"


def test_external_backend_needs_a_url():
    with pytest.raises(BrokerUnavailable, match="--broker-url mqtt://HOST:PORT"):
        resolve_backend("external")
    with pytest.raises(BrokerUnavailable, match="needs --broker-url"):
        create_broker("external", url=None)


@pytest.mark.parametrize("requested", ["auto", "external"])
def test_a_broker_url_makes_the_backend_external(requested):
    assert resolve_backend(requested, "mqtt://broker.example:1883") == "external", (
        "--broker-url means 'use the broker I run': auto (and external) must pick the external "
        "backend without probing for Docker or Mosquitto"
    )


def test_unknown_backend_is_refused_with_the_choices():
    with pytest.raises(BrokerUnavailable, match=r"'kubernetes'.*auto.*local.*docker.*external"):
        resolve_backend("kubernetes")


@needs_mosquitto
def test_auto_falls_back_to_local_without_docker(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    assert resolve_backend("auto") == "local"


@needs_mosquitto
def test_find_mosquitto_honours_mqtt_lab_mosquitto(monkeypatch, tmp_path, local_mosquitto):
    own = tmp_path / "bin" / "my-mosquitto"
    own.parent.mkdir()
    own.symlink_to(find_mosquitto())
    monkeypatch.setenv("MQTT_LAB_MOSQUITTO", str(own))
    assert find_mosquitto() == str(own)
    monkeypatch.setenv("MQTT_LAB_MOSQUITTO", "my-mosquitto")
    monkeypatch.setenv("PATH", str(own.parent))
    assert find_mosquitto() == str(own), "a bare name is looked up on PATH"
    broker = local_mosquitto()
    assert broker.executable == str(own) and broker.is_running()


def test_without_mosquitto_and_docker_every_way_out_is_named(no_mosquitto):
    assert find_mosquitto() is None
    with pytest.raises(BrokerUnavailable) as caught:
        resolve_backend("auto")
    message = str(caught.value)
    for way_out in (
        "apt-get install -y mosquitto",
        "brew install mosquitto",
        "start Docker",
        "--broker-url",
    ):
        assert way_out in message, f"the advice must mention {way_out!r}; it was:\n{message}"


def test_local_backend_without_mosquitto_says_how_to_install_it(no_mosquitto):
    with pytest.raises(BrokerUnavailable) as local:
        resolve_backend("local")
    with pytest.raises(BrokerUnavailable) as direct:
        LocalMosquitto()
    for message in (str(local.value), str(direct.value)):
        for way_out in ("apt-get install -y mosquitto", "--broker-backend=docker", "--broker-url"):
            assert way_out in message, f"the advice must mention {way_out!r}; it was:\n{message}"


def test_docker_backend_without_an_engine_says_so(no_mosquitto):
    with pytest.raises(BrokerUnavailable, match="needs a Docker engine"):
        resolve_backend("docker")


@pytest.mark.parametrize(
    ("backend", "advice"),
    [
        ("local", ["apt-get install -y mosquitto", "--broker-backend=docker", "--broker-url"]),
        ("auto", ["apt-get install -y mosquitto", "start Docker", "--broker-url"]),
    ],
)
def test_a_lesson_run_without_mosquitto_tells_the_student_what_to_do(
    tmp_path, child_tmp, backend, advice
):
    path = os.pathsep.join(
        d
        for d in os.environ.get("PATH", "").split(os.pathsep)
        if d and not (Path(d) / "mosquitto").exists()
    )
    env = child_env(
        child_tmp, MQTT_LAB_MOSQUITTO="/nonexistent/mosquitto", PATH=path, DOCKER_HOST=NO_DOCKER
    )
    env.pop("DOCKER_CONTEXT", None)
    run = run_pytest(
        ["labs/03_retained.py", "-x", "--timeout=30", f"--broker-backend={backend}"],
        cwd=REPO,
        env=env,
        tmp_path=tmp_path,
    )
    assert run.returncode != 0, f"a lesson without a broker must not pass; {run.explain()}"
    for way_out in advice:
        assert way_out in run.output, f"the output must mention {way_out!r}; {run.explain()}"
    assert "Traceback" not in run.output, (
        f"a missing broker is the student's setup, not a bug: advice, no traceback; {run.explain()}"
    )
    assert "During handling of the above exception" not in run.output, (
        f"the advice is printed once, without a chained exception; {run.explain()}"
    )


# -- starting: taken ports and broken configurations ----------------------------------


@needs_mosquitto
def test_a_taken_port_is_reported_with_the_brokers_own_words():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        broker = LocalMosquitto(port=port)
        with pytest.raises(BrokerStartError) as caught, broker:
            pass
    message = str(caught.value)
    assert "Error: Address already in use" in message, (
        f"the broker's log line is missing:\n{message}"
    )
    assert f"port {port} is taken by another program" in message, message
    assert "let the harness pick a free port" in message, message
    assert not broker.is_running() and not broker.workdir.exists(), "a failed start leaves nothing"


@needs_mosquitto
def test_an_automatic_port_taken_at_the_last_moment_is_replaced(monkeypatch, local_mosquitto):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        offers = iter([taken])
        # The kernel's free port can be grabbed by another program before
        # mosquitto binds it; simulate exactly that for the first choice.
        monkeypatch.setattr(local_backend, "free_port", lambda: next(offers, None) or free_port())
        broker = local_mosquitto()
        assert broker.is_running() and broker.port != taken
        assert "Address already in use" in broker.log(), (
            "the failed first attempt stays in the broker's log, so a later failure can be explained"
        )


@needs_mosquitto
def test_a_configuration_error_quotes_the_broker_and_lists_the_files():
    broker = LocalMosquitto("open", extra_config="this_is_not_an_option 1")
    with pytest.raises(BrokerStartError) as caught, broker:
        pass
    message = str(caught.value)
    assert 'Unknown configuration variable "this_is_not_an_option"' in message, message
    for name in ("mosquitto.conf", "conf.d/open.conf", "conf.d/zz-extra.conf"):
        assert name in message, f"the configuration file {name} must be listed:\n{message}"
    assert "rejected its configuration" in message, message


@needs_mosquitto
@pytest.mark.parametrize("variant", ["closed", "acl+nope", ""])
def test_an_unknown_variant_names_the_known_ones(variant):
    with pytest.raises(BrokerConfigError) as caught:
        LocalMosquitto(variant)
    message = str(caught.value)
    for known in ("acl", "open", "persistent"):
        assert known in message, f"the known variant {known!r} must be named:\n{message}"


# -- a broker that dies under a test ----------------------------------------------------


@needs_mosquitto
def test_a_broker_killed_mid_test_is_reported_as_not_running_with_its_log(tmp_path, child_tmp):
    project = child_project(tmp_path, "case_broker_killed.py")
    run = run_pytest(
        ["test_case.py", "--timeout=30", "--broker-backend=local"],
        cwd=project,
        env=child_env(child_tmp),
        tmp_path=tmp_path,
    )
    assert run.returncode == 1 and "1 failed, 2 passed" in run.output, run.explain()
    failure = run.output.split("test_dedicated_broker_killed_while_waiting", 1)[-1]
    assert "is NOT running (it exited or was killed)" in failure, (
        f"the timeout must say the broker died, or it reads as a lost message; {run.explain()}"
    )
    section = failure.partition("broker open (local)")[2]
    assert section, f"the failure report must have a section for the broker; {run.explain()}"
    assert "its log during this test" in section and "Received SUBSCRIBE from" in section, (
        f"the broker section must show the broker's log during the test; {run.explain()}"
    )
    assert "mqtt-factory-lab: broker backend local" in run.output, run.explain()
    assert_nothing_left(child_tmp, [], "finished")


@needs_mosquitto
def test_a_stopped_broker_ends_on_its_sigterm_and_logs_nothing_else(local_mosquitto):
    """The fast stop (SIGTERM, then SIGSTOP/SIGCONT to end the broker's blocked wait) is still
    a clean stop: exit status 0, and the log's last line is Mosquitto's own farewell."""
    broker = local_mosquitto("open")
    process = broker.process
    connections = broker.log().count("New connection")
    broker.stop()

    assert process.process.returncode == 0, (
        f"the broker must exit on its SIGTERM (status 0), not be killed: {process.process.returncode}"
    )
    last = broker.log().strip().splitlines()[-1]
    assert last.endswith("terminating"), f"nothing may follow the broker's farewell: {last!r}"
    assert broker.log().count("New connection") == connections, "stopping must not connect to it"


# -- restarting --------------------------------------------------------------------------


@needs_mosquitto
@pytest.mark.parametrize(("variant", "keeps"), [("persistent", True), ("open", False)])
def test_restart_keeps_retained_state_only_with_persistence(
    local_mosquitto, mqtt_client, topic_root, variant, keeps
):
    broker = local_mosquitto(variant)
    port = broker.port
    topic = f"{topic_root}/state/press-01"
    publisher = mqtt_client(broker=broker)
    publisher.publish(topic, {"state": "running"}, qos=1, retain=True)
    publisher.disconnect()

    broker.restart()

    assert broker.port == port, "a restarted broker must keep its address; clients reconnect to it"
    dashboard = mqtt_client(broker=broker)
    dashboard.subscribe(topic, qos=1)
    dashboard.sync()
    assert len(dashboard.received(topic)) == (1 if keeps else 0), (
        f"variant {variant!r}: the retained state must {'survive' if keeps else 'not survive'} "
        f"a restart; the late subscriber got {dashboard.received(topic)}"
    )
    starts = re.findall(READY_LINE, broker.log())
    assert len(starts) == 2, f"log() must keep the lines from before the restart; got {starts}"


@needs_mosquitto
def test_a_killed_persistent_broker_loses_what_it_had_not_saved(
    local_mosquitto, mqtt_client, topic_root
):
    broker = local_mosquitto("persistent")
    topic = f"{topic_root}/state/oven-01"
    publisher = mqtt_client(broker=broker)
    publisher.publish(topic, {"state": "running"}, qos=1, retain=True)
    publisher.disconnect()

    broker.kill()
    assert not broker.is_running() and "NOT running" in broker.health()
    broker.start()

    dashboard = mqtt_client(broker=broker)
    dashboard.subscribe(topic, qos=1)
    dashboard.assert_nothing_received(
        topic,
        why="kill() is a crash: Mosquitto saves its database at a clean stop or every "
        "autosave_interval (30 s), so a retained message from a second ago is lost",
    )


@needs_mosquitto
def test_wait_for_log_finds_new_lines_and_explains_a_miss(local_mosquitto, mqtt_client):
    broker = local_mosquitto()
    mark = broker.log_mark()
    client = mqtt_client(broker=broker)
    line = broker.wait_for_log(
        rf"New client connected .* as {re.escape(client.client_id)}", since=mark
    )
    assert client.client_id in line
    with pytest.raises(AssertionError, match=r"never logged a line matching 'no such line'.*\n.*"):
        broker.wait_for_log("no such line", timeout=0.2, since=mark)


# -- the external backend ------------------------------------------------------------


@needs_mosquitto
def test_external_broker_uses_a_running_broker_but_cannot_control_it(
    local_mosquitto, mqtt_client, topic_root
):
    running = local_mosquitto()
    external = ExternalBroker(running.url)
    with external:
        assert (external.host, external.port) == (running.host, running.port)
        assert external.capabilities == frozenset() and external.is_running()
        client = mqtt_client(broker=external)
        client.subscribe(f"{topic_root}/#", qos=1)
        client.publish(f"{topic_root}/status/press-01", "online", qos=1)
        assert client.wait_for_message(f"{topic_root}/#").text == "online"
        for forbidden in (external.restart, external.kill, external.log):
            with pytest.raises(CapabilityMissing, match="external backend cannot"):
                forbidden()
        assert external.log_mark() == 0 and "no broker log" in external.tail()
        client.disconnect()
        running.kill()
        assert not external.is_running() and "NOT running" in external.health()


def test_external_broker_that_does_not_answer_says_what_to_check():
    broker = ExternalBroker(f"mqtt://127.0.0.1:{free_port()}", start_timeout=0.3)
    with pytest.raises(BrokerStartError, match=r"no MQTT broker accepted a CONNECT.*--broker-url"):
        broker.start()


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("mqtt://broker.example:1884", ("broker.example", 1884)),
        ("tcp://10.0.0.5", ("10.0.0.5", 1883)),
        ("localhost", ("localhost", 1883)),
        ("mqtt://[::1]:18830", ("::1", 18830)),
    ],
)
def test_parse_url_accepts_mqtt_addresses(url, address):
    assert parse_url(url) == address


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://broker.example:1883", "must look like mqtt://HOST:PORT"),
        ("mqtt://broker.example:port", "invalid port"),
        ("mqtt://broker.example:99999", "invalid port"),
        ("mqtt://:1883", "no host"),
    ],
)
def test_parse_url_rejects_what_is_not_an_mqtt_address(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse_url(url)


@needs_mosquitto
def test_a_lesson_against_an_external_broker_skips_what_it_cannot_control(
    tmp_path, child_tmp, local_mosquitto
):
    running = local_mosquitto()
    run = run_pytest(
        ["labs/03_retained.py", "-rs", "--timeout=30", f"--broker-url={running.url}"],
        cwd=REPO,
        env=child_env(child_tmp),
        tmp_path=tmp_path,
    )
    assert run.returncode == 0 and " passed" in run.output, run.explain()
    skipped = [line for line in run.output.splitlines() if line.startswith("SKIPPED")]
    assert any("the external broker is not the lab's to control" in line for line in skipped), (
        f"the persistence experiment restarts the broker, which the lab may not do to someone "
        f"else's broker: it must be skipped, saying so; {run.explain()}"
    )
    assert f"mqtt-factory-lab: broker backend auto ({running.url})" in run.output, run.explain()


# -- nothing is left behind ------------------------------------------------------------------


@needs_mosquitto
def test_a_failing_run_leaves_no_broker_or_role_behind(tmp_path, child_tmp):
    project = child_project(tmp_path, "case_leftovers.py")
    ready = tmp_path / "ready.json"
    run = run_pytest(
        ["test_case.py", "-k", "fails", "--timeout=30", "--broker-backend=local"],
        cwd=project,
        env=child_env(child_tmp, LAB_READY_FILE=str(ready)),
        tmp_path=tmp_path,
    )
    assert run.returncode == 1 and "1 failed" in run.output, run.explain()
    assert ready.exists(), f"the child test never reported its processes; {run.explain()}"
    assert_nothing_left(child_tmp, json.loads(ready.read_text()), "failed")


@needs_mosquitto
@pytest.mark.parametrize(
    ("how", "signum", "extra_args", "status"),
    [
        pytest.param("was interrupted (Ctrl-C)", signal.SIGINT, [], 2, id="SIGINT"),
        pytest.param("was terminated", signal.SIGTERM, [], 2, id="SIGTERM"),
        pytest.param("timed out", None, ["--timeout=2"], 1, id="pytest-timeout"),
    ],
)
def test_an_interrupted_run_leaves_no_broker_or_role_behind(
    tmp_path, child_tmp, how, signum, extra_args, status
):
    project = child_project(tmp_path, "case_leftovers.py")
    ready = tmp_path / "ready.json"
    output = tmp_path / "out.txt"
    process = start_pytest(
        ["test_case.py", "-k", "blocks", "--timeout=30", *extra_args, "--broker-backend=local"],
        cwd=project,
        env=child_env(child_tmp, LAB_READY_FILE=str(ready)),
        output=output,
    )
    try:
        pids = json.loads(wait_for_file(ready, process, output, timeout=20))
        started = alive(pids)
        assert len(started) == len(pids) == 3, f"two brokers and a role should run: {started}"
        if signum is not None:
            process.send_signal(signum)
        run = finish(process, output, timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    assert run.returncode == status, f"pytest {how} should exit with {status}; {run.explain()}"
    assert_nothing_left(child_tmp, pids, how)


# -- the mqtt_client fixture ----------------------------------------------------------------


def test_recorded_messages_keep_qos_retain_dup_and_mqtt5_properties(mqtt_client, topic_root):
    topic = f"{topic_root}/telemetry/press-01/temperature"
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = [("line", "A"), ("shift", "night")]
    properties.MessageExpiryInterval = 3600
    properties.ContentType = "application/json"
    properties.CorrelationData = b"batch-7"
    publisher = mqtt_client(protocol="5")
    publisher.publish(topic, {"value": 71.5}, qos=2, retain=True, properties=properties)

    subscriber = mqtt_client(protocol="5")
    subscriber.subscribe(topic, qos=1)
    message = subscriber.wait_for_message(topic)
    legacy = mqtt_client(protocol="3.1.1")
    legacy.subscribe(topic, qos=2)
    old = legacy.wait_for_message(topic)

    assert (message.qos, message.retain, message.dup) == (1, True, False), (
        "published at QoS 2 to a QoS 1 subscription: delivered at QoS 1, retained (stored copy), "
        f"not a duplicate; got qos={message.qos} retain={message.retain} dup={message.dup}"
    )
    assert message.json() == {"value": 71.5}
    props = message.properties
    assert [tuple(p) for p in props["UserProperty"]] == [("line", "A"), ("shift", "night")], props
    assert props["ContentType"] == "application/json", props
    assert bytes.fromhex(props["CorrelationData"]) == b"batch-7", props
    assert 3590 <= props["MessageExpiryInterval"] <= 3600, (
        f"the broker forwards the *remaining* expiry of a stored message; got {props}"
    )
    assert (old.qos, old.retain, old.properties) == (2, True, {}), (
        f"an MQTT 3.1.1 client gets the message at QoS 2 and without properties; got {old}"
    )
    publisher.publish(topic, b"", qos=1, retain=True)  # leave the shared broker as we found it


def test_wait_for_message_timeout_lists_the_near_misses(mqtt_client, topic_root):
    client = mqtt_client()
    client.subscribe(f"{topic_root}/#", qos=1)
    client.publish(f"{topic_root}/telemetry/press-01/temperature", "71.5", qos=1)
    client.wait_for_message(f"{topic_root}/telemetry/#")

    with pytest.raises(MQTTTimeout) as caught:
        client.wait_for_message(f"{topic_root}/alarms/#", timeout=0.2)
    message = str(caught.value)
    assert f"a message matching '{topic_root}/alarms/#'" in message, message
    assert "It received instead (1 in all" in message, message
    assert f"{topic_root}/telemetry/press-01/temperature [q1] 71.5" in message, message
    assert "is running" in message, f"the broker's health belongs in a timeout message:\n{message}"

    silent = mqtt_client()
    with pytest.raises(MQTTTimeout, match="It received nothing at all"):
        silent.wait_for_messages(2, timeout=0.1)


def test_sync_proves_delivery_and_assert_nothing_received_uses_it(mqtt_client, topic_root):
    subscriber = mqtt_client()
    subscriber.subscribe(f"{topic_root}/telemetry/#", qos=1)
    publisher = mqtt_client()
    for seq in range(20):
        publisher.publish(f"{topic_root}/telemetry/conveyor-01/speed", {"seq": seq}, qos=1)

    subscriber.sync()
    assert [m.json()["seq"] for m in subscriber.received()] == list(range(20)), (
        "every message acknowledged before the sync round trip must have arrived, in order, "
        "without waiting any further"
    )
    subscriber.assert_nothing_received(f"{topic_root}/alarms/#")

    publisher.publish(f"{topic_root}/alarms/conveyor-01/speed", {"state": "raised"}, qos=1)
    with pytest.raises(AssertionError) as caught:
        subscriber.assert_nothing_received(f"{topic_root}/telemetry/conveyor-01/#", why="HINT-1")
    message = str(caught.value)
    assert "but received 20" in message and '{"seq":0}' in message and "HINT-1" in message, message
    subscriber.assert_nothing_received(
        f"{topic_root}/alarms/#", why="not subscribed to alarms, so none may arrive"
    )


# -- the command line ---------------------------------------------------------------------


def test_help_lists_the_lab_options(tmp_path):
    run = run_pytest(["--help"], cwd=REPO, env=child_env(tmp_path), tmp_path=tmp_path, timeout=30)
    assert run.returncode == 0, run.explain()
    for option in (
        "--broker-backend",
        "--broker-url",
        "--docker-image",
        "--docker-network",
        "--lab-seed",
    ):
        assert option in run.output, f"`pytest --help` must list {option}; {run.explain()}"


def test_markers_lists_lesson_and_broker_needs(tmp_path):
    run = run_pytest(
        ["--markers"], cwd=REPO, env=child_env(tmp_path), tmp_path=tmp_path, timeout=30
    )
    assert run.returncode == 0, run.explain()
    assert "@pytest.mark.lesson(number)" in run.output, run.explain()
    assert "@pytest.mark.broker_needs(*capabilities)" in run.output, run.explain()
    for capability in (RESTART, CONFIG, LOG):
        assert f"'{capability}'" in run.output, run.explain()


def test_a_free_port_lies_below_the_range_client_sockets_take() -> None:
    """A server port from the ephemeral range can be taken by any outgoing client socket
    before the server binds it; ``free_port`` picks below that range, and the port binds."""
    from mqtt_factory_lab.brokers.base import LISTEN_PORTS, free_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(LISTEN_PORTS.start <= p < min(low, LISTEN_PORTS.stop) for p in ports), ports
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports.pop()))


# -- waits that end on the event ------------------------------------------------------------


def test_wait_reaped_wakes_at_the_exit_and_keeps_its_status() -> None:
    program = ChildProcess([sys.executable, "-c", "import sys; sys.exit(3)"], name="exits")
    with program:
        assert wait_reaped(program.process, 30), "the program exits by itself"
        assert program.process.returncode == 3, "Popen reaped it: its status is the program's"
        assert wait_reaped(program.process, 0), "a reaped program: at once"


def test_wait_reaped_gives_up_at_its_deadline_and_stop_still_ends_the_program() -> None:
    sleeper = ChildProcess([sys.executable, "-c", "import time; time.sleep(60)"], name="sleeper")
    with sleeper:
        assert not wait_reaped(sleeper.process, 0.05)
        assert sleeper.is_running()
        assert sleeper.stop() == -signal.SIGTERM
    assert not sleeper.is_running()


def test_wait_until_checks_soon_first_then_every_interval() -> None:
    checks: list[float] = []
    start = time.monotonic()

    def condition() -> bool:
        checks.append(time.monotonic() - start)
        return len(checks) == 4

    wait_until(condition, timeout=5, interval=0.5)

    assert checks[-1] < 0.25, f"the first checks come within ms, not at the interval: {checks}"
    with pytest.raises(ProcessTimeout):
        wait_until(lambda: False, timeout=0.05, interval=1.0)

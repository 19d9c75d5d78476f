"""Conformance mode: any broker by URL, a CONNECT that explains itself, the capability probe,
statement tags and the report, proven on Mosquitto and on a second broker, amqtt.

amqtt (pure Python, pinned in requirements.lock) speaks MQTT 3.1.1 only: the lab's MQTT 5
experiments must be skipped once, with the broker's own answer as the reason, and nothing
may fail that amqtt does right. Brokers here are started directly (not through the pool),
because the runs under test are child pytests pointed at them with ``--broker-url``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mqtt_factory_lab.brokers.base import free_port, mqtt_ping
from mqtt_factory_lab.brokers.local import LocalMosquitto, find_mosquitto
from mqtt_factory_lab.conformance.capabilities import BrokerNotReady, probe
from mqtt_factory_lab.core.client import RecordingClient
from mqtt_factory_lab.core.connection import (
    ConnectionSettings,
    mask_url,
    ready,
    try_connect,
)
from mqtt_factory_lab.core.factory import program_env
from mqtt_factory_lab.core.process import ChildProcess, ProcessTimeout, wait_until
from sim.connection import BrokerSettings

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Pa55"  # the password of the login broker; must never be printed

needs_mosquitto = pytest.mark.skipif(
    find_mosquitto() is None, reason="these tests start mosquitto with the local backend"
)


# -- brokers ------------------------------------------------------------------------------


@dataclass
class Amqtt:
    """An amqtt broker: TCP on ``port``, WebSockets on ``ws_port``."""

    process: ChildProcess
    port: int
    ws_port: int

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def amqtt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Amqtt]:
    """amqtt 0.12 started as a child process (stopped, by PID, at the end of the module)."""
    folder = tmp_path_factory.mktemp("amqtt")
    port, ws_port = free_port(), free_port()
    config = folder / "broker.yaml"
    config.write_text(
        "listeners:\n"
        f"  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
        f"  ws:\n    type: ws\n    bind: 127.0.0.1:{ws_port}\n"
        "plugins:\n"
        "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
        "  amqtt.plugins.sys.broker.BrokerSysPlugin:\n    sys_interval: 10\n"
        # refuses subscriptions to 'top-secret' (and a few others): a refusal to observe
        "  amqtt.plugins.topic_checking.TopicTabooPlugin: {}\n"
    )
    process = ChildProcess(
        [
            sys.executable,
            "-c",
            "from amqtt.scripts.broker_script import main; main()",
            "-c",
            str(config),
        ],
        name="amqtt",
        cwd=folder,
    ).start()
    try:
        wait_until(
            lambda: mqtt_ping("127.0.0.1", port, timeout=0.5),
            20,
            interval=0.05,
            stop_early=lambda: not process.is_running(),
        )
    except ProcessTimeout:
        output = process.output()
        process.close()
        pytest.fail(f"amqtt did not start:\n{output[-3000:]}", pytrace=False)
    yield Amqtt(process, port, ws_port)
    process.close()


@pytest.fixture
def login_broker(tmp_path: Path) -> Iterator[LocalMosquitto]:
    """Mosquitto that wants a login: user ``lab``, password :data:`SECRET`, no anonymous."""
    passwords = tmp_path / "passwords"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwords), "lab", SECRET],
        check=True,
        capture_output=True,
    )
    broker = LocalMosquitto(
        "open", extra_config=f"allow_anonymous false\npassword_file {passwords}\n"
    )
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (not an MQTT broker)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    server.close()


# -- child runs ---------------------------------------------------------------------------


@dataclass
class ChildRun:
    returncode: int
    output: str
    seconds: float
    outcomes: dict[str, str]
    messages: dict[str, str]

    def explain(self) -> str:
        return f"exit status {self.returncode} after {self.seconds:.1f}s; output:\n{self.output[-5000:]}"


def child_pytest(
    tmp_path: Path, *args: str, password: str | None = None, timeout: float = 120
) -> ChildRun:
    """``pytest ARGS`` in a child (no xdist, nothing inherited from MQTT_LAB_*), JUnit read back."""
    xml = tmp_path / f"junit-{time.monotonic_ns()}.xml"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MQTT_LAB_"))}
    if password is not None:
        env["MQTT_LAB_BROKER_PASSWORD"] = password
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-rs",
            f"--junitxml={xml}",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.monotonic() - started
    outcomes, messages = junit_outcomes(xml)
    return ChildRun(done.returncode, done.stdout + done.stderr, seconds, outcomes, messages)


def junit_outcomes(xml: Path) -> tuple[dict[str, str], dict[str, str]]:
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    if not xml.exists():
        return outcomes, messages
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name", "")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
                messages[name] = (child.get("message") or "") + "\n" + (child.text or "")
        outcomes[name] = outcome
    return outcomes, messages


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker.example", ("broker.example", 1883, "tcp", False)),
        ("mqtts://broker.example", ("broker.example", 8883, "tcp", True)),
        ("ws://broker.example:9001/ws", ("broker.example", 9001, "websockets", False)),
        ("wss://broker.example", ("broker.example", 443, "websockets", True)),
        ("tcp://10.0.0.5:1884", ("10.0.0.5", 1884, "tcp", False)),
    ],
)
def test_a_broker_url_names_host_port_transport_and_tls(url, expected):
    settings = ConnectionSettings.from_url(url)
    assert (settings.host, settings.port, settings.transport, settings.tls) == expected


def test_credentials_in_the_url_are_used_and_never_shown():
    settings = ConnectionSettings.from_url(f"mqtts://lab:{SECRET}@broker.example:8883")
    assert (settings.username, settings.password) == ("lab", SECRET)
    for shown in (settings.display_url(), settings.describe(), repr(settings)):
        assert SECRET not in shown, f"the password leaked into {shown!r}"
    assert settings.display_url() == "mqtts://lab:****@broker.example:8883"
    assert SECRET not in mask_url(f"--broker-url=mqtt://lab:{SECRET}@h:1")
    with pytest.raises(ValueError, match=r"must look like mqtt://HOST:PORT") as refused:
        ConnectionSettings.from_url(f"http://lab:{SECRET}@broker.example")
    assert SECRET not in str(refused.value)


def test_options_give_login_certificates_and_an_mqtt5_listener(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    settings = ConnectionSettings.from_options(
        "mqtt://broker.example:1883",
        mqtt5_url="mqtt://broker.example:1885",
        username="lab",
        ca=str(ca),
        environ={"MQTT_LAB_BROKER_PASSWORD": SECRET},
    )
    assert settings.password == SECRET and settings.tls, "a CA file turns TLS on"
    five = settings.for_protocol("5")
    assert (five.port, five.username, five.password, five.ca) == (1885, "lab", SECRET, str(ca))
    assert settings.for_protocol("3.1.1").port == 1883
    with pytest.raises(ValueError, match="go together"):
        ConnectionSettings.from_options("mqtt://h", cert=str(ca))
    with pytest.raises(ValueError, match="no such file"):
        ConnectionSettings.from_options("mqtt://h", ca=str(tmp_path / "missing.pem"))


def test_programs_get_the_same_settings_through_vf_variables(monkeypatch):
    monkeypatch.setenv("VF_USERNAME", "someone-else")  # a stale setting of the lab's own shell
    monkeypatch.setenv("VF_TLS_CA", "/elsewhere/ca.pem")
    settings = ConnectionSettings.from_url(f"wss://lab:{SECRET}@broker.example:8443/mqtt-ws")

    class External:
        host, port, connection = settings.host, settings.port, settings

    env = program_env(External(), "lab/t/factory", "3.1.1")
    seen = BrokerSettings.from_env(env)
    assert (seen.host, seen.port, seen.transport, seen.ws_path, seen.tls) == (
        "broker.example",
        8443,
        "websockets",
        "/mqtt-ws",
        True,
    )
    assert (seen.username, seen.password, seen.tls_ca) == ("lab", SECRET, None), (
        "the program must get the run's login, and none of the lab's stale VF_* variables"
    )
    plain = program_env(ConnectionSettings("127.0.0.1", 1883), "r", "5")
    assert "VF_USERNAME" not in plain and plain["VF_BROKER_PORT"] == "1883"


# -- a CONNECT that explains itself -----------------------------------------------------


def test_nothing_listening_is_named_at_once():
    outcome, _ = try_connect(ConnectionSettings("127.0.0.1", free_port()), "3.1.1")
    assert outcome.kind == "refused" and outcome.seconds < 1, outcome
    assert "refused the TCP connection" in outcome.sentence()
    assert "start the broker, or correct the host and port" in outcome.sentence()


def test_a_port_that_never_answers_mqtt_is_named_after_one_wait(silent_port):
    settings = ConnectionSettings("127.0.0.1", silent_port)
    started = time.monotonic()
    outcomes = ready(settings, timeout=0.5)
    assert [o.kind for o in outcomes] == ["no_connack"], (
        "silence is not MQTT: trying MQTT 5 after it would only wait again"
    )
    assert time.monotonic() - started < 1.5
    assert "is this an MQTT listener" in outcomes[0].sentence()


def test_tls_to_a_plain_listener_is_named_as_such(amqtt):
    outcome, _ = try_connect(
        ConnectionSettings.from_url(f"mqtts://127.0.0.1:{amqtt.port}"), "3.1.1"
    )
    assert outcome.kind in ("not_tls", "tls"), outcome
    assert "TLS" in outcome.sentence()


def test_mqtt5_refused_by_a_311_broker_quotes_its_connack(amqtt):
    outcome, _ = try_connect(ConnectionSettings.from_url(amqtt.url), "5")
    assert outcome.kind == "unsupported_protocol" and outcome.reason_code == 0x84, outcome
    assert "--broker-url-mqtt5" in outcome.sentence()


def test_websockets_reach_a_broker_through_the_same_settings(amqtt, topic_root):
    settings = ConnectionSettings.from_url(f"ws://127.0.0.1:{amqtt.ws_port}/mqtt")
    client = RecordingClient(settings.host, settings.port, protocol="3.1.1", connection=settings)
    client.connect()
    try:
        client.subscribe(f"{topic_root}/ws", qos=1)
        client.publish(f"{topic_root}/ws", b"over websockets", qos=1)
        assert client.wait_for_message(f"{topic_root}/ws").text == "over websockets"
    finally:
        client.disconnect()


@needs_mosquitto
def test_a_refused_client_says_why_and_stops_reconnecting(login_broker):
    client = RecordingClient(login_broker.host, login_broker.port, "lab-refused", protocol="5")
    with pytest.raises(ConnectionError, match=r"refused lab-refused .*Not authorized.*0x87"):
        client.connect()
    alive = [t.name for t in threading.enumerate() if "lab-refused" in t.name]
    assert not alive, f"a refused client must stop its network thread (it would reconnect): {alive}"
    outcome, _ = try_connect(login_broker.connection, "3.1.1")
    assert outcome.kind == "not_authorized" and "--broker-username" in outcome.sentence()


def max_qos_1(direct_broker) -> ConnectionSettings:
    """A Mosquitto listener with ``max_qos 1`` (MQTT 5 clients learn it from the CONNACK)."""
    port = free_port()
    direct_broker(LocalMosquitto, "open", extra_config=f"listener {port} 127.0.0.1\nmax_qos 1\n")
    return ConnectionSettings("127.0.0.1", port)


@needs_mosquitto
def test_a_broker_that_closes_the_connection_on_qos2_is_named_as_such(direct_broker, topic_root):
    settings = max_qos_1(direct_broker)
    client = RecordingClient(settings.host, settings.port, protocol="5")
    client.connect()
    assert client.connack["properties"].get("MaximumQoS") == 1
    try:
        with pytest.raises(
            ConnectionError, match=r"closed the connection before the PUBREC/PUBCOMP: .*0x9B"
        ):
            client.publish(f"{topic_root}/q2", b"x", qos=2, timeout=3)
    finally:
        client.disconnect()


def test_a_refused_subscription_is_named_as_such(amqtt, topic_root):
    client = RecordingClient("127.0.0.1", amqtt.port, protocol="3.1.1")
    client.connect()
    try:
        codes = client.subscribe("top-secret", qos=1)  # amqtt's taboo plugin refuses it
        assert codes[0].is_failure, f"amqtt was expected to refuse 'top-secret', SUBACK: {codes}"
        with pytest.raises(AssertionError, match=r"refused .*subscription to 'top-secret'"):
            client.granted_qos("top-secret")
        with pytest.raises(
            AssertionError, match=r"the broker refused the subscription to 'top-secret'"
        ):
            client.wait_for_message("top-secret", timeout=0.2)
    finally:
        client.disconnect()


# -- the capability probe -----------------------------------------------------------------


@needs_mosquitto
def test_mosquitto_has_every_capability(direct_broker):
    broker = direct_broker(LocalMosquitto, "open")
    found = probe(broker.connection)
    missing = [c.name for c in found.items.values() if not c.present]
    assert not missing, "\n".join(found.table())
    assert found.seconds < 3, f"the probe took {found.seconds:.1f}s"


def test_amqtt_lacks_mqtt5_and_shared_subscriptions_and_says_why(amqtt):
    found = probe(ConnectionSettings.from_url(amqtt.url))
    table = "\n".join(found.table())
    assert found.has("mqtt3") and found.has("retain") and found.has("wildcards"), table
    assert not found.has("mqtt5") and not found.has("shared_subscriptions"), table
    assert found.reason(["mqtt5"]) == (
        "the broker lacks MQTT 5: CONNACK 'Unsupported protocol version' (0x84) to an MQTT 5 CONNECT"
    )
    assert found.reason(["mqtt3", "retain"]) is None


@needs_mosquitto
def test_a_broker_that_grants_less_qos_loses_qos2_only(direct_broker):
    found = probe(max_qos_1(direct_broker))
    assert found.has("qos1") and not found.has("qos2"), "\n".join(found.table())
    assert "Maximum QoS 1" in found.items["qos2"].detail


def test_an_unreachable_broker_is_not_probed_further():
    with pytest.raises(BrokerNotReady, match=r"no MQTT broker accepted a CONNECT.*\n.*refused"):
        probe(ConnectionSettings("127.0.0.1", free_port()))


# -- whole runs ---------------------------------------------------------------------------

#: what amqtt 0.12.1 gets wrong, and the words the lab uses for it
AMQTT_VIOLATIONS = {
    "test_stored_state_comes_at_the_lower_of_its_qos_and_the_granted_qos[mqtt3.1.1-qos0]": (
        "delivered at the lower of the publish QoS"
    ),
    "test_wildcard_subscription_receives_every_matching_retained_topic[mqtt3.1.1]": (
        "must receive only topics its filter matches"
    ),
}


def test_lesson_03_on_amqtt_skips_mqtt5_once_and_fails_only_what_amqtt_gets_wrong(tmp_path, amqtt):
    run = child_pytest(tmp_path, "labs/03_retained.py", "-m", "broker", f"--broker-url={amqtt.url}")
    failed = {n for n, o in run.outcomes.items() if o in ("failed", "error")}
    assert failed == set(AMQTT_VIOLATIONS), (
        "a failure on amqtt must be amqtt's, not the lab's: " + run.explain()
    )
    for name, words in AMQTT_VIOLATIONS.items():
        assert words in run.messages[name], run.explain()
    mqtt5 = [
        n
        for n in run.outcomes
        if "mqtt5" in n or "retain_as_published" in n or "retain_handling" in n
    ]
    assert mqtt5 and all(run.outcomes[n] == "skipped" for n in mqtt5), run.explain()
    findings = [line for line in run.output.splitlines() if line.startswith("finding:")]
    assert findings == [
        "finding: the broker lacks MQTT 5: CONNACK 'Unsupported protocol version' (0x84) to an "
        f"MQTT 5 CONNECT ({len(mqtt5)} experiments skipped for it)"
    ], run.explain()
    assert "MQTT 3.1.1 statements:" in run.output and "MQTT 5 statements:" in run.output


@needs_mosquitto
def test_a_broker_that_wants_a_login_passes_with_one(tmp_path, login_broker):
    url = f"mqtt://{login_broker.host}:{login_broker.port}"
    run = child_pytest(
        tmp_path,
        "labs/03_retained.py",
        "-m",
        "broker",
        f"--broker-url={url}",
        "--broker-username=lab",
        password=SECRET,
    )
    assert run.returncode == 0 and " passed" in run.output, run.explain()
    assert SECRET not in run.output


@needs_mosquitto
@pytest.mark.parametrize("login", ["none", "wrong"])
def test_a_broker_that_wants_a_login_fails_once_and_clearly_without_it(
    tmp_path, login_broker, login
):
    url = f"mqtt://{login_broker.host}:{login_broker.port}"
    args = ["--broker-username=lab"] if login == "wrong" else []
    run = child_pytest(
        tmp_path,
        "labs/03_retained.py",
        "-m",
        "broker",
        f"--broker-url={url}",
        *args,
        password="not-" + SECRET if login == "wrong" else None,
    )
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.explain()
    assert run.output.count("no MQTT broker accepted a CONNECT") == 1, run.explain()
    advice = "check them" if login == "wrong" else "--broker-username NAME"
    assert "Not authorized" in run.output and advice in run.output, run.explain()
    assert not run.outcomes, "no experiment may run (or fail on its own) against it"
    assert SECRET not in run.output


def test_an_unreachable_broker_fails_the_run_once_in_under_5s(tmp_path):
    url = f"mqtt://127.0.0.1:{free_port()}"
    run = child_pytest(tmp_path, "labs/03_retained.py", f"--broker-url={url}")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.explain()
    assert run.output.count("refused the TCP connection") == 1, run.explain()
    assert "start the broker, or correct the host and port" in run.output
    assert run.seconds < 5, f"an unreachable broker took {run.seconds:.1f}s to report"


def test_a_port_that_is_not_mqtt_fails_the_run_once_in_under_5s(tmp_path, silent_port):
    run = child_pytest(
        tmp_path, "labs/03_retained.py", f"--broker-url=mqtt://127.0.0.1:{silent_port}"
    )
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.explain()
    assert run.output.count("sent no CONNACK") == 1, run.explain()
    assert run.seconds < 5, f"a silent port took {run.seconds:.1f}s to report"


# -- the report ------------------------------------------------------------------------------


def conformance(tmp_path: Path, *args: str, password: str | None = None) -> ChildRun:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MQTT_LAB_"))}
    if password:
        env["MQTT_LAB_BROKER_PASSWORD"] = password
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "mqtt_factory_lab.conformance", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return ChildRun(done.returncode, done.stdout + done.stderr, time.monotonic() - started, {}, {})


@needs_mosquitto
@pytest.mark.timeout(600)  # two whole conformance runs, one of them against a slow Python broker
def test_the_conformance_report_of_two_brokers_side_by_side(tmp_path, amqtt):
    run = conformance(tmp_path, f"--broker-url={amqtt.url}", "--out=amqtt", "--", "-p", "no:xdist")
    assert run.returncode == 1, run.explain()  # amqtt's violations fail the run
    report = json.loads((tmp_path / "amqtt" / "report.json").read_text())
    assert report["capabilities"]["capabilities"]["mqtt5"]["present"] is False
    assert report["findings"][0]["finding"].startswith("the broker lacks MQTT 5")
    assert (
        report["statement_totals"]["5"]["skipped"] == report["statement_totals"]["5"]["tested"] > 0
    )
    assert report["statements"]["3.1.1"]["MQTT-3.3.2-3"]["status"] == "failed"
    assert report["statements"]["3.1.1"]["MQTT-3.3.1-10"]["status"] == "passed"
    markdown = (tmp_path / "amqtt" / "report.md").read_text()
    assert "| mqtt5 | **no** |" in markdown and "## Failures" in markdown
    junit = ET.parse(tmp_path / "amqtt" / "junit.xml").getroot()
    properties = {p.get("name") for p in junit.iter("property")}
    assert {"spec", "mqtt_protocol"} <= properties, "JUnit carries the statements of each case"

    run = conformance(
        tmp_path,
        "--lab-broker",
        "--out=mosquitto",
        "--broker-backend=local",
        "--",
        "-p",
        "no:xdist",
    )
    assert run.returncode == 0, run.explain()
    mosquitto = json.loads((tmp_path / "mosquitto" / "report.json").read_text())
    assert mosquitto["totals"]["failed"] == 0 and not mosquitto["findings"]

    run = conformance(tmp_path, "--compare", "mosquitto", "amqtt", "--out=compare")
    assert run.returncode == 0, run.explain()
    side_by_side = (tmp_path / "compare" / "compare.md").read_text()
    assert "| mqtt5 ≠ | yes | **no** |" in side_by_side, side_by_side
    assert "| MQTT 3.1.1 | MQTT-3.3.2-3 ≠ | passed | failed |" in side_by_side, side_by_side


@needs_mosquitto
def test_a_teams_own_config_with_a_password_file_is_started_and_tested(tmp_path):
    team = tmp_path / "team"
    team.mkdir()
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(team / "passwords"), "ci", SECRET],
        check=True,
        capture_output=True,
    )
    (team / "acl").write_text("user ci\ntopic readwrite #\n")
    (team / "mosquitto.conf").write_text(
        "listener 1883\nallow_anonymous false\n"
        "password_file /mosquitto/config/passwords\nacl_file /mosquitto/config/acl\n"
    )
    run = conformance(
        tmp_path,
        "--broker-config=team",
        "--broker-backend=local",
        "--broker-username=ci",
        "--out=team-report",
        "--",
        "-p",
        "no:xdist",
        password=SECRET,
    )
    assert run.returncode == 0, run.explain()
    assert "judging --broker-config team (local)" in run.output
    assert SECRET not in run.output
    report = json.loads((tmp_path / "team-report" / "report.json").read_text())
    assert report["totals"]["passed"] > 0 and report["totals"]["failed"] == 0

    run = conformance(tmp_path, "--broker-config=team", "--broker-backend=local", "--out=anon")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.explain()
    assert "Not authorized" in run.output and "--broker-username" in run.output, run.explain()
    refused = (tmp_path / "anon" / "report.md").read_text()
    assert refused.startswith("# MQTT conformance report: mqtt://127.0.0.1:"), refused[:200]
    assert "no experiment ran" in refused and "Not authorized" in refused, refused


@needs_mosquitto
def test_a_broker_that_grants_at_most_qos1_passes_all_but_what_needs_qos2(tmp_path, direct_broker):
    settings = max_qos_1(direct_broker)
    run = child_pytest(
        tmp_path,
        "labs/02_qos.py",
        "labs/03_retained.py",
        "-m",
        "broker",
        f"--broker-url={settings.display_url()}",
    )
    failed = [n for n, o in run.outcomes.items() if o in ("failed", "error")]
    assert failed == ["test_a_qos2_publish_is_answered_with_pubrec[mqtt3.1.1]"], (
        "granting less QoS is legal (MQTT §3.9.3): only the experiments that publish at QoS 2 "
        "may be skipped; the one failure is Mosquitto closing an MQTT 3.1.1 connection at a "
        "QoS 2 PUBLISH (3.1.1 has no Maximum QoS; MQTT-3.3.4-1): " + run.explain()
    )
    assert "MQTT-3.3.4-1" in run.messages[failed[0]], run.explain()
    skipped_for_qos2 = [n for n, m in run.messages.items() if "the broker lacks QoS 2" in m]
    assert skipped_for_qos2 and all("qos2" in n or "pub2" in n for n in skipped_for_qos2), (
        run.explain()
    )
    assert "finding: the broker lacks QoS 2: SUBACK granted QoS 1" in run.output, run.explain()


# -- markers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("decorators", "complaint"),
    [
        ('@pytest.mark.needs("telepathy")', "names no capability the lab probes"),
        ('@pytest.mark.spec("MQTT-3.3.1-9")', "without a protocol parameter"),
        ('@pytest.mark.spec(mqtt5=["3.3.1-9"])', "is not a statement id"),
        ('@pytest.mark.spec(mqtt6=["MQTT-3.3.1-9"])', "takes mqtt311= and mqtt5="),
    ],
)
def test_a_misused_needs_or_spec_marker_is_a_usage_error(tmp_path, decorators, complaint):
    case = tmp_path / "test_case.py"
    case.write_text(f"import pytest\n\n{decorators}\ndef test_x(broker_capabilities):\n    pass\n")
    run = child_pytest(tmp_path, str(case), "--broker-url=mqtt://127.0.0.1:1", "--co")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR and complaint in run.output, run.explain()


def test_a_statement_fails_with_any_of_its_experiments_and_is_skipped_only_when_all_were():
    from mqtt_factory_lab.conformance.spec import Result, statement_table

    results = [
        Result("a", "passed", "5", {"5": ["MQTT-3.3.1-5", "MQTT-3.3.1-9"]}),
        Result("b", "failed", "5", {"5": ["MQTT-3.3.1-9"]}),
        Result("c", "skipped", "5", {"5": ["MQTT-3.3.1-10"]}),
        Result("d", "skipped", "3.1.1", {"3.1.1": ["MQTT-3.3.1-5"]}),
        Result("e", "passed", None, {"3.1.1": ["MQTT-3.3.1-5"], "5": ["MQTT-3.3.1-5"]}),
    ]
    table = statement_table(results)
    assert {s: r["status"] for s, r in table["5"].items()} == {
        "MQTT-3.3.1-5": "passed",  # by a and e
        "MQTT-3.3.1-9": "failed",
        "MQTT-3.3.1-10": "skipped",
    }
    assert table["3.1.1"]["MQTT-3.3.1-5"] | {"experiments": []} == {
        "passed": 1,
        "failed": 0,
        "skipped": 1,
        "experiments": [],
        "status": "passed",
    }
    assert list(table["5"]) == ["MQTT-3.3.1-5", "MQTT-3.3.1-9", "MQTT-3.3.1-10"], "numeric order"


# -- the statement tables and the kinds of rule ------------------------------------------


def collected_experiments(tmp_path: Path) -> list[dict]:
    """Every broker experiment of the lessons with its statements and rule, from a child
    ``--collect-only`` that dumps them (the lessons' own marks, as pytest sees them)."""
    dump = tmp_path / "marks.json"
    plugin = tmp_path / "dump_marks.py"
    plugin.write_text(
        "import json\n"
        "from mqtt_factory_lab.conformance import spec\n"
        "def pytest_collection_finish(session):\n"
        "    rows = []\n"
        "    for item in session.items:\n"
        "        if item.get_closest_marker('broker') is None:\n"
        "            continue\n"
        "        rows.append({'nodeid': item.nodeid, 'statements': spec.item_statements(item),\n"
        "                     'rule': spec.item_rule(item)[0],\n"
        "                     'marked': item.get_closest_marker('rule') is not None})\n"
        f"    open({str(dump)!r}, 'w').write(json.dumps(rows))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "MQTT_LAB_"))}
    env["PYTHONPATH"] = str(tmp_path)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "labs",
            "-m",
            "broker",
            "--co",
            "-q",
            "-p",
            "dump_marks",
            "-p",
            "no:cacheprovider",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(dump.read_text())


def test_every_statement_an_experiment_names_is_a_client_testable_row_of_the_tables(tmp_path):
    from mqtt_factory_lab.conformance.spec import statements

    rows = collected_experiments(tmp_path)
    assert len(rows) > 100, "the lessons' broker experiments were not collected"
    wrong = []
    for row in rows:
        for protocol, ids in row["statements"].items():
            table = statements(protocol)
            for statement in ids:
                found = table.get(statement)
                if found is None or not found.client_testable:
                    wrong.append(f"{row['nodeid']}: MQTT {protocol} {statement} -> {found}")
    assert not wrong, "\n".join(wrong)


def test_every_broker_experiment_says_what_kind_of_rule_it_checks(tmp_path):
    unmarked = [
        r["nodeid"]
        for r in collected_experiments(tmp_path)
        if not r["statements"] and not r["marked"]
    ]
    assert not unmarked, (
        "an experiment that names no MUST statement must say what it checks instead: "
        "@pytest.mark.rule('may', ...) or @pytest.mark.rule('convention'):\n" + "\n".join(unmarked)
    )


@pytest.mark.parametrize(
    ("protocol", "statement", "words"),
    [
        # the ids the issue doubted, each checked against the OASIS text's sentence
        ("5", "MQTT-3.8.4-8", "lower of the published QoS and the granted QoS"),
        ("3.1.1", "MQTT-3.8.4-6", "lower of the published QoS and the granted QoS"),
        ("5", "MQTT-3.1.2-15", "Will Retain=1"),
        ("3.1.1", "MQTT-3.1.2-17", "Will Retain=1"),
        ("5", "MQTT-3.1.2-22", "1.5 x Keep Alive"),
        ("3.1.1", "MQTT-3.1.2-24", "1.5 x Keep Alive"),
        ("5", "MQTT-3.1.2-23", "Session Expiry Interval > 0"),
        ("5", "MQTT-3.1.3-9", "Will Delay Interval"),
        ("5", "MQTT-3.1.4-3", "already connected"),
        ("3.1.1", "MQTT-3.1.4-2", "already connected"),
        ("5", "MQTT-4.7.0-1", "never in topic names"),
        ("3.1.1", "MQTT-4.7.1-1", "never in topic names"),
        ("5", "MQTT-4.7.1-1", "'#'"),
        ("5", "MQTT-4.7.1-2", "'+'"),
        ("3.1.1", "MQTT-4.7.1-2", "'#'"),
        ("3.1.1", "MQTT-4.7.1-3", "'+'"),
        ("5", "MQTT-3.3.1-1", "DUP=1"),
        ("3.1.1", "MQTT-3.3.1-1", "DUP=1"),
        ("3.1.1", "MQTT-4.7.2-1", "'$'"),
        ("5", "MQTT-4.7.2-1", "'$'"),
        # rows the check against the OASIS text corrected
        ("3.1.1", "MQTT-3.1.2-5", "QoS 1 and QoS 2 messages"),
        ("5", "MQTT-3.3.1-10", "did not exist"),
        ("3.1.1", "MQTT-3.10.4-5", "deletes nothing"),
    ],
)
def test_the_doubted_statement_ids_say_what_the_experiments_check(protocol, statement, words):
    from mqtt_factory_lab.conformance.spec import statements

    assert words in statements(protocol)[statement].gist


def test_the_tables_count_the_client_testable_statements():
    from mqtt_factory_lab.conformance.spec import statements, testable

    # Appendix B of mqtt-v3.1.1-os numbers 141 statements, that of mqtt-v5.0-os 251
    for protocol, appendix_b in (("3.1.1", 141), ("5", 251)):
        rows = statements(protocol)
        numbered = [s for s in rows if not s.startswith("§")]
        assert len(numbered) == appendix_b, f"MQTT {protocol}: {len(numbered)} statements"
        assert {r.keyword for r in rows.values()} <= {"MUST", "MUST+MAY", "SHOULD", "MAY"}
        assert 0 < len(testable(protocol)) < len(numbered)


def test_every_row_says_what_of_the_oasis_text_it_was_verified_against():
    from mqtt_factory_lab.conformance.spec import statements

    for protocol in ("3.1.1", "5"):
        unverified = [
            s.id
            for s in statements(protocol).values()
            if not s.verified.startswith("body §" if s.id.startswith("§") else "os-B")
        ]
        assert not unverified, f"MQTT {protocol}: rows not checked against the text: {unverified}"


def test_a_statement_says_only_what_its_sentence_says():
    from mqtt_factory_lab.conformance.spec import statements

    # 3.1.1's MQTT-2.3.1-6 names PUBACK, PUBREC and PUBREL; PUBCOMP is not in its sentence
    assert "PUBCOMP" not in statements("3.1.1")["MQTT-2.3.1-6"].gist
    # queuing QoS 0 for an offline session is a MAY in both versions, never a numbered MUST
    assert "MAY" in statements("3.1.1")["MQTT-3.1.2-5"].gist
    assert statements("3.1.1")["§3.1.2.4"].keyword == statements("5")["§4.1"].keyword == "MAY"


# -- a report for every run: refusals, denied grants, empty URLs ----------------------------


def acl_mosquitto(direct_broker, tmp_path: Path, acl: str) -> str:
    """A Mosquitto listener whose ACL is ``acl`` (anonymous clients): its URL."""
    (tmp_path / "acl").write_text(acl)
    port = free_port()
    direct_broker(
        LocalMosquitto,
        "open",
        extra_config=f"listener {port} 127.0.0.1\nacl_file {tmp_path / 'acl'}\n",
    )
    return f"mqtt://127.0.0.1:{port}"


@needs_mosquitto
def test_an_acl_that_denies_the_lab_topics_gets_a_report_naming_the_grant(tmp_path, direct_broker):
    url = acl_mosquitto(direct_broker, tmp_path, "topic readwrite factory/#\n")
    run = conformance(tmp_path, f"--broker-url={url}", "--out=denied", "--", "-p", "no:xdist")
    assert run.returncode == 1, "nothing could be judged: the run must not pass\n" + run.explain()
    assert "no experiment could judge this broker" in run.output, run.explain()
    markdown = (tmp_path / "denied" / "report.md").read_text()
    assert markdown.splitlines()[0] == f"# MQTT conformance report: {url}", markdown[:300]
    report = json.loads((tmp_path / "denied" / "report.json").read_text())
    finding = report["findings"][0]["finding"]
    assert "does not grant anonymous the lab's topics" in finding, finding
    assert "lab/sync/" in finding and "readwrite lab/#" in finding, finding
    assert report["findings"][0]["skipped"] > 100 and report["totals"]["passed"] == 0, report[
        "totals"
    ]


@needs_mosquitto
def test_a_probe_step_the_broker_refuses_is_a_row_and_the_run_goes_on(tmp_path, direct_broker):
    url = acl_mosquitto(direct_broker, tmp_path, "topic readwrite lab/#\n")  # no $SYS, no '#'
    found = probe(ConnectionSettings.from_url(url))
    table = "\n".join(found.table())
    assert found.has("lab_topics") and found.has("retain") and not found.has("sys"), table
    assert found.items["sys"].detail, table
    run = child_pytest(tmp_path, "labs/01_wildcards.py", "-m", "broker", f"--broker-url={url}")
    dollar = [n for n in run.outcomes if "dollar_topics" in n]
    assert dollar and all(run.outcomes[n] == "passed" for n in dollar), (
        "$-topics are judged on every broker, $SYS or not: " + run.explain()
    )


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--broker-url="], {}, "--broker-url is empty"),
        ([], {"MQTT_LAB_BROKER_URL": ""}, "--broker-url is empty"),
        ([], {}, "say which broker to judge"),
        (["--broker-url=mqtt://h:1", "--lab-broker"], {}, "not --broker-url and --lab-broker"),
    ],
    ids=["empty-option", "empty-variable", "none", "two"],
)
def test_conformance_without_exactly_one_broker_is_a_usage_error(tmp_path, args, env, words):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "mqtt_factory_lab.conformance", *args, "--out=never"],
        cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MQTT_LAB_")}, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout + done.stderr
    assert words in done.stderr, done.stderr
    assert not (tmp_path / "never").exists(), "no broker was judged: no report either"
    assert time.monotonic() - started < 10


def test_pytest_with_an_empty_broker_url_is_a_usage_error(tmp_path):
    run = child_pytest(tmp_path, "labs/03_retained.py", "--broker-url=", "--co")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.explain()
    assert "--broker-url is empty" in run.output, run.explain()


def test_pytest_and_the_conformance_command_share_one_table_of_broker_options():
    from mqtt_factory_lab.cli import build_parser
    from mqtt_factory_lab.core.broker_options import BROKER_OPTIONS

    helps = subprocess.run(
        [sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["conformance"]
    flags = {f for a in sub._actions for f in a.option_strings}
    for option in BROKER_OPTIONS:
        assert option.flag in flags, f"mqtt-lab conformance lacks {option.flag}"
        assert option.flag in helps, f"pytest --help lacks {option.flag}"


# -- reason codes as sent, TLS where there is none, waits that end on evidence --------------


@needs_mosquitto
@pytest.mark.parametrize(("protocol", "code"), [("3.1.1", 0x05), ("5", 0x87)])
def test_a_refusal_reports_the_code_the_broker_sent(login_broker, protocol, code):
    outcome, _ = try_connect(login_broker.connection, protocol)
    assert outcome.reason_code == code, outcome
    what = "return code" if protocol == "3.1.1" else "reason code"
    assert f"({what} 0x{code:02X})" in outcome.sentence()
    client = RecordingClient(login_broker.host, login_broker.port, protocol=protocol)
    with pytest.raises(ConnectionError, match=rf"\({what} 0x{code:02X}\)"):
        client.connect()


@needs_mosquitto
def test_tls_to_a_plain_mosquitto_port_says_the_broker_does_not_speak_tls_here(direct_broker):
    broker = direct_broker(LocalMosquitto, "open")
    outcome, _ = try_connect(ConnectionSettings.from_url(f"mqtts://127.0.0.1:{broker.port}"))
    assert outcome.kind == "not_tls", outcome
    assert "the broker does not speak TLS here" in outcome.sentence()


@needs_mosquitto
def test_a_wait_ends_when_the_broker_closes_the_connection(direct_broker, topic_root):
    broker = direct_broker(LocalMosquitto, "open")
    first = RecordingClient(broker.host, broker.port, "lab-taken-over", protocol="5")
    first.connect()
    first.subscribe(f"{topic_root}/x", qos=1)
    second = RecordingClient(broker.host, broker.port, "lab-taken-over", protocol="5")
    second.connect()  # takes the client id over: the broker closes the first connection
    try:
        started = time.monotonic()
        with pytest.raises(AssertionError, match=r"stopped after .*nothing more can come"):
            first.wait_for_message(f"{topic_root}/x", timeout=10)
        print(f"the wait ended after {time.monotonic() - started:.2f}s of 10")
    finally:
        first.disconnect()
        second.disconnect()


# -- WebSockets, first-class -------------------------------------------------------------------


@pytest.fixture
def websocket_mosquitto(direct_broker) -> tuple[str, str]:
    """One Mosquitto with a plain listener and a WebSocket listener: ``(mqtt://, ws://)``."""
    port = free_port()
    broker = direct_broker(
        LocalMosquitto, "open", extra_config=f"listener {port} 127.0.0.1\nprotocol websockets\n"
    )
    return f"mqtt://127.0.0.1:{broker.port}", f"ws://127.0.0.1:{port}/mqtt"


@needs_mosquitto
def test_a_dropped_websocket_client_crashes_like_a_tcp_one(websocket_mosquitto, topic_root):
    settings = ConnectionSettings.from_url(websocket_mosquitto[1])
    watcher = RecordingClient(settings.host, settings.port, protocol="5", connection=settings)
    watcher.connect()
    watcher.subscribe(f"{topic_root}/will", qos=1)
    crasher = RecordingClient(
        settings.host,
        settings.port,
        protocol="5",
        connection=settings,
        will=(f"{topic_root}/will", b"offline", 1, False),
    )
    crasher.connect()
    crasher.drop()  # the WebSocket's TCP socket shut down: no DISCONNECT, no close frame
    try:
        assert watcher.wait_for_message(f"{topic_root}/will", timeout=5).text == "offline"
    finally:
        watcher.disconnect()


@needs_mosquitto
@pytest.mark.timeout(300)
def test_websockets_pass_what_tcp_passes_on_a_real_mosquitto_websocket_listener(
    tmp_path, websocket_mosquitto
):
    runs = {}
    for name, url in zip(("mqtt", "ws"), websocket_mosquitto, strict=True):
        runs[name] = child_pytest(
            tmp_path, "labs/02_qos.py", "labs/04_lwt.py", "-m", "broker", f"--broker-url={url}"
        )
    tcp, ws = runs["mqtt"], runs["ws"]
    assert tcp.returncode == 0 and tcp.outcomes, tcp.explain()
    differ = {
        n: (o, ws.outcomes.get(n)) for n, o in tcp.outcomes.items() if ws.outcomes.get(n) != o
    }
    assert not differ, f"ws:// must pass what mqtt:// passes: {differ}\n{ws.explain()}"
    print(
        f"\n{len(tcp.outcomes)} experiments: mqtt:// {tcp.seconds:.1f}s, ws:// {ws.seconds:.1f}s "
        f"({ws.seconds / tcp.seconds:.2f}x)"
    )


# -- --broker-config with a team ACL: the permission matrix ------------------------------------

TEAM_MATRIX = """
[clients.press-01]
role = "a device"
[clients.dashboard]
role = "the dashboard"
username = "dashboard"

[publish]
"factory/telemetry/press-01/temperature" = ["press-01"]
"factory/commands/dashboard/press-01" = ["dashboard"]

[subscribe]
"factory/telemetry/press-01/temperature" = ["dashboard"]
"factory/commands/dashboard/press-01" = ["dashboard", "press-01"]
"""


@needs_mosquitto
@pytest.mark.timeout(300)
def test_a_teams_acl_is_held_to_its_matrix_and_the_report_says_when_it_was_not(tmp_path):
    team = tmp_path / "team"
    team.mkdir()
    (team / "acl").write_text(
        "topic readwrite lab/#\n"  # what the lab's experiments need (docs/conformance.md)
        "pattern write factory/telemetry/%c/#\n"
        "pattern read factory/commands/+/%c\n"
        "user dashboard\ntopic readwrite lab/#\ntopic read factory/telemetry/#\n"
        "topic readwrite factory/commands/#\n"
    )
    (team / "mosquitto.conf").write_text(
        "listener 1883\nallow_anonymous true\nacl_file /mosquitto/config/acl\n"
    )
    (tmp_path / "matrix.toml").write_text(TEAM_MATRIX)
    base = ["--broker-config=team", "--broker-backend=local"]
    run = conformance(
        tmp_path,
        *base,
        "--acl-matrix=matrix.toml",
        "--out=with",
        "--",
        "-p",
        "no:xdist",
        "-k",
        "retained",
    )
    assert run.returncode == 0, run.explain()
    matrix = json.loads((tmp_path / "with" / "acl-matrix" / "report.json").read_text())
    assert matrix["totals"]["passed"] >= 8 and matrix["totals"]["failed"] == 0, matrix["totals"]
    head = (tmp_path / "with" / "report.md").read_text().splitlines()[:6]
    assert any(
        "held to the permission matrix" in line and "every cell passed" in line for line in head
    ), head

    run = conformance(tmp_path, *base, "--out=without", "--", "-p", "no:xdist", "-k", "retained")
    head = (tmp_path / "without" / "report.md").read_text().splitlines()[:6]
    assert any("was not held to a permission matrix" in line for line in head), head


@needs_mosquitto
def test_a_wait_for_a_publish_the_broker_refused_ends_at_the_puback(tmp_path, direct_broker):
    url = acl_mosquitto(
        direct_broker, tmp_path, "topic readwrite lab/#\ntopic read factory/#\n"
    )  # anyone may read factory/, nobody may write there
    settings = ConnectionSettings.from_url(url)
    reader = RecordingClient(settings.host, settings.port, protocol="5", connection=settings)
    writer = RecordingClient(settings.host, settings.port, protocol="5", connection=settings)
    reader.connect()
    writer.connect()
    try:
        reader.subscribe("factory/denied", qos=1)
        writer.publish("factory/denied", b"x", qos=1)  # MQTT 5: PUBACK 0x87 Not authorized
        with pytest.raises(AssertionError, match=r"stopped after .*PUBACK Not authorized \(0x87\)"):
            reader.wait_for_message("factory/denied", timeout=10)
    finally:
        reader.disconnect()
        writer.disconnect()

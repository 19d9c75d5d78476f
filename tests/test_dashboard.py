"""``python -m sim.dashboard`` without a browser: what the server accepts, publishes and pushes.

The browser tests (``test_dashboard_browser.py``) drive the page; these check
the server's side of the contract directly, over HTTP and its WebSocket:

* only schema-valid commands to devices it has seen are published, on the
  topic the server builds, at QoS 1 and not retained;
* every page that connects gets the broker's retained messages again
  (that is how the page shows every device at once);
* a device's answer to a command comes back as an outcome;
* requests from another origin, wrong content types, a busy port and an
  unreachable broker get clear refusals.
"""

from __future__ import annotations

import asyncio
import doctest
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

import sim.dashboard.commands
import sim.dashboard.tracker
from mqtt_factory_lab.brokers import CONFIG, LOG
from mqtt_factory_lab.brokers.base import free_port
from mqtt_factory_lab.contract import validate
from mqtt_factory_lab.core.roles import RoleProcess
from sim.dashboard.commands import DeviceInfo, RequestError, build_command
from sim.dashboard.tracker import OutcomeTracker


@dataclass
class Dashboard:
    """A running ``sim.dashboard`` and how to reach it."""

    program: RoleProcess
    url: str
    client_id: str

    def post(
        self,
        body: dict[str, Any] | bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """POST a command request; return the status and the JSON answer."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + "api/commands",
            data=data,
            method="POST",
            headers={"Content-Type": content_type, **(headers or {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())


@pytest.fixture
def dashboard(sim_program, unique_id) -> Callable[..., Dashboard]:
    """``dashboard(*args, broker=None, topic_root=None, client_id=None)``: a ready dashboard.

    It serves on a free port of 127.0.0.1 and is stopped when the test ends.
    """

    def start(
        *args: str,
        broker: Any = None,
        topic_root: str | None = None,
        client_id: str | None = None,
        protocol: str = "5",
    ) -> Dashboard:
        port = free_port()
        client_id = client_id or unique_id("dashboard")
        program = sim_program(
            "sim.dashboard",
            "--http-port",
            str(port),
            "--client-id",
            client_id,
            *args,
            broker=broker,
            topic_root=topic_root,
            protocol=protocol,
            name="dashboard",
        )
        return Dashboard(program, f"http://127.0.0.1:{port}/", client_id)

    return start


def device_state(device_id: str, state: str = "running", **extra: Any) -> dict[str, Any]:
    """A retained state payload that fits ``state.schema.json``."""
    return {
        "ts": time.time(),
        "device_id": device_id,
        "kind": "conveyor",
        "state": state,
        "setpoints": {"speed": 1.2},
        "counters": {
            "produced": 0,
            "alarms_raised": 0,
            "commands_accepted": 0,
            "commands_rejected": 0,
        },
        **extra,
    }


def announce(client, root: str, device_id: str, state: str = "running") -> None:
    """Publish a device's retained status and state, as a device does when it starts."""
    status = {"ts": time.time(), "device_id": device_id, "status": "online", "reason": "connected"}
    client.publish(f"{root}/status/{device_id}", status, qos=1, retain=True)
    client.publish(f"{root}/state/{device_id}", device_state(device_id, state), qos=1, retain=True)


async def _frames(url: str, until: Callable[[list[dict]], bool], timeout: float = 10.0) -> list:
    """Open the WebSocket and collect frames until ``until(frames)`` or the deadline."""
    frames: list[dict] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url + "ws") as ws:
        deadline = time.monotonic() + timeout
        while not until(frames):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"the dashboard's WebSocket did not send what was expected within {timeout}s; "
                    f"got {json.dumps(frames)[:1500]}"
                )
            try:
                message = await ws.receive(timeout=remaining)
            except TimeoutError:
                continue
            if message.type != aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"the WebSocket closed or failed: {message}")
            frames.append(json.loads(message.data))
    return frames


def frames(url: str, until: Callable[[list[dict]], bool], timeout: float = 10.0) -> list[dict]:
    return asyncio.run(_frames(url, until, timeout))


def messages_in(frames: list[dict]) -> list[dict]:
    return [item for f in frames if f["type"] == "messages" for item in f["items"]]


def has_message(topic: str, retained: bool | None = None) -> Callable[[list[dict]], bool]:
    def check(frames: list[dict]) -> bool:
        return any(
            m["t"] == topic and (retained is None or bool(m["r"]) == retained)
            for m in messages_in(frames)
        )

    return check


# -- the command request, without a server ---------------------------------------------

KNOWN = {"conveyor": DeviceInfo(setpoints=frozenset({"speed"})), "env": DeviceInfo()}


def test_the_command_module_examples_hold():
    assert doctest.testmod(sim.dashboard.commands).failed == 0
    assert doctest.testmod(sim.dashboard.tracker).failed == 0


@pytest.mark.parametrize(
    ("request_body", "expected"),
    [
        (b"stop", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"device": "conveyor", "command": "stop", "topic": "factory/x"}', "'topic' may not"),
        (b'{"device": "conveyor", "command": "stop", "payload": "x"}', "'payload' may not"),
        (b'{"device": "conveyor", "command": "stop", "command_id": "x"}', "'command_id' may not"),
        (b'{"device": "oven", "command": "stop"}', "unknown device 'oven'"),
        (b'{"device": "a/#", "command": "stop"}', "device id"),
        (b'{"command": "stop"}', "device id"),
        (b'{"device": "conveyor", "command": "pause"}', "'pause' is not one of"),
        (b'{"device": "conveyor", "command": "set", "setpoint": "speed"}', "needs a number"),
        (b'{"device": "conveyor", "command": "set", "setpoint": "speed", "value": ""}', "needs"),
        (b'{"device": "conveyor", "command": "set", "setpoint": "speed", "value": NaN}', "NaN"),
        (
            b'{"device": "conveyor", "command": "set", "setpoint": "speed", "value": 1e999}',
            "finite",
        ),
        (
            b'{"device": "conveyor", "command": "set", "setpoint": "rate", "value": 1}',
            "no setpoint",
        ),
        (b'{"device": "conveyor", "command": "stop", "reason": 5}', "reason"),
        (b'{"device": "conveyor", "command": "stop", "reason": "' + b"x" * 5000 + b'"}', "bytes"),
    ],
)
def test_a_request_outside_the_command_schema_is_refused_with_the_reason(request_body, expected):
    with pytest.raises(RequestError) as refused:
        build_command(request_body, KNOWN, "dashboard")
    assert expected in str(refused.value), f"refusal {str(refused.value)!r} lacks {expected!r}"


def test_an_accepted_request_becomes_a_schema_valid_command_from_the_dashboard():
    device, command = build_command(
        b'{"device": "conveyor", "command": "set", "setpoint": "speed", "value": 1.5}',
        KNOWN,
        "dashboard",
    )
    assert device == "conveyor"
    validate("command", command)
    assert command["issued_by"] == "dashboard"
    assert command["command_id"].startswith("dashboard-")
    assert "speed=1.5" in command["reason"]
    # a device that has not told its setpoints yet: the device itself judges the name
    assert build_command(
        b'{"device": "env", "command": "set", "setpoint": "x", "value": 1}', KNOWN, "d"
    )


def test_a_rejection_is_matched_by_the_quoted_payload_and_silence_times_out():
    tracker = OutcomeTracker("f", timeout=10)
    for number in (1, 2):
        command = {"command": "set", "command_id": f"d-{number}", "reason": "r"}
        tracker.sent("oven", command, json.dumps(command), now=0.0)
    # A value out of range is refused while parsing: the event quotes the payload, not the id.
    event = {"event": "command_rejected", "reason": "too hot", "received": json.dumps(command)}
    [outcome] = tracker.observe("f/events/oven", json.dumps(event).encode())
    assert (outcome["command_id"], outcome["result"], outcome["detail"]) == (
        "d-2",
        "rejected",
        "too hot",
    )
    assert tracker.observe("f/events/press", json.dumps(event).encode()) == []
    assert tracker.expire(now=9.0) == []
    [silent] = tracker.expire(now=10.0)
    assert silent["command_id"] == "d-1" and silent["result"] == "no answer"
    assert "f/commands/+/oven" in silent["detail"]


# -- the program ----------------------------------------------------------------------------


def test_help_names_the_http_options_and_the_loopback_default(run_program, nowhere):
    result = run_program("sim.dashboard", "--help", broker=nowhere)
    assert result.returncode == 0, result.stderr
    assert "--http-port" in result.stdout and "127.0.0.1" in result.stdout


def test_an_unreachable_broker_is_a_clear_error(run_program, nowhere):
    result = run_program("sim.dashboard", "--http-port", str(free_port()), broker=nowhere)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot reach the MQTT broker" in result.stderr and "VF_BROKER_PORT" in result.stderr


def test_a_busy_http_port_is_a_clear_error(run_program, broker):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_program("sim.dashboard", "--http-port", str(port))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "--http-port" in result.stderr and str(port) in result.stderr
    assert "ready" not in result.stdout


def test_ready_line_comes_first_then_the_address(dashboard):
    dash = dashboard()
    lines = dash.program.output().splitlines()
    ready, address = f"ready {dash.client_id}", f"dashboard at {dash.url}"
    assert ready in lines and address in lines, lines
    assert lines.index(ready) < lines.index(address), lines


def test_the_page_is_served_with_a_policy_that_forbids_foreign_and_inline_script(dashboard):
    dash = dashboard()
    with urllib.request.urlopen(dash.url, timeout=10) as response:
        page = response.read().decode()
        policy = response.headers["Content-Security-Policy"]
    assert "static/app.js" in page
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    with urllib.request.urlopen(dash.url + "static/app.js", timeout=10) as response:
        assert "textContent" in response.read().decode()


def test_every_page_that_connects_gets_the_retained_state_from_the_broker(
    dashboard, mqtt_client, topic_root, protocol
):
    device = mqtt_client(protocol=protocol)
    dash = dashboard(protocol=protocol)
    announce(device, topic_root, "conveyor-1")  # after the dashboard started: live, then retained
    state, status = f"{topic_root}/state/conveyor-1", f"{topic_root}/status/conveyor-1"
    for _ in range(2):  # a second page (or a reload) gets them again, from the broker
        got = frames(
            dash.url,
            lambda f: (
                has_message(state, retained=True)(f) and has_message(status, retained=True)(f)
            ),
        )
        assert got[0]["type"] == "hello" and got[0]["root"] == topic_root


def test_a_command_is_published_at_qos1_on_the_dashboards_own_topic(
    dashboard, mqtt_client, topic_root
):
    device = mqtt_client()
    device.subscribe(f"{topic_root}/commands/#", qos=1)
    announce(device, topic_root, "conveyor-1")
    dash = dashboard()
    frames(dash.url, has_message(f"{topic_root}/state/conveyor-1"))  # the dashboard knows it now

    status, answer = dash.post({"device": "conveyor-1", "command": "stop", "reason": "test"})
    assert status == 202, answer
    topic = f"{topic_root}/commands/{dash.client_id}/conveyor-1"
    received = device.wait_for_message(topic, why="the dashboard should publish the stop")
    assert received.qos == 1 and not received.retain
    command = validate("command", received.payload)
    assert command["command"] == "stop" and command["reason"] == "test"
    assert command["command_id"] == answer["command_id"]
    assert command["issued_by"] == dash.client_id


def test_a_refused_request_publishes_nothing(dashboard, mqtt_client, topic_root):
    device = mqtt_client()
    device.subscribe(f"{topic_root}/commands/#", qos=1)
    announce(device, topic_root, "conveyor-1")
    dash = dashboard()
    frames(dash.url, has_message(f"{topic_root}/state/conveyor-1"))

    status, answer = dash.post({"device": "oven-9", "command": "stop"})
    assert status == 400 and "unknown device 'oven-9'" in answer["error"]
    status, answer = dash.post(b'{"device": "conveyor-1", "command": "stop"}', "text/plain")
    assert status == 415, answer
    status, answer = dash.post(
        {"device": "conveyor-1", "command": "stop"}, headers={"Origin": "http://evil.example"}
    )
    assert status == 403, answer
    device.assert_nothing_received(f"{topic_root}/commands/#")
    assert "refused a command request" in dash.program.output()


def test_a_request_for_another_host_name_is_refused_on_loopback(dashboard):
    # DNS rebinding: a web site whose name resolves to 127.0.0.1 is still not localhost.
    dash = dashboard()
    request = urllib.request.Request(dash.url, headers={"Host": "evil.example:8080"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403
    request = urllib.request.Request(
        dash.url, headers={"Host": f"localhost:{urlsplit(dash.url).port}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_a_websocket_from_another_origin_is_refused(dashboard):
    dash = dashboard()

    async def attempt() -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(
                    dash.url + "ws", headers={"Origin": "http://evil.example"}
                ):
                    return 101
            except aiohttp.WSServerHandshakeError as error:
                return error.status

    assert asyncio.run(attempt()) == 403


def test_the_devices_answer_comes_back_as_the_commands_outcome(dashboard, device, topic_root):
    conveyor = device("conveyor")
    dash = dashboard()

    async def scenario() -> list[dict]:
        async with aiohttp.ClientSession() as session, session.ws_connect(dash.url + "ws") as ws:
            outcomes: list[dict] = []
            deadline = time.monotonic() + 15
            sent: list[str] = []
            while len(outcomes) < 2 and time.monotonic() < deadline:
                message = await ws.receive(timeout=deadline - time.monotonic())
                frame = json.loads(message.data)
                items = frame["items"] if frame["type"] == "messages" else [frame]
                if not sent and any(
                    i.get("t", "").endswith("/state/" + conveyor.device_id) for i in items
                ):
                    for body in (
                        {
                            "device": conveyor.device_id,
                            "command": "set",
                            "setpoint": "speed",
                            "value": 9,
                        },
                        {"device": conveyor.device_id, "command": "stop"},
                    ):
                        async with session.post(dash.url + "api/commands", json=body) as response:
                            assert response.status == 202, await response.text()
                            sent.append((await response.json())["command_id"])
                outcomes += [i for i in items if i.get("type") == "outcome"]
            return [{**o, "order": sent.index(o["command_id"])} for o in outcomes]

    outcomes = sorted(asyncio.run(scenario()), key=lambda o: o["order"])
    assert [o["result"] for o in outcomes] == ["rejected", "accepted"], outcomes
    assert "outside the allowed range" in outcomes[0]["detail"]
    assert outcomes[1]["detail"] == f"{conveyor.device_id} is now stopped"


@pytest.mark.broker_needs(CONFIG, LOG)
def test_the_dashboard_works_within_the_acl_as_user_and_client_id_dashboard(
    make_broker, dashboard, mqtt_client
):
    broker = make_broker("acl")
    mark = broker.log_mark()
    # A device connects with its id as client id: the ACL lets it write its own state.
    press = mqtt_client("press", broker=broker)
    press.subscribe("factory/commands/+/press", qos=1)
    announce(press, "factory", "press")
    # It reads as the user `dashboard` (docker/acl grants reading everything to user names).
    dash = dashboard(
        "--username", "dashboard", broker=broker, topic_root="factory", client_id="dashboard"
    )
    frames(dash.url, has_message("factory/state/press"))

    status, answer = dash.post({"device": "press", "command": "stop"})
    assert status == 202, answer
    press.wait_for_message(
        "factory/commands/dashboard/press", why="docker/acl lets 'dashboard' command devices"
    )
    denied = [line for line in broker.log_lines()[mark:] if "Denied" in line]
    assert not denied, "the dashboard must work within docker/acl:\n" + "\n".join(denied)

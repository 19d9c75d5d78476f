"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

Each test starts what it needs (devices, a dashboard on a free port, a
browser) and stops all of it at the end, even after a failure. Nothing
sleeps: Playwright's ``expect`` waits for the page to show what is expected,
up to a deadline.

``scripts/setup`` installs the browser (Debian's ``chromium``; another one with
``MQTT_LAB_CHROMIUM=/path``). Without one these tests skip, saying so, except
under CI (``CI=true``), where a missing browser is a failure.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mqtt_factory_lab.bench.dashboard import find_chromium, launch_chromium
from mqtt_factory_lab.brokers import RESTART
from mqtt_factory_lab.brokers.base import free_port

#: how long the page may take to show something (ms)
WAIT = 10_000


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser tests: scripts/setup installs them)")
    pytest.skip(reason)


@pytest.fixture
def browser_page() -> Iterator[Any]:
    """A fresh page in a headless Chromium; the browser is closed when the test ends.

    Script errors in the page fail the test.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed: run scripts/setup")
    if find_chromium() is None:
        _missing("no Chromium found: run scripts/setup (apt-get install -y chromium)")
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on(
                "dialog",
                lambda dialog: (errors.append(f"dialog: {dialog.message}"), dialog.dismiss()),
            )
            yield page
        finally:
            browser.close()
    assert not errors, f"the page raised script errors or opened dialogs: {errors}"


@pytest.fixture
def open_dashboard(sim_program, unique_id, browser_page) -> Callable[..., Any]:
    """``open_dashboard(broker=None)``: start ``sim.dashboard`` and open its page.

    Returns the Playwright page, with ``page.dashboard`` (the program) and
    ``page.client_id`` set.
    """

    def start(broker: Any = None, topic_root: str | None = None) -> Any:
        port = free_port()
        client_id = unique_id("dashboard")
        program = sim_program(
            "sim.dashboard",
            "--http-port",
            str(port),
            "--client-id",
            client_id,
            broker=broker,
            topic_root=topic_root,
            name="dashboard",
        )
        browser_page.goto(f"http://127.0.0.1:{port}/")
        browser_page.dashboard = program
        browser_page.client_id = client_id
        return browser_page

    return start


def card(page: Any, device_id: str) -> Any:
    return page.locator(f'.device[data-device="{device_id}"]')


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def status_payload(device_id: str, status: str = "online", reason: str = "connected") -> dict:
    return {"ts": time.time(), "device_id": device_id, "status": status, "reason": reason}


def state_payload(device_id: str, state: str = "running", **extra: Any) -> dict:
    return {
        "ts": time.time(),
        "device_id": device_id,
        "kind": "press",
        "state": state,
        "setpoints": {"temperature": 65.0, "pressure": 150.0},
        "counters": {
            "produced": 7,
            "alarms_raised": 0,
            "commands_accepted": 0,
            "commands_rejected": 0,
        },
        **extra,
    }


def telemetry_payload(device_id: str, sensor: str, value: float, unit: str = "C") -> dict:
    return {
        "ts": time.time(),
        "device_id": device_id,
        "sensor": sensor,
        "value": value,
        "unit": unit,
        "seq": 0,
    }


# -- what a student sees first ---------------------------------------------------------------


def test_a_page_opened_after_the_devices_started_shows_their_retained_state_at_once(
    device, open_dashboard
):
    press, oven = device("press"), device("oven")
    page = open_dashboard()
    for handle in (press, oven):
        expect(card(page, handle.device_id).locator(".status")).to_have_text("online", timeout=WAIT)
        expect(card(page, handle.device_id).locator(".state")).to_have_text("running", timeout=WAIT)
    expect(card(page, press.device_id).locator('[data-setpoint="pressure"]')).to_have_text("150")
    expect(card(page, press.device_id).locator(".kind")).to_have_text("press")
    # A reload starts the page from nothing: what it shows again can only come from the
    # broker's retained messages, which the devices published once, at start.
    page.reload()
    for handle in (press, oven):
        expect(card(page, handle.device_id).locator(".state")).to_have_text("running", timeout=WAIT)
        expect(card(page, handle.device_id).locator(".status")).to_have_text("online")
    expect(
        card(page, press.device_id).locator('.sensor[data-sensor="pressure"] .value')
    ).to_have_text(re.compile(r"^\d+(\.\d+)?$"), timeout=WAIT)


def test_a_crashed_devices_card_turns_offline_through_its_last_will(device, open_dashboard):
    press = device("press")
    page = open_dashboard()
    status = card(page, press.device_id).locator(".status")
    expect(status).to_have_text("online", timeout=WAIT)
    press.kill()  # no DISCONNECT: the broker publishes the device's Last Will
    expect(status).to_have_text("offline", timeout=WAIT)
    expect(card(page, press.device_id).locator(".since")).to_have_attribute(
        "title", "reason: last-will"
    )


def test_stop_in_the_command_center_reaches_the_device_and_its_card_shows_stopped(
    device, open_dashboard
):
    conveyor = device("conveyor")
    page = open_dashboard()
    state = card(page, conveyor.device_id).locator(".state")
    expect(state).to_have_text("running", timeout=WAIT)
    page.select_option("#cmd-device", conveyor.device_id)
    page.fill("#cmd-reason", "browser test")
    page.click("#cmd-stop")
    expect(state).to_have_text("stopped", timeout=WAIT)
    outcome = page.locator("#cmd-log .outcome").first
    expect(outcome).to_have_attribute("data-result", "accepted", timeout=WAIT)
    expect(outcome.locator(".detail")).to_have_text(f"{conveyor.device_id} is now stopped")
    expect(card(page, conveyor.device_id).locator(".reason")).to_have_text("browser test")

    # The device judges the value: out of range, it refuses, and the page says why.
    page.fill("#cmd-value", "9")
    page.click("#cmd-set")
    refused = page.locator("#cmd-log .outcome").first
    expect(refused).to_have_attribute("data-result", "rejected", timeout=WAIT)
    expect(refused.locator(".detail")).to_contain_text("outside the allowed range")


def test_an_invalid_command_gets_a_clear_error_on_the_page(device, open_dashboard):
    oven = device("oven")
    page = open_dashboard()
    expect(card(page, oven.device_id).locator(".state")).to_have_text("running", timeout=WAIT)
    page.select_option("#cmd-device", oven.device_id)
    page.fill("#cmd-value", "")
    page.click("#cmd-set")
    expect(page.locator("#cmd-error")).to_have_text(
        "a 'set' command needs a number as its value, got nothing", timeout=WAIT
    )
    expect(page.locator("#cmd-log .outcome")).to_have_count(0)
    assert "refused a command request" in page.dashboard.output()


# -- traffic -------------------------------------------------------------------------------------


def test_the_traffic_view_shows_qos_and_retain_flags(mqtt_client, topic_root, open_dashboard):
    publisher = mqtt_client()
    publisher.publish(f"{topic_root}/state/press-1", state_payload("press-1"), qos=1, retain=True)
    page = open_dashboard()
    state_row = page.locator(f'#traffic tr[data-topic="{topic_root}/state/press-1"]')
    expect(state_row.locator(".retain")).to_have_text("R", timeout=WAIT)  # replayed from the store
    expect(state_row.locator(".qos")).to_have_text("1")

    telemetry = f"{topic_root}/telemetry/press-1/temperature"
    alarm = f"{topic_root}/alarms/press-1/temperature"
    publisher.publish(telemetry, telemetry_payload("press-1", "temperature", 65.5), qos=0)
    publisher.publish(
        alarm,
        {
            "ts": time.time(),
            "device_id": "press-1",
            "sensor": "temperature",
            "state": "raised",
            "value": 130.0,
            "low": None,
            "high": 120.0,
            "severity": "warning",
            "message": "too hot",
        },
        qos=1,
    )
    telemetry_row = page.locator(f'#traffic tr[data-topic="{telemetry}"]')
    expect(telemetry_row.locator(".qos")).to_have_text("0", timeout=WAIT)
    expect(telemetry_row.locator(".retain")).to_have_text("-")
    expect(telemetry_row.locator(".count")).to_have_text("1")
    alarm_row = page.locator(f'#traffic tr[data-topic="{alarm}"]')
    expect(alarm_row.locator(".qos")).to_have_text("1", timeout=WAIT)
    expect(alarm_row.locator(".retain")).to_have_text("-")
    expect(alarm_row.locator(".payload")).to_contain_text('"too hot"')
    expect(card(page, "press-1").locator('.alarm[data-severity="warning"]')).to_have_text(
        "warning: too hot"
    )


def test_the_topic_filter_narrows_the_live_log(mqtt_client, topic_root, open_dashboard):
    publisher = mqtt_client()
    page = open_dashboard()
    expect(page.locator("#conn")).to_have_text("live", timeout=WAIT)
    page.fill("#filter", f"{topic_root}/telemetry/+/temperature")
    for device_id in ("press-1", "oven-1"):
        for sensor in ("temperature", "pressure"):
            publisher.publish(
                f"{topic_root}/telemetry/{device_id}/{sensor}",
                telemetry_payload(device_id, sensor, 1.0),
            )
    rows = page.locator("#log .log-row")
    expect(rows).to_have_count(2, timeout=WAIT)
    expect(
        page.locator(f'#traffic tr[data-topic="{topic_root}/telemetry/oven-1/pressure"]')
    ).to_have_count(1)
    topics = sorted(rows.evaluate_all("rows => rows.map(r => r.dataset.topic)"))
    assert topics == [
        f"{topic_root}/telemetry/oven-1/temperature",
        f"{topic_root}/telemetry/press-1/temperature",
    ]
    page.fill("#filter", f"{topic_root}/telemetry/#/x")
    expect(page.locator("#filter-error")).to_contain_text("'#' must be a whole level and the last")
    page.fill("#filter", f"{topic_root}/#")
    publisher.publish(f"{topic_root}/events/press-1", {"note": "after widening"}, qos=1)
    expect(rows).to_have_count(3, timeout=WAIT)


# -- safety ---------------------------------------------------------------------------------------

#: the issue's payload; had it run, the page would have opened a dialog (which fails the test)
ALERT = "<img src=x onerror=alert(1)>"
INJECTION = "<img src=x onerror=window.__pwned=1>"


def test_a_script_injection_payload_is_shown_as_text(mqtt_client, topic_root, open_dashboard):
    publisher = mqtt_client()
    publisher.publish(
        f"{topic_root}/state/press-1",
        state_payload("press-1", reason=ALERT, kind=INJECTION),
        qos=1,
        retain=True,
    )
    publisher.publish(f"{topic_root}/status/press-1", status_payload("press-1"), qos=1, retain=True)
    page = open_dashboard()
    press = card(page, "press-1")
    expect(press.locator(".reason")).to_have_text(ALERT, timeout=WAIT)
    expect(press.locator(".kind")).to_have_text(INJECTION)
    publisher.publish(
        f"{topic_root}/telemetry/press-1/{INJECTION.replace('/', '')}",
        {**telemetry_payload("press-1", "x", 1.0), "value": INJECTION, "unit": INJECTION},
    )
    expect(press.locator(".sensor .value")).to_have_text(INJECTION, timeout=WAIT)
    expect(page.locator("#log .log-row .payload").first).to_contain_text(INJECTION)
    assert page.locator("main img").count() == 0, "payload text became an <img> element"
    assert page.evaluate("window.__pwned") is None, "payload text ran as script"


# -- resilience ---------------------------------------------------------------------------------


@pytest.mark.broker_needs(RESTART)
def test_the_page_survives_a_broker_restart(make_broker, mqtt_client, topic_root, open_dashboard):
    broker = make_broker("open")
    publisher = mqtt_client(broker=broker)
    publisher.publish(f"{topic_root}/status/press-1", status_payload("press-1"), qos=1, retain=True)
    page = open_dashboard(broker=broker)
    conn = page.locator("#conn")
    expect(conn).to_have_text("live", timeout=WAIT)
    expect(card(page, "press-1").locator(".status")).to_have_text("online", timeout=WAIT)

    broker.stop()
    expect(conn).to_have_attribute("data-state", "broker-down", timeout=WAIT)
    expect(conn).to_contain_text("broker unreachable")
    broker.start()  # same port; its retained messages are gone (no persistence)
    expect(conn).to_have_text("live", timeout=15_000)

    again = mqtt_client(broker=broker)
    again.publish(
        f"{topic_root}/state/press-1", state_payload("press-1", "stopped"), qos=1, retain=True
    )
    expect(card(page, "press-1").locator(".state")).to_have_text("stopped", timeout=WAIT)


def test_the_page_reconnects_when_the_dashboard_server_comes_back(
    mqtt_client, topic_root, open_dashboard, sim_program
):
    publisher = mqtt_client()
    publisher.publish(f"{topic_root}/status/press-1", status_payload("press-1"), qos=1, retain=True)
    page = open_dashboard()
    expect(card(page, "press-1").locator(".status")).to_have_text("online", timeout=WAIT)
    port = int(page.url.rsplit(":", 1)[1].strip("/"))
    page.dashboard.stop()
    expect(page.locator("#conn")).to_have_attribute("data-state", "server-down", timeout=WAIT)
    sim_program("sim.dashboard", "--http-port", str(port), "--client-id", page.client_id)
    expect(page.locator("#conn")).to_have_text("live", timeout=15_000)
    publisher.publish(
        f"{topic_root}/state/press-1", state_payload("press-1", "fault"), qos=1, retain=True
    )
    expect(card(page, "press-1").locator(".state")).to_have_text("fault", timeout=WAIT)


# -- the chocolate line ---------------------------------------------------------------------------


def test_the_chocolate_line_shows_steps_batches_and_quality(
    mqtt_client, topic_root, open_dashboard
):
    publisher = mqtt_client()
    line = f"{topic_root}/tunis-01/line-a"
    publisher.publish(
        f"{line}/s5_tempering/temper-01/state",
        {"state": "running", "batch_id": "B-040", "recipe": "milk"},
        qos=1,
        retain=True,
    )
    page = open_dashboard()
    section = page.locator("#lines-section")
    expect(section).to_be_visible(timeout=WAIT)
    tempering = page.locator('.line[data-line="tunis-01/line-a"] .step[data-step="s5_tempering"]')
    expect(tempering.locator('.machine[data-machine="temper-01"] .state')).to_have_text("running")
    # Before any batch event, the retained state tells which batch is in the machine.
    expect(tempering.locator(".batch")).to_have_text("batch B-040 (milk)")

    publisher.publish(
        f"{line}/s5_tempering/temper-01/batch",
        {"batch_id": "B-042", "recipe": "dark", "event": "started"},
        qos=1,
    )
    publisher.publish(
        f"{line}/s8_packaging/packer-03/quality", {"batch_id": "B-041", "result": "fail"}, qos=1
    )
    publisher.publish(
        f"{line}/s8_packaging/packer-03/state", {"state": "stopped"}, qos=1, retain=True
    )
    expect(tempering.locator(".batch")).to_have_text("batch B-042 (dark): started", timeout=WAIT)
    packaging = page.locator('.step[data-step="s8_packaging"]')
    expect(packaging.locator(".quality")).to_have_attribute("data-result", "fail", timeout=WAIT)
    expect(packaging.locator(".quality")).to_have_text("quality of B-041: fail")
    expect(packaging.locator('.machine[data-machine="packer-03"] .state')).to_have_text("stopped")
    # chocolate machines are not factory devices: no card, no commands
    expect(page.locator(".device")).to_have_count(0)


def test_the_served_page_loads_nothing_from_elsewhere(open_dashboard):
    page = open_dashboard()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.reload()
    expect(page.locator("#conn")).to_have_text("live", timeout=WAIT)
    origin = page.url.rstrip("/")
    foreign = [
        url for url in requested if not url.startswith((origin, origin.replace("http", "ws")))
    ]
    assert not foreign, f"the page loaded resources from elsewhere: {foreign}"
    with urllib.request.urlopen(page.url + "static/app.js", timeout=10) as response:
        script = response.read().decode()
    assert "innerHTML" not in script, "payloads must be written with textContent, never innerHTML"

"""Benchmark and screenshot of the live dashboard (``sim.dashboard``) in headless Chromium.

Prints figures, never pass/fail::

    python -m mqtt_factory_lab.bench.dashboard               # 50 probes at rest, 50 under load
    python -m mqtt_factory_lab.bench.dashboard --samples 200 --rate 20

Latency is the time from publishing a telemetry reading (a probe device's
value, QoS 0) to that value being in the page's DOM: broker, dashboard
server, WebSocket, the page's JavaScript and its next animation frame. It is
measured twice on a fresh local broker: with the dashboard alone ("at rest"),
and while ``python -m sim.run_all --rate R`` runs (six devices, about 200
messages/s at ``--rate 20``), whose own dashboard is the one measured.
Both clocks are this machine's wall clock (the page's ``Date.now()`` and
Python's ``time.time()``), so the figures are good to a millisecond.

"Responsive" is measured in the page too: the animation frames it renders
per second and the longest gap between two frames, over two seconds, at
rest and under load.

:func:`screenshot` (``scripts/screenshot``) runs the factory and saves a
picture of the page for the README. :func:`launch_chromium` is how the
browser tests start the OS's Chromium.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mqtt_factory_lab.brokers import Broker, BrokerError, create_broker, resolve_backend
from mqtt_factory_lab.brokers.base import free_port
from mqtt_factory_lab.core.client import RecordingClient
from mqtt_factory_lab.core.factory import program_env
from mqtt_factory_lab.core.paths import LAB_ROOT as ROOT
from mqtt_factory_lab.core.roles import RoleProcess

#: what Chromium needs to start as root in a container, and nothing that phones home
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
PROBE = "bench-probe"
#: the PID of the dashboard the last :func:`factory` started
LAST_DASHBOARD_PID: int | None = None
PROBE_SELECTOR = f'.device[data-device="{PROBE}"] .sensor[data-sensor="latency"] .value'

# Resolves window.__probe with Date.now() once the element shows the text.
_WATCH = """([selector, text]) => {
  window.__probe = new Promise((resolve) => {
    const check = () => {
      const node = document.querySelector(selector);
      if (node && node.textContent === text) { resolve(Date.now()); return true; }
      return false;
    };
    if (check()) return;
    const observer = new MutationObserver(() => { if (check()) observer.disconnect(); });
    observer.observe(document.body, { subtree: true, childList: true, characterData: true });
  });
}"""

# Frames rendered in `ms` milliseconds and the longest gap between two of them.
_FRAMES = """(ms) => new Promise((resolve) => {
  const stamps = [];
  const start = performance.now();
  const tick = (now) => {
    stamps.push(now);
    if (now - start < ms) requestAnimationFrame(tick);
    else {
      let gap = 0;
      for (let i = 1; i < stamps.length; i++) gap = Math.max(gap, stamps[i] - stamps[i - 1]);
      resolve({ fps: (stamps.length - 1) / ((stamps[stamps.length - 1] - stamps[0]) / 1000), gap });
    }
  };
  requestAnimationFrame(tick);
})"""


def find_chromium() -> str | None:
    """The OS's Chromium (``$MQTT_LAB_CHROMIUM``, ``chromium`` on PATH, ``/usr/bin/chromium``)."""
    for candidate in (
        os.environ.get("MQTT_LAB_CHROMIUM"),
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def launch_chromium(playwright: Any) -> Any:
    """Start the OS's headless Chromium through Playwright (whose own download cannot work here).

    :raises RuntimeError: when there is none, saying how to install it.
    """
    executable = find_chromium()
    if executable is None:
        raise RuntimeError(
            "no Chromium found: run scripts/setup, or apt-get install -y chromium "
            "(or point MQTT_LAB_CHROMIUM at one)"
        )
    return playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A page in a headless Chromium, closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        raise RuntimeError("Playwright for Python is missing: run scripts/setup") from error
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def _start(name: str, args: list[str], broker: Broker, root: str) -> RoleProcess:
    process = RoleProcess(
        name, name, [sys.executable, "-m", *args], env=program_env(broker, root), cwd=ROOT
    )
    process.start()
    try:
        process.wait_for_output(r"^ready \S+$", timeout=60)
    except BaseException:
        process.close()
        raise
    return process


@contextlib.contextmanager
def dashboard_alone(broker: Broker, root: str) -> Iterator[str]:
    """``sim.dashboard`` on a free port; yields its address."""
    port = free_port()
    process = _start(
        "dashboard",
        [
            "sim.dashboard",
            "--http-port",
            str(port),
            "--client-id",
            f"dashboard-{uuid.uuid4().hex[:6]}",
        ],
        broker,
        root,
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.close()


@contextlib.contextmanager
def factory(broker: Broker, root: str, *extra: str) -> Iterator[str]:
    """``sim.run_all`` with its dashboard on a free port; yields the dashboard's address.

    The dashboard's PID is kept in :data:`LAST_DASHBOARD_PID` for CPU figures.
    """
    global LAST_DASHBOARD_PID
    port = free_port()
    process = _start(
        "run_all",
        ["sim.run_all", "--no-observer", "--http-port", str(port), *extra],
        broker,
        root,
    )
    match = re.search(r"started dashboard as pid (\d+)", process.output())
    LAST_DASHBOARD_PID = int(match.group(1)) if match else None
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.stop(20)
        process.close()


def probe_latencies(page: Any, publisher: RecordingClient, root: str, samples: int) -> list[float]:
    """Publish ``samples`` readings one after the other; return each publish-to-DOM time in ms."""
    topic = f"{root}/telemetry/{PROBE}/latency"
    latencies = []
    for i in range(samples + 1):
        value = 100000 + i  # integers are shown as they are
        page.evaluate(_WATCH, [PROBE_SELECTOR, str(value)])
        sent = time.time()
        publisher.publish(
            topic,
            {
                "ts": sent,
                "device_id": PROBE,
                "sensor": "latency",
                "value": value,
                "unit": "",
                "seq": i,
            },
        )
        shown = page.evaluate("window.__probe")
        if i > 0:  # the first one also builds the probe's card
            latencies.append(shown - sent * 1000)
    return latencies


def describe(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"median {statistics.median(ordered):.1f} ms, p95 {p95:.1f} ms, "
        f"min {ordered[0]:.1f} ms, max {ordered[-1]:.1f} ms over {len(ordered)} readings"
    )


def measure(
    page: Any, url: str, broker: Broker, root: str, samples: int
) -> tuple[list[float], dict]:
    page.goto(url)
    page.wait_for_function("() => document.getElementById('conn').dataset.state === 'live'")
    publisher = RecordingClient(broker.host, broker.port, f"bench-probe-{uuid.uuid4().hex[:6]}")
    publisher.connect()
    try:
        latencies = probe_latencies(page, publisher, root, samples)
    finally:
        publisher.disconnect()
    frames = page.evaluate(_FRAMES, 2000)
    return latencies, frames


def _cpu_seconds(pid: int | None) -> float:
    """User plus system CPU seconds a process has used (0 when unknown)."""
    import psutil

    if pid is None:
        return 0.0
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return times.user + times.system


def load_rate(broker: Broker, root: str, seconds: float = 3.0) -> float:
    """Messages per second under ``root``, counted by a QoS 0 subscriber."""
    counter = RecordingClient(broker.host, broker.port, f"bench-count-{uuid.uuid4().hex[:6]}")
    counter.connect()
    try:
        counter.subscribe(f"{root}/#", qos=0)
        first, started = len(counter.received()), time.monotonic()
        with contextlib.suppress(AssertionError):
            counter.wait_for_messages(10**9, f"{root}/#", timeout=seconds)
        return (len(counter.received()) - first) / (time.monotonic() - started)
    finally:
        counter.disconnect()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mqtt_factory_lab.bench.dashboard", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--samples", type=int, default=50, help="readings per phase (default 50)")
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="run_all telemetry rounds/s per device (default 20)",
    )
    args = parser.parse_args(argv)
    try:
        broker = create_broker(resolve_backend("auto"), "open")
        broker.start()
    except BrokerError as error:
        print(f"no broker: {error}")
        return 1
    try:
        with browser_page() as page:
            root = f"bench/{uuid.uuid4().hex[:8]}/factory"
            with dashboard_alone(broker, root) as url:
                rest, rest_frames = measure(page, url, broker, root, args.samples)
            print(f"publish to page, at rest:              {describe(rest)}")
            print(
                f"  page: {rest_frames['fps']:.0f} frames/s, longest frame gap {rest_frames['gap']:.0f} ms"
            )
            root = f"bench/{uuid.uuid4().hex[:8]}/factory"
            with factory(broker, root, "--rate", str(args.rate), "--time-scale", "10") as url:
                rate = load_rate(broker, root)
                cpu_before, started = _cpu_seconds(LAST_DASHBOARD_PID), time.monotonic()
                busy, busy_frames = measure(page, url, broker, root, args.samples)
                # with one page open, pushing every message to it
                cpu = (_cpu_seconds(LAST_DASHBOARD_PID) - cpu_before) / (time.monotonic() - started)
            print(
                f"publish to page, run_all --rate {args.rate:g} ({rate:.0f} msg/s): {describe(busy)}"
            )
            print(
                f"  page: {busy_frames['fps']:.0f} frames/s, longest frame gap {busy_frames['gap']:.0f} ms; "
                f"dashboard server with the page open: {cpu * 100:.0f}% of one core"
            )
    except RuntimeError as error:
        print(f"cannot run the browser: {error}")
        return 1
    finally:
        broker.close()
    return 0


def screenshot(path: Path, seconds_of_history: float = 6.0) -> Path:
    """Run the whole factory (``sim.run_all --anomaly``) and save a picture of its dashboard."""
    broker = create_broker(resolve_backend("auto"), "open")
    broker.start()
    try:
        with (
            factory(broker, "factory", "--rate", "4", "--time-scale", "30", "--anomaly") as url,
            browser_page(1400, 1000) as page,
        ):
            page.goto(url)
            page.wait_for_function(
                "() => document.querySelectorAll('.device .state[data-value]').length >= 6"
            )
            # Some history for the sparklines, and a command with its answer in the command center.
            page.select_option("#cmd-device", "conveyor")
            page.fill("#cmd-reason", "belt inspection")
            page.click("#cmd-stop")
            page.wait_for_function(
                "() => document.querySelector('#cmd-log .outcome')?.dataset.result === 'accepted'"
            )
            page.select_option("#cmd-device", "oven")
            page.fill("#cmd-reason", "")
            page.fill("#cmd-value", "400")
            page.click("#cmd-set")
            page.wait_for_function(
                "() => document.querySelector('#cmd-log .outcome')?.dataset.result === 'rejected'"
            )
            page.fill("#filter", "factory/telemetry/+/temperature")
            points = int(seconds_of_history * 4)
            page.wait_for_function(
                f"() => [...document.querySelectorAll('.spark polyline')].every("
                f"p => p.getAttribute('points').split(' ').length >= {points})",
                timeout=60_000,
            )
            path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(path), full_page=True)
    finally:
        broker.close()
    return path


def screenshot_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/screenshot",
        description="Save a screenshot of the dashboard with the factory running.",
    )
    parser.add_argument("path", nargs="?", default=str(ROOT / "docs" / "dashboard.png"))
    args = parser.parse_args(argv)
    try:
        saved = screenshot(Path(args.path))
    except (BrokerError, RuntimeError) as error:
        print(f"screenshot failed: {error}", file=sys.stderr)
        return 1
    print(f"saved {saved}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: broker ready time, lesson wall times, and the factory's start-up and throughput.

Prints figures, never pass/fail::

    python -m mqtt_factory_lab.bench                        # local backend
    python -m mqtt_factory_lab.bench --backend docker       # needs a Docker engine
    python -m mqtt_factory_lab.bench --backend local --backend docker --starts 10

Ready time is measured from starting the broker to its first accepted MQTT
CONNECT. Lesson wall times are whole ``pytest`` runs in a subprocess, so they
include interpreter start and collection, as a student experiences them.
The factory figures are the time from starting a device of the reference
solution to its retained ``online`` status, and the messages per second a
whole ``python -m sim.run_all`` puts through the broker.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid

from mqtt_factory_lab.brokers import Broker, BrokerError, create_broker, resolve_backend
from mqtt_factory_lab.core.client import RecordingClient
from mqtt_factory_lab.core.factory import FactoryLauncher, program_env
from mqtt_factory_lab.core.paths import LAB_ROOT as ROOT
from mqtt_factory_lab.core.roles import RoleProcess
from mqtt_factory_lab.core.solution import load as load_solution


def broker_ready_times(backend: str, starts: int, variant: str = "open") -> list[float]:
    """Start and stop a broker ``starts`` times; return each ready time in seconds."""
    times = []
    for _ in range(starts):
        broker = create_broker(backend, variant)
        with broker:
            assert broker.ready_seconds is not None
            times.append(broker.ready_seconds)
    return times


def lesson_wall_time(paths: list[str], backend: str) -> tuple[float, str]:
    """Run pytest on ``paths`` in a subprocess; return wall seconds and pytest's summary line."""
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *paths,
            "-q",
            "-p",
            "no:cacheprovider",
            f"--broker-backend={backend}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.monotonic() - started
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return elapsed, (lines[-1].strip("= ") if lines else f"exit {result.returncode}")


def device_online_times(broker: Broker, starts: int) -> list[float]:
    """Start ``starts`` devices one after the other; return each start-to-online time."""
    with FactoryLauncher(
        load_solution(), broker, f"bench/{uuid.uuid4().hex[:8]}/factory"
    ) as launcher:
        return [
            launcher.start_device("press", f"press-{i:02d}").online_after for i in range(starts)
        ]


def run_all_throughput(broker: Broker, seconds: float, rate: float) -> tuple[int, float]:
    """Run the whole reference factory for ``seconds``; return (messages, messages per second)."""
    root = f"bench/{uuid.uuid4().hex[:8]}/factory"
    counter = RecordingClient(broker.host, broker.port)
    counter.connect()
    counter.subscribe(f"{root}/#", qos=0)
    env = program_env(broker, root)
    command = [sys.executable, "-m", "sim.run_all", "--no-observer", "--no-dashboard"]
    command += ["--rate", str(rate), "--time-scale", "60", "--duration", str(seconds)]
    process = RoleProcess("run_all", "bench", command, env=env, cwd=ROOT).start()
    try:
        process.wait_for_output("^ready run_all$", timeout=30)
        first = len(counter.received())
        started = time.monotonic()
        process.wait_exit(seconds + 30)
        elapsed = time.monotonic() - started
        count = len(counter.received()) - first
    finally:
        process.close()
        counter.disconnect()
    return count, count / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mqtt_factory_lab.bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=("local", "docker"),
        help="backend to measure (repeatable; default local)",
    )
    parser.add_argument(
        "--starts", type=int, default=5, help="broker starts per backend (default 5)"
    )
    parser.add_argument("--no-lessons", action="store_true", help="skip the lesson wall times")
    parser.add_argument("--no-factory", action="store_true", help="skip the factory figures")
    parser.add_argument(
        "--rate",
        type=float,
        default=20.0,
        help="telemetry rounds/s per device for run_all (default 20)",
    )
    parser.add_argument(
        "--dashboard",
        action="store_true",
        help="also measure publish-to-page latency of sim.dashboard in headless Chromium "
        "(python -m mqtt_factory_lab.bench.dashboard)",
    )
    parser.add_argument(
        "--chocolate",
        action="store_true",
        help="also measure the data center: QoS 1 ingest against a bare subscriber, trace "
        "queries on a ~1M-message database (minutes), kill -9 runs "
        "(python -m mqtt_factory_lab.bench.chocolate)",
    )
    args = parser.parse_args(argv)

    lessons = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "labs").glob("[0-9][0-9]_*.py"))
    for requested in args.backend or ["local"]:
        try:
            backend = resolve_backend(requested)
            times = broker_ready_times(backend, args.starts)
        except BrokerError as error:
            print(f"{requested}: unavailable: {error}")
            continue
        print(f"backend {backend}")
        print(
            f"  broker ready time over {len(times)} starts: median {statistics.median(times) * 1000:.0f} ms, "
            f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
        )
        if not args.no_factory:
            with create_broker(backend, "open") as broker:
                online = device_online_times(broker, args.starts)
                count, per_second = run_all_throughput(broker, 5.0, args.rate)
            print(
                f"  device start to retained online over {len(online)} starts: median "
                f"{statistics.median(online) * 1000:.0f} ms, max {max(online) * 1000:.0f} ms"
            )
            print(
                f"  run_all (6 devices + controller, --rate {args.rate:g}) for 5 s: "
                f"{count} messages, {per_second:.0f} msg/s"
            )
        if args.no_lessons:
            continue
        for lesson in lessons:
            elapsed, summary = lesson_wall_time([lesson], backend)
            print(f"  {lesson:<28} {elapsed:6.2f} s   {summary}")
        elapsed, summary = lesson_wall_time(["labs"], backend)
        print(f"  {'labs/ (all lessons)':<28} {elapsed:6.2f} s   {summary}")
    if args.dashboard:
        from mqtt_factory_lab.bench import dashboard as bench_dashboard

        print("dashboard")
        bench_dashboard.main([])
    if args.chocolate:
        from mqtt_factory_lab.bench import chocolate as bench_chocolate

        print("chocolate data center")
        bench_chocolate.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: broker ready time per backend, wall time of each lesson and of all of ``labs/``.

Prints figures, never pass/fail::

    python -m harness.bench                        # local backend
    python -m harness.bench --backend docker       # needs a Docker engine
    python -m harness.bench --backend local --backend docker --starts 10

Ready time is measured from starting the broker to its first accepted MQTT
CONNECT. Lesson wall times are whole ``pytest`` runs in a subprocess, so they
include interpreter start and collection, as a student experiences them.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from harness.brokers import BrokerError, make_broker, resolve_backend

ROOT = Path(__file__).resolve().parent.parent


def broker_ready_times(backend: str, starts: int, variant: str = "open") -> list[float]:
    """Start and stop a broker ``starts`` times; return each ready time in seconds."""
    times = []
    for _ in range(starts):
        broker = make_broker(backend, variant)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.bench", description=__doc__.split("\n")[0]
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
    parser.add_argument("--no-lessons", action="store_true", help="only measure broker ready time")
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
        if args.no_lessons:
            continue
        for lesson in lessons:
            elapsed, summary = lesson_wall_time([lesson], backend)
            print(f"  {lesson:<28} {elapsed:6.2f} s   {summary}")
        elapsed, summary = lesson_wall_time(["labs"], backend)
        print(f"  {'labs/ (all lessons)':<28} {elapsed:6.2f} s   {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

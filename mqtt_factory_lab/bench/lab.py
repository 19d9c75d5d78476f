"""Benchmark: broker ready time, lessons, data-center ingest, grading, the factory.

Prints figures, never pass/fail (targets and recorded figures: docs/performance.md)::

    python -m mqtt_factory_lab.bench                        # every part, local backend
    python -m mqtt_factory_lab.bench --only ingest          # one line: "... ratio N"
    python -m mqtt_factory_lab.bench --only lessons --only grading
    python -m mqtt_factory_lab.bench --backend docker       # needs a Docker engine
    python -m mqtt_factory_lab.bench --backend local --backend docker --starts 10

Parts (``--only``, repeatable): ``broker`` (ready time), ``factory`` (device start-up,
``run_all`` throughput), ``lessons`` (each lesson module, then all of ``labs/`` serially),
``ingest`` (the data center ``python -m sim.datacenter`` and a bare paho subscriber on the
same full-speed QoS 1 stream, side by side in one run: rates and their ratio, records lost
and duplicated), ``grading`` (``mqtt-lab grade`` of a small class, every lesson — or of
``--grading-class-size N`` copies — the grader's set-up, grading time per submission in wall
and CPU seconds and what it is made of, a class of 30 projected, the load average),
``startup`` (CPU milliseconds to start each factory program, ``--help`` only, to import the
lab's pytest plugin and to collect a lesson in a child pytest: what every experiment's
programs and every graded lesson pay before doing anything).

Ready time is measured from starting the broker to its first accepted MQTT
CONNECT. Lesson wall times are whole ``pytest`` runs in a subprocess, so they
include interpreter start and collection, as a student experiences them.
The factory figures are the time from starting a device of the reference
solution to its retained ``online`` status, and the messages per second a
whole ``python -m sim.run_all`` puts through the broker.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from mqtt_factory_lab.bench import chocolate
from mqtt_factory_lab.brokers import Broker, BrokerError, create_broker, resolve_backend
from mqtt_factory_lab.core.client import RecordingClient
from mqtt_factory_lab.core.factory import FactoryLauncher, program_env
from mqtt_factory_lab.core.paths import LAB_ROOT as ROOT
from mqtt_factory_lab.core.roles import RoleProcess
from mqtt_factory_lab.core.solution import load as load_solution

#: what ``--only`` chooses from, in the order they are measured
PARTS = ("broker", "ingest", "factory", "lessons", "grading", "startup")

#: what the ``startup`` part starts: (label, argv after the interpreter)
STARTUPS = (
    *(
        (f"python -m {program} --help", ["-m", program, "--help"])
        for program in (
            "sim.device",
            "sim.controller",
            "sim.observer",
            "sim.datacenter",
            "sim.chocolate",
            "sim.run_all",
        )
    ),
    ("import mqtt_factory_lab.plugin", ["-c", "import mqtt_factory_lab.plugin"]),
    (
        "pytest --collect-only labs/01",
        ["-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "labs/01_wildcards.py"],
    ),
)


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


#: the example class: the grading figure grades its reference and a mostly correct submission
#: (one mistake), every lesson
GRADING_CLASS = ROOT / "tests" / "class_example"


def ingest_line(backend: str, batches: int) -> str:
    """One line: the data center's and the bare subscriber's rates and their ratio."""
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        r = chocolate.ingest_race(backend, batches, Path(tmp))
    return (
        f"ingest ({backend}, QoS 1 subscription, {r['messages']} messages at full speed): "
        f"python -m sim.datacenter {r['datacenter_rate']:.0f} msg/s "
        f"({r['datacenter_stored']} stored, {r['qos1_lost']} QoS 1 lost, "
        f"{r['duplicated']} duplicated), bare paho subscriber {r['bare_rate']:.0f} msg/s "
        f"({r['bare_received']} received); ratio {r['ratio']:.2f}"
    )


def class_copies(students: list[str], size: int | None) -> dict[str, str]:
    """The class the grading figure grades: submission name → the example it copies.

    Without ``size``, one copy of each of ``students``; with it, ``size`` submissions that
    take ``students`` in turn (``01-reference``, ``02-retains_telemetry``, ...).
    """
    if not size:
        return {student: student for student in students}
    return {f"{i + 1:02d}-{students[i % len(students)]}": students[i % len(students)]
            for i in range(size)}  # fmt: skip


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def grading_time(
    students: list[str], jobs: int | None, lesson_timeout: int, size: int | None = None
) -> dict[str, Any]:
    """Grade copies of the example class's ``students`` with every lesson, ``jobs`` at once
    (``None``: the grader's default), ``size`` submissions in all (see :func:`class_copies`).

    :returns: ``wall`` seconds, ``setup`` (from the grader's start to the first submission's:
        the readable Python, the plan of experiments, the probes), ``cpu`` (every process of
        the grading), ``jobs`` (as the grader chose), and ``runs`` (each submission's run
        record: its seconds, its lessons' wall, start-up and CPU seconds).
    """
    with tempfile.TemporaryDirectory(prefix="bench-grade-") as tmp:
        submissions = Path(tmp) / "class"
        for name, student in class_copies(students, size).items():
            shutil.copytree(GRADING_CLASS / student, submissions / name, symlinks=True)
        out = Path(tmp) / "out"
        command = [sys.executable, "-m", "mqtt_factory_lab.grading", str(submissions)]
        command += ["--out", str(out), "--quiet"]
        command += ["--lesson-timeout", str(lesson_timeout)]
        if jobs:
            command += ["-j", str(jobs)]
        started_at = time.time()
        started = time.monotonic()
        cpu_before = _cpu_of_children()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
        cpu = _cpu_of_children() - cpu_before
        elapsed = time.monotonic() - started
        if done.returncode not in (0, 1):
            raise RuntimeError(f"mqtt-lab grade failed ({done.returncode}): {done.stderr[-2000:]}")
        runs = [json.loads(run.read_text()) for run in (out / "runs").glob("*.json")]
    chosen = re.search(r"with -j (\d+)", done.stdout)
    first = min((run["graded_at"] - run["seconds"] for run in runs), default=started_at)
    return {
        "wall": elapsed,
        "setup": max(0.0, first - started_at),
        "cpu": cpu,
        "jobs": int(chosen.group(1)) if chosen else jobs,
        "runs": runs,
    }


def grading_line(
    students: list[str], jobs: int | None, lesson_timeout: int = 60, size: int | None = None
) -> str:
    """The grading figure: wall time, set-up, grading time per submission (wall, and CPU
    over the whole run), what a submission's time is made of, and a class of 30 projected
    with the load average it ran under.

    The projection: with at least ``jobs`` submissions, set-up + the measured time after
    set-up scaled to 30 submissions (the rate the grader kept); with fewer, set-up + 30 ×
    the mean submission / ``jobs``.
    """
    load_before = os.getloadavg()[0]
    got = grading_time(students, jobs, lesson_timeout, size)
    load_after = os.getloadavg()[0]
    runs, setup, elapsed, jobs = got["runs"], got["setup"], got["wall"], got["jobs"] or 1
    count = max(1, len(runs))
    seconds = [run["seconds"] for run in runs]
    mean = statistics.mean(seconds) if seconds else 0.0
    if len(runs) >= jobs:
        projected = setup + (elapsed - setup) * 30 / count
    else:
        projected = setup + 30 * mean / jobs
    units = [unit for run in runs for unit in run.get("units", [])]

    def total(key: str) -> float:
        return sum(float(unit.get(key, 0.0)) for unit in units) / count

    startup, lessons = total("startup_seconds"), total("seconds")
    copies = class_copies(students, size)
    scores: dict[str, set[str]] = {}
    for run in runs:  # copies of one example must score alike, whatever the load
        scores.setdefault(copies[run["student"]], set()).add(f"{run['score']:g}")
    marks = "; ".join(f"{name} {'/'.join(sorted(got))} of {runs[0]['max_score']:g}"
                      for name, got in sorted(scores.items()))  # fmt: skip
    if size:
        each = f"mean {mean:.0f} s, min {min(seconds, default=0):.0f}, max {max(seconds, default=0):.0f}"
    else:
        each = ", ".join(f"{run['student']} {run['seconds']:.0f} s" for run in
                         sorted(runs, key=lambda r: r["student"]))  # fmt: skip
    return (
        f"grading ({len(runs)} submissions, every lesson, -j {jobs}, --lesson-timeout "
        f"{lesson_timeout}): {elapsed:.0f} s wall, {setup:.0f} s set-up; grading time per "
        f"submission: {(elapsed - setup) / count:.1f} s wall, {got['cpu'] / count:.1f} CPU-s "
        f"(the whole run's CPU / submissions); each submission's own seconds: {each}, of "
        f"which child start-up {startup:.1f} s ({total('startup_cpu_seconds'):.1f} CPU-s), "
        f"lessons {lessons:.1f} s (pytest {total('cpu_seconds'):.1f} CPU-s, programs and "
        f"brokers {total('programs_cpu_seconds'):.1f} CPU-s), the grader's own and between "
        f"lessons {mean - startup - lessons:.1f} s; a class of 30 projected at -j {jobs}: "
        f"{projected / 60:.1f} min; points: {marks}; load average {load_before:.1f} before, "
        f"{load_after:.1f} after"
    )


def startup_cpu(argv: list[str], starts: int) -> list[float]:
    """CPU seconds (user + system, the process and its children) of ``starts`` runs of
    ``python argv``: start-up cost, which a loaded machine stretches in wall time but not
    in CPU time."""
    spent: list[float] = []
    for _ in range(starts):
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _, _, usage = os.wait4(process.pid, 0)
        process.returncode = 0  # reaped here
        spent.append(usage.ru_utime + usage.ru_stime)
    return spent


def startup_lines(starts: int) -> list[str]:
    """One line per :data:`STARTUPS` entry: median and min CPU milliseconds."""
    lines = [f"start-up CPU over {starts} starts (median, min; load {os.getloadavg()[0]:.1f}):"]
    for label, argv in STARTUPS:
        spent = startup_cpu(argv, starts)
        lines.append(
            f"  {label:<36} {statistics.median(spent) * 1000:5.0f} ms, "
            f"min {min(spent) * 1000:4.0f} ms"
        )
    return lines


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
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="measure only this part (repeatable; default every part): " + ", ".join(PARTS),
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
        "--ingest-batches",
        type=int,
        default=300,
        help="chocolate batches the line publishes for the ingest figure (default 300, ~27k "
        "messages)",
    )
    parser.add_argument(
        "--grading-jobs",
        type=int,
        default=None,
        help="submissions graded at once (default: the grader's own default)",
    )
    parser.add_argument(
        "--grading-class-size",
        type=int,
        default=None,
        metavar="N",
        help="grade N submissions, copies of --grading-students in turn (default: one copy "
        "of each); the figure a class target is measured with",
    )
    parser.add_argument(
        "--grading-students",
        default="reference,retains_telemetry",
        metavar="NAME,NAME",
        help="submissions of tests/class_example the grading figure grades (default "
        "reference,retains_telemetry: full marks and one mistake)",
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
    parts = set(args.only or PARTS)
    if args.no_lessons:
        parts.discard("lessons")
    if args.no_factory:
        parts.discard("factory")
    verbose = args.only is None or len(parts) > 1

    lessons = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "labs").glob("[0-9][0-9]_*.py"))
    for requested in args.backend or ["local"]:
        try:
            backend = resolve_backend(requested)
            times = broker_ready_times(backend, args.starts) if "broker" in parts else []
        except BrokerError as error:
            print(f"{requested}: unavailable: {error}")
            continue
        if verbose:
            print(f"backend {backend}")
        if times:
            print(
                f"  broker ready time over {len(times)} starts: median {statistics.median(times) * 1000:.0f} ms, "
                f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms"
            )
        if "ingest" in parts:
            print(("  " if verbose else "") + ingest_line(backend, args.ingest_batches), flush=True)
        if "factory" in parts:
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
        if "lessons" in parts:
            total = 0.0
            for lesson in lessons:
                elapsed, summary = lesson_wall_time([lesson], backend)
                total += elapsed
                print(f"  {lesson:<28} {elapsed:6.2f} s   {summary}", flush=True)
            elapsed, summary = lesson_wall_time(["labs"], backend)
            print(f"  {'labs/ (all lessons, serial)':<28} {elapsed:6.2f} s   {summary}")
            print(f"  {'sum of the modules':<28} {total:6.2f} s")
    if "startup" in parts:
        for line in startup_lines(max(args.starts, 5)):
            print(line, flush=True)
    if "grading" in parts:
        students = args.grading_students.split(",")
        print(
            grading_line(students, args.grading_jobs, size=args.grading_class_size),
            flush=True,
        )
    if args.dashboard:
        from mqtt_factory_lab.bench import dashboard as bench_dashboard

        print("dashboard")
        bench_dashboard.main([])
    if args.chocolate:
        print("chocolate data center")
        chocolate.main([])
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The lab's pytest plugin: its options, markers and hooks, in one place.

The root ``conftest.py`` loads it; another project loads it through the ``pytest11``
entry point ``mqtt_factory_lab.plugin`` (``pip install mqtt-factory-lab``). The
fixtures live next door, one module per subject, like pytest's own plugins:

:mod:`mqtt_factory_lab.broker_fixtures`
    ``broker``, ``make_broker``, ``mqtt_client``, ``topic_root``, ``protocol``,
    ``broker_env``, ``lab_seed``, ``broker_pool``
:mod:`mqtt_factory_lab.factory_fixtures`
    ``solution``, ``device``, ``factory``, ``factory_launcher``, ``observer_capture``

``pytest --help`` lists the options under "mqtt-factory-lab", ``pytest --markers``
the markers.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

# First: a `pytest` from outside the lab's .venv stops here with one sentence.
from mqtt_factory_lab import requirements_check  # noqa: F401
from mqtt_factory_lab.broker_fixtures import BROKERS_USED
from mqtt_factory_lab.brokers import BACKENDS, CONFIG, LOG, RESTART, BrokerError
from mqtt_factory_lab.brokers.base import format_log
from mqtt_factory_lab.factory_fixtures import LAUNCHERS, SOLUTION
from mqtt_factory_lab.roles import RoleError
from mqtt_factory_lab.schemas import PayloadError
from mqtt_factory_lab.solution import ManifestError, load

pytest_plugins = [
    "mqtt_factory_lab.broker_fixtures",
    "mqtt_factory_lab.factory_fixtures",
    "mqtt_factory_lab.acl",
    "mqtt_factory_lab.points",
]

ENV_BACKEND = "MQTT_LAB_BROKER_BACKEND"
ENV_URL = "MQTT_LAB_BROKER_URL"
ENV_SOLUTION = "MQTT_LAB_SOLUTION"
_SKIP_REASONS = {
    RESTART: "restarts or stops the broker",
    CONFIG: "needs a broker configuration the lab chooses (ACL file, persistence)",
    LOG: "reads the broker's log",
}
#: how many lines of a program's output and of a broker's log a failure report shows
REPORT_LINES = 25


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mqtt-factory-lab", "MQTT factory lab")
    group.addoption(
        "--broker-backend",
        choices=BACKENDS,
        default=os.environ.get(ENV_BACKEND, "auto"),
        help=(
            "where brokers come from: local = the mosquitto executable, docker = a container "
            "via testcontainers, external = the broker at --broker-url, auto = docker if an "
            f"engine answers, else local (default: ${ENV_BACKEND} or auto)"
        ),
    )
    group.addoption(
        "--broker-url",
        default=os.environ.get(ENV_URL),
        metavar="mqtt://HOST:PORT",
        help=f"use a broker someone else runs (implies --broker-backend=external; ${ENV_URL})",
    )
    group.addoption(
        "--docker-image",
        default=None,
        help="Mosquitto image for the docker backend (default: $MQTT_LAB_DOCKER_IMAGE or the pinned one)",
    )
    group.addoption(
        "--docker-network",
        choices=("bridge", "host"),
        default=None,
        help="docker backend networking: bridge = mapped port (default), host = host network "
        "on 127.0.0.1 ($MQTT_LAB_DOCKER_NETWORK)",
    )
    group.addoption(
        "--solution",
        default=os.environ.get(ENV_SOLUTION),
        metavar="PATH",
        help="solution manifest (solution.toml, or its folder) whose programs the lessons run "
        f"(default: ${ENV_SOLUTION} or the lab's reference solution)",
    )
    group.addoption(
        "--time-scale",
        type=float,
        default=60.0,
        help="plant seconds per wall-clock second for simulated devices (default 60)",
    )
    group.addoption(
        "--lab-seed",
        type=int,
        default=int(os.environ.get("MQTT_LAB_SEED", "1")),
        help="seed for simulators and generated data, for repeatable runs (default 1)",
    )


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "lesson(number): the lesson this experiment belongs to (labs/NN_*.py)",
        "broker: an experiment on the broker's MQTT semantics with plain clients "
        "(conformance: `pytest labs -m broker --broker-url URL`)",
        "solution: an experiment that runs the solution's own programs or files "
        "(grading: `pytest labs -m solution --solution PATH`)",
        "broker_needs(*capabilities): skip on a backend that cannot 'restart', 'config' "
        "(choose ACL/persistence) or read the 'log' of its broker (--broker-url)",
    ):
        config.addinivalue_line("markers", line)
    try:
        config.stash[SOLUTION] = load(config.getoption("--solution"))
    except ManifestError as error:
        if config.getoption("--solution"):
            raise pytest.UsageError(f"--solution: {error}") from error
        # No --solution, and the reference is not where the lab would find it (the
        # package is used outside its checkout): only solution fixtures need one.
    _stop_cleanly_on_sigterm()


def _stop_cleanly_on_sigterm() -> None:
    """Let SIGTERM tear down like Ctrl-C does, so brokers and simulators are stopped."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"received signal {signum}")

    try:
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        pass


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On a broker the lab does not control, skip what needs control, saying why."""
    if not (config.getoption("--broker-url") or config.getoption("--broker-backend") == "external"):
        return
    for item in items:
        for mark in item.iter_markers("broker_needs"):
            missing = [c for c in mark.args if c in _SKIP_REASONS]
            if missing:
                reasons = "; ".join(_SKIP_REASONS[c] for c in missing)
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"the external broker is not the lab's to control: this test {reasons}"
                    )
                )


def pytest_report_header(config: pytest.Config) -> list[str]:
    backend = config.getoption("--broker-backend")
    url = config.getoption("--broker-url")
    lines = [f"mqtt-factory-lab: broker backend {backend}{f' ({url})' if url else ''}"]
    solution = config.stash.get(SOLUTION, None)
    if solution is not None:
        lines.append(f"mqtt-factory-lab: solution {solution.name!r} ({solution.path})")
    return lines


#: failures that are the lesson itself: their message teaches, their traceback would not
TEACHING_FAILURES = (AssertionError, PayloadError, RoleError, ManifestError, BrokerError)
#: broker log lines left out of a failure report unless the failure is about them
NOISE = {"telemetry": re.compile(r"/telemetry/")}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """On failure: a lesson's teaching message without harness frames, then the evidence.

    The evidence is each broker's state and log during the test (telemetry chatter left
    out unless the failure is about telemetry) and what each program printed (unless the
    failure message quotes it already).
    """
    report = yield
    if not report.failed:
        return report
    message = _teaching_message(item, call)
    if message is not None:
        report.longrepr = message
    failure = str(report.longrepr)
    for broker, mark in item.stash.get(BROKERS_USED, []):
        section = broker.health()
        if LOG in broker.capabilities:
            try:
                lines = broker.log_lines()[mark:]
                quiet = [p for word, p in NOISE.items() if word not in failure]
                shown = [line for line in lines if not any(p.search(line) for p in quiet)]
                left_out = len(lines) - len(shown)
                section += "\n  its log during this test"
                section += f" ({left_out} telemetry lines left out)" if left_out else ""
                section += ":\n" + format_log(shown, REPORT_LINES)
            except Exception as error:  # the broker may be gone; the report must not be
                section += f"\n    (log unavailable: {error})"
        report.sections.append((f"broker {broker.variant} ({broker.backend})", section))
    for launcher in item.stash.get(LAUNCHERS, []):
        for process in launcher.processes:
            if f"the {process.role} role ({process.name})" in failure:
                continue  # the message already quotes what it printed
            lines = process.output().splitlines()
            tail = "\n".join(lines[-REPORT_LINES:]) or "(no output)"
            if len(lines) > REPORT_LINES:
                tail = f"(last {REPORT_LINES} of {len(lines)} lines)\n{tail}"
            report.sections.append((f"program {process.role} {process.name}", tail))
    return report


def _teaching_message(item: pytest.Item, call: pytest.CallInfo[None]) -> str | None:
    """For a lesson's experiment, the failure as its message and the line that failed.

    Only with pytest's default traceback style: ``--tb=long`` (or any other) shows everything.
    """
    if (
        call.excinfo is None
        or item.get_closest_marker("lesson") is None
        or item.config.getoption("tbstyle", "auto") != "auto"
        or not isinstance(call.excinfo.value, TEACHING_FAILURES)
    ):
        return None
    text = str(call.excinfo.value)
    # pytest's assertion rewriting appends its own explanation ("assert False", "where ...")
    text = re.split(r"\nassert |\n\+  where ", text, maxsplit=1)[0].rstrip()
    entry = call.excinfo.traceback.filter(call.excinfo)[-1]
    path = entry.path
    if isinstance(path, os.PathLike) and item.config.rootpath in Path(path).parents:
        path = Path(path).relative_to(item.config.rootpath)
    where = f"{path}:{entry.lineno + 1}"
    kind = type(call.excinfo.value).__name__
    return f"{where}: {kind}\n{text}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say what was graded: solution experiments apart from broker ones, and whose code ran."""
    stats = terminalreporter.stats
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for report in stats.get(outcome, []):
            if report.when != "call" and outcome != "error" and outcome != "skipped":
                continue
            kind = next((k for k in ("solution", "broker") if k in report.keywords), None)
            if kind is not None:
                counts.setdefault(kind, {}).setdefault(outcome, 0)
                counts[kind][outcome] += 1
    if not counts:
        return
    terminalreporter.section("mqtt-factory-lab")
    for kind, what in (
        ("broker", "the broker's MQTT rules"),
        ("solution", "the solution's programs"),
    ):
        if kind in counts:
            tally = counts[kind]
            done = sum(tally.values())
            terminalreporter.write_line(
                f"{kind} experiments ({what}): {tally.get('passed', 0)} of {done} passed"
                + "".join(
                    f", {tally[o]} {o}" for o in ("failed", "error", "skipped") if tally.get(o)
                )
            )
    solution = config.stash.get(SOLUTION, None)
    if "solution" in counts and solution is not None and solution.is_reference:
        terminalreporter.write_line(
            "the solution experiments ran the lab's own reference solution, not yours: "
            "grade your programs with --solution path/to/your/solution.toml",
            yellow=True,
        )

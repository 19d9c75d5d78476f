"""The lab's pytest plugin: its options, markers and hooks, in one place.

The root ``conftest.py`` loads it; another project loads it through the ``pytest11``
entry point ``mqtt_factory_lab.plugin`` (``pip install mqtt-factory-lab``). The
fixtures live next door, one module per subject, like pytest's own plugins:

:mod:`mqtt_factory_lab.fixtures.brokers`
    ``broker``, ``make_broker``, ``mqtt_client``, ``topic_root``, ``protocol``,
    ``broker_env``, ``lab_seed``, ``broker_pool``
:mod:`mqtt_factory_lab.fixtures.factory`
    ``solution``, ``device``, ``factory``, ``factory_launcher``, ``observer_capture``
:mod:`mqtt_factory_lab.fixtures.shared_programs`
    ``module_programs``, ``module_device``
:mod:`mqtt_factory_lab.fixtures.overlap`
    several lessons in a serial session: verdicts on runs started ahead come last

``pytest --help`` lists the options under "mqtt-factory-lab", ``pytest --markers``
the markers.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

# First: a `pytest` from outside the lab's .venv stops here with one sentence.
from mqtt_factory_lab import requirements_check  # noqa: F401
from mqtt_factory_lab.brokers import BACKENDS, CONFIG, LOG, RESTART, BrokerError
from mqtt_factory_lab.brokers.base import format_log
from mqtt_factory_lab.conformance import spec
from mqtt_factory_lab.conformance.capabilities import (
    CAPABILITIES,
    BrokerNotReady,
    Capabilities,
    probe,
)
from mqtt_factory_lab.contract import PayloadError
from mqtt_factory_lab.core import broker_options
from mqtt_factory_lab.core.connection import ConnectionSettings, mask_url
from mqtt_factory_lab.core.mistakes import Mistake, describe, group, mistake_key, same_as
from mqtt_factory_lab.core.roles import RoleError
from mqtt_factory_lab.core.solution import ManifestError, load
from mqtt_factory_lab.core.tls_probe import files_problem
from mqtt_factory_lab.fixtures.acl import read_matrix_option
from mqtt_factory_lab.fixtures.brokers import (
    BROKERS_USED,
    CAPABILITIES_KEY,
    CONNECTION,
    NOT_READY_KEY,
    needed_capabilities,
)
from mqtt_factory_lab.fixtures.factory import LAUNCHERS, SOLUTION
from mqtt_factory_lab.grading import points

pytest_plugins = [
    "mqtt_factory_lab.fixtures.brokers",
    "mqtt_factory_lab.fixtures.factory",
    "mqtt_factory_lab.fixtures.bridge",
    "mqtt_factory_lab.fixtures.acl",
    "mqtt_factory_lab.fixtures.chocolate",
    "mqtt_factory_lab.fixtures.tls",
    "mqtt_factory_lab.fixtures.mqtt5",
    "mqtt_factory_lab.fixtures.shared_programs",
    "mqtt_factory_lab.fixtures.overlap",
]

ENV_BACKEND = "MQTT_LAB_BROKER_BACKEND"
ENV_URL = broker_options.ENV_URL
ENV_SOLUTION = "MQTT_LAB_SOLUTION"
_SKIP_REASONS = {
    RESTART: "restarts or stops the broker",
    CONFIG: "needs a broker configuration the lab chooses (ACL file, persistence)",
    LOG: "reads the broker's log",
}
#: how many lines of a program's output and of a broker's log a failure report shows
REPORT_LINES = 25
#: the conformance recorder of this run (controller or single process only)
RECORDER = pytest.StashKey[spec.Recorder]()
#: failures seen so far in this process, by :func:`~mqtt_factory_lab.core.mistakes.mistake_key`
MISTAKES = pytest.StashKey[dict[str, Mistake]]()
#: the key under which xdist's controller hands the probed capabilities to its workers
WORKER_CAPABILITIES = "mqtt_lab_capabilities"


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
    broker_options.add_to_pytest(group)
    group.addoption(
        "--conformance-report",
        metavar="DIR",
        help="write the conformance report (report.md, report.json) of this run to DIR "
        "(`python -m mqtt_factory_lab.conformance` adds JUnit XML and runs the broker experiments)",
    )
    group.addoption(
        "--conformance-note",
        action="append",
        default=[],
        metavar="TEXT",
        help="a line for the conformance report's head, such as what was not checked (repeatable)",
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
    group.addoption(
        "--acl-file",
        metavar="PATH",
        default=None,
        help="the Mosquitto ACL file lesson 06 loads into its brokers and checks against the "
        "permission matrix (default: the solution's [files] acl)",
    )
    group.addoption(
        "--acl-matrix",
        metavar="PATH",
        default=None,
        help="the permission matrix (TOML: [clients], [publish], [subscribe]; see docs/acl.md) "
        "lesson 06 holds the ACL to (default: the one written in labs/06_acl.py)",
    )
    points.add_options(group)  # --points-json, --points-jsonl, --points-plan, --gradescope


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "lesson(number): the lesson this experiment belongs to (labs/NN_*.py)",
        "broker: an experiment on the broker's MQTT semantics with plain clients "
        "(conformance: `pytest labs -m broker --broker-url URL`)",
        "solution: an experiment that runs the solution's own programs or files "
        "(grading: `pytest labs -m solution --solution PATH`)",
        "broker_needs(*capabilities): skip on a backend that cannot 'restart', 'config' "
        "(choose ACL/persistence) or read the 'log' of its broker (--broker-url)",
        f"needs(*capabilities): skip, with the probe's reason, on a broker that lacks one of "
        f"{', '.join(CAPABILITIES)}",
        spec.MARKER,
        spec.RULE_MARKER,
        points.MARKER,
        points.WEIGHT_MARKER,
    ):
        config.addinivalue_line("markers", line)
    points.configure(config)
    _read_connection(config)
    read_matrix_option(config)
    if hasattr(config, "workerinput"):
        handed = config.workerinput.get(WORKER_CAPABILITIES)
        if handed:
            config.stash[CAPABILITIES_KEY] = Capabilities.from_json(json.loads(handed))
    else:
        recorder = config.stash[RECORDER] = spec.Recorder()
        config.pluginmanager.register(recorder, "mqtt-lab-conformance-recorder")
    try:
        config.stash[SOLUTION] = load(config.getoption("--solution"))
    except ManifestError as error:
        if config.getoption("--solution"):
            raise pytest.UsageError(f"--solution: {error}") from error
        # No --solution, and the reference is not where the lab would find it (the
        # package is used outside its checkout): only solution fixtures need one.
    _stop_cleanly_on_sigterm()


def _read_connection(config: pytest.Config) -> None:
    """Parse ``--broker-url`` and its companions once, into ``config.stash[CONNECTION]``."""
    url = config.getoption("--broker-url")
    config.stash[CONNECTION] = None
    if url is not None and not url.strip():
        raise pytest.UsageError(
            f"--broker-url is empty (or ${ENV_URL} is set to nothing): give the broker's URL, "
            "such as mqtt://broker.example:1883, or leave both out to use the lab's own broker"
        )
    if not url:
        for option in ("--broker-url-mqtt5", "--broker-ca", "--broker-cert", "--broker-key"):
            if config.getoption(option):
                raise pytest.UsageError(f"{option} goes with --broker-url (an external broker)")
        return
    try:
        config.stash[CONNECTION] = ConnectionSettings.from_options(
            url,
            mqtt5_url=config.getoption("--broker-url-mqtt5"),
            username=config.getoption("--broker-username"),
            password_env=config.getoption("--broker-password-env"),
            ca=config.getoption("--broker-ca"),
            cert=config.getoption("--broker-cert"),
            key=config.getoption("--broker-key"),
        )
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    problem = files_problem(  # a CA, certificate or key that cannot be used: one sentence
        config.getoption("--broker-ca"),
        config.getoption("--broker-cert"),
        config.getoption("--broker-key"),
    )
    if problem:
        raise pytest.UsageError(problem)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Probe an external broker once, before anything runs: readiness and capabilities.

    A broker that accepts no CONNECT ends the run here, with what it said and what to do,
    instead of failing every test on its own. xdist's workers get the result from the
    controller (:func:`pytest_configure_node`).
    """
    config = session.config
    settings = config.stash.get(CONNECTION, None)
    if settings is None or hasattr(config, "workerinput") or CAPABILITIES_KEY in config.stash:
        return
    if config.getoption("collectonly") or config.getoption("--broker-backend") not in (
        "auto",
        "external",
    ):
        return  # nothing will connect; a backend conflict is reported by the pool
    try:
        config.stash[CAPABILITIES_KEY] = probe(settings)
    except BrokerNotReady as error:
        config.stash[NOT_READY_KEY] = str(error)
        _report_without_experiments(config, f"no experiment ran: {error}")
        raise pytest.UsageError(f"mqtt-factory-lab: {error}") from None
    except Exception as error:  # a broker the probe did not foresee: still a report, and why
        message = f"the capability probe failed on this broker: {type(error).__name__}: {error}"
        config.stash[NOT_READY_KEY] = message
        _report_without_experiments(config, f"no experiment ran: {message}")
        raise pytest.UsageError(f"mqtt-factory-lab: {message}") from None


def _report_without_experiments(config: pytest.Config, why: str) -> None:
    """A conformance run that ends before any experiment still writes its report."""
    folder = config.getoption("--conformance-report")
    recorder = config.stash.get(RECORDER, None)
    if not folder or recorder is None:
        return
    settings = config.stash.get(CONNECTION, None)
    report = spec.build_report(
        recorder,
        broker=settings.describe() if settings else "the lab's own broker",
        capabilities=None,
        command=["pytest", *(mask_url(a) for a in config.invocation_params.args)],
        notes=[*config.getoption("--conformance-note"), why],
    )
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (Path(folder) / "report.md").write_text(spec.render_markdown(report))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: hand the capabilities probed by the controller to each worker."""
    found = node.config.stash.get(CAPABILITIES_KEY, None)
    if found is not None:
        node.workerinput[WORKER_CAPABILITIES] = json.dumps(found.to_json())


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
    """Tag each experiment with its protocol and statements; on a broker the lab does not
    control, skip what needs control, saying why."""
    spec.tag_items(items)
    for item in items:
        needed_capabilities(item, implied=False)  # an unknown name is a usage error, now
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
    settings = config.stash.get(CONNECTION, None)
    url = settings.describe() if settings is not None else None
    lines = [f"mqtt-factory-lab: broker backend {backend}{f' ({url})' if url else ''}"]
    found = config.stash.get(CAPABILITIES_KEY, None)
    if found is not None:
        lines.append(f"mqtt-factory-lab: what the broker can do (probed in {found.seconds:.2f}s):")
        lines.extend(found.table())
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
    # The same mistake as an earlier experiment: its message, without the evidence again.
    seen = item.config.stash.setdefault(MISTAKES, {})
    key = mistake_key(failure)
    if key in seen:
        seen[key].names.append(report.nodeid)
        report.longrepr = f"{failure}\n{same_as(seen[key].first)}"
        return report
    seen[key] = Mistake(report.nodeid, failure, [report.nodeid])
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
        report.sections.append((f"broker {broker.label} ({broker.backend})", section))
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
    recorder = config.stash.get(RECORDER, None)
    report_dir = config.getoption("--conformance-report")
    if recorder is not None and report_dir:
        _write_report(config, recorder, Path(report_dir), terminalreporter)
    if not counts:
        return
    terminalreporter.section("mqtt-factory-lab")
    # From the reports themselves, so that it also works when pytest-xdist workers ran them.
    failures = [
        (report.nodeid, report.longreprtext)
        for outcome in ("failed", "error")
        for report in stats.get(outcome, [])
        if report.failed
    ]
    for mistake in group(failures):
        if len(mistake.names) > 1:
            terminalreporter.write_line(describe(mistake), red=True)
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
    if recorder is not None:
        _summarise_conformance(terminalreporter, recorder)


def _summarise_conformance(terminalreporter: Any, recorder: spec.Recorder) -> None:
    """Missing capabilities once each, and the statements the run tested, per protocol."""
    for finding in recorder.findings():
        terminalreporter.write_line(
            f"finding: {finding['finding']} ({finding['skipped']} experiments skipped for it)",
            yellow=True,
        )
    results = list(recorder.results.values())
    table = spec.statement_table(results)
    for protocol, rows in table.items():
        statuses = [row["status"] for row in rows.values()]
        terminalreporter.write_line(
            f"MQTT {protocol} statements: {len(rows)} tested, "
            + ", ".join(f"{statuses.count(s)} {s}" for s in ("passed", "failed", "skipped"))
        )
    if any(r.kinds == ["broker"] or "broker" in r.kinds for r in results):
        for protocol, row in spec.coverage(table).items():
            terminalreporter.write_line(spec.coverage_line(protocol, row))
    external = terminalreporter.config.stash.get(CONNECTION, None) is not None
    observed = [r for r in results if r.rule == "may" and r.observations and external]
    for result in observed:
        terminalreporter.write_line(
            f"behaves this way (MAY): {result.nodeid.rpartition('::')[2]}: "
            + "; ".join(result.observations)
        )


def _write_report(
    config: pytest.Config, recorder: spec.Recorder, folder: Path, terminalreporter: Any
) -> None:
    """Write report.json and report.md of this run into ``folder``."""
    settings = config.stash.get(CONNECTION, None)
    found = config.stash.get(CAPABILITIES_KEY, None)
    broker = (
        settings.describe()
        if settings
        else f"the lab's own broker ({config.getoption('--broker-backend')} backend)"
    )
    command = ["pytest", *(mask_url(a) for a in config.invocation_params.args)]
    report = spec.build_report(
        recorder,
        broker=broker,
        capabilities=found.to_json() if found else None,
        command=command,
        notes=config.getoption("--conformance-note"),
    )
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (folder / "report.md").write_text(spec.render_markdown(report))
    terminalreporter.write_line(
        f"conformance report: {folder / 'report.md'}, {folder / 'report.json'}"
    )

"""Points: what each experiment of a lesson is worth, the score of a run, and its machine-readable forms.

Its options, marker and recorder are registered by :mod:`mqtt_factory_lab.plugin`
(:func:`add_options`, :data:`MARKER`, :func:`configure`). Every experiment of a lesson
(an item with ``pytest.mark.lesson(N)``) is worth points:

* ``@pytest.mark.points(3)`` on the experiment, or in a lesson's ``pytestmark`` for all its
  experiments (the closest marker wins);
* otherwise :data:`DEFAULT_POINTS`: a ``solution`` experiment (the student's programs) is
  worth 2, a ``broker`` experiment (the broker's rules, nothing the student wrote) 1.

The points belong to the test *function*: its parametrised cases share them evenly (a check
run on MQTT 3.1.1 and 5 gives half its points per protocol; the 110 cells of a permission
matrix do not outweigh every other lesson), or by their ``weight(w)`` marks (lesson 06's
cells weigh by the harm of a wrong verdict). Cases are counted before ``-m``/``-k``
deselection, so a selection never changes what a case is worth. A skipped experiment is not
part of the maximum: it was not asked.

At the end of a run the terminal shows, per lesson, experiments passed / total and points /
maximum, then each failure's teaching message (the plugin already made the report of a
lesson failure its message, not its traceback). Machine-readable forms:

``--points-json PATH``     the whole run: per experiment lesson, concept, points, outcome,
                            message and the output of the programs it ran
``--points-jsonl PATH``    one JSON line per finished experiment, written as it finishes (a run
                            that is killed still leaves what it did; the class grader reads it)
``--points-plan PATH``     the experiments selected and their points, written after collection
                            (with ``--collect-only``: the assignment's maximum without running)
``--gradescope PATH``      Gradescope's ``results.json``
``--junitxml PATH``        pytest's own JUnit XML; each testcase carries the properties
                            ``lesson``, ``concept``, ``kind`` and ``points``

Example::

    pytest labs -m solution --solution ../alice/solution.toml --points-json alice.json
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mqtt_factory_lab.core.mistakes import SAME_AS, group, names_in_short

#: points of an experiment that has no ``points`` marker, by its kind (``None``: untagged)
DEFAULT_POINTS: dict[str | None, float] = {"solution": 2, "broker": 1, None: 1}
#: the format name written into every JSON document, bumped when fields change meaning
FORMAT = "mqtt-factory-lab/points/1"
#: how many lines of a failure's teaching message the terminal summary shows
SUMMARY_LINES = 8
#: the report sections that are a program's output (added by the plugin on failure)
PROGRAM_SECTION = re.compile(r"^program (?P<role>\S+) (?P<name>.+)$")
#: the report sections that are a broker's state and trimmed log during the test
BROKER_SECTION = re.compile(r"^broker (?P<variant>\S+) \((?P<backend>[\w-]+)\)$")


@dataclass
class Experiment:
    """One experiment of a run: what it is worth and how it went.

    :ivar nodeid: pytest's id (``labs/03_retained.py::test_x[5]``).
    :ivar name: the test's name with its parameters (``test_x[5]``).
    :ivar lesson: the lesson number, or ``None`` for an experiment outside the lessons
        (an instructor's hidden experiment without a ``lesson`` marker).
    :ivar concept: the lesson's concept, from the first line of its docstring.
    :ivar kind: ``solution``, ``broker`` or ``None``.
    :ivar points: points earned (``max_points`` if passed, else 0).
    :ivar max_points: what the experiment is worth.
    :ivar outcome: ``passed``, ``failed``, ``error``, ``skipped`` or ``not run``.
    :ivar message: the failure's teaching message (empty when passed).
    :ivar output: what each program printed, by ``role name``, for a failure, and each
        broker's trimmed log during the test, by ``broker <variant>``.
    :ivar duration: seconds, setup to teardown.
    """

    nodeid: str
    name: str
    lesson: int | None
    concept: str
    kind: str | None
    max_points: float
    points: float = 0
    outcome: str = "not run"
    message: str = ""
    output: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Experiment:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lesson_key(lesson: int | None) -> str:
    """How reports name a lesson: ``"03"``, or ``"extra"`` for experiments outside the lessons."""
    return f"{lesson:02d}" if lesson is not None else "extra"


def summarize(experiments: list[Experiment]) -> dict[str, dict[str, Any]]:
    """Per lesson: concept, experiments passed / total and points / maximum (skips left out)."""
    lessons: dict[str, dict[str, Any]] = {}
    for exp in experiments:
        if exp.outcome == "skipped":
            continue
        entry = lessons.setdefault(
            lesson_key(exp.lesson),
            {"concept": exp.concept, "passed": 0, "total": 0, "points": 0.0, "max_points": 0.0},
        )
        entry["total"] += 1
        entry["passed"] += exp.outcome == "passed"
        entry["points"] += exp.points
        entry["max_points"] += exp.max_points
    for entry in lessons.values():  # cases carry shares of a function's points
        entry["points"] = round(entry["points"], 2)
        entry["max_points"] = round(entry["max_points"], 2)
    return dict(sorted(lessons.items()))


def concept_of(item: pytest.Item) -> str:
    """A lesson's concept: its docstring's first line, between the dash and the colon.

    ``"Lesson 03 — Retained messages: the last known state..."`` → ``"Retained messages"``.
    """
    module = getattr(item, "module", None)
    doc = (getattr(module, "__doc__", None) or "").strip().splitlines()
    if not doc:
        return Path(str(item.path)).stem
    first = doc[0]
    first = re.split(r"\s[—–-]\s", first, maxsplit=1)[-1]
    return first.split(":", 1)[0].strip().rstrip(".")


def function_key(item: pytest.Item) -> str:
    """The test function an item is a case of: its node id without the parameters."""
    return item.nodeid.split("[", 1)[0]


def points_of(item: pytest.Item, cases: float = 1) -> float:
    """What ``item`` is worth: its function's points (closest ``points`` marker, else
    :data:`DEFAULT_POINTS`) shared among the function's cases by weight: ``cases`` is the
    sum of their weights (each case weighs 1 unless marked ``weight(w)``)."""
    return round(_function_points(item) * weight_of(item) / max(cases, 1e-9), 4)


def weight_of(item: pytest.Item) -> float:
    """A case's share of its function's points (``@pytest.mark.weight(w)``, default 1)."""
    mark = item.get_closest_marker("weight")
    value = mark.args[0] if mark is not None and mark.args else 1.0
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise pytest.UsageError(
            f"{item.nodeid}: @pytest.mark.weight needs a number > 0, got {value!r}"
        )
    return float(value)


def _function_points(item: pytest.Item) -> float:
    mark = item.get_closest_marker("points")
    if mark is not None:
        value = mark.args[0] if mark.args else mark.kwargs.get("n")
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise pytest.UsageError(
                f"{item.nodeid}: @pytest.mark.points needs a number of points >= 0, got {value!r}"
            )
        return float(value)
    return DEFAULT_POINTS[kind_of(item)]


def kind_of(item: pytest.Item) -> str | None:
    return next((k for k in ("solution", "broker") if item.get_closest_marker(k)), None)


def lesson_of(item: pytest.Item) -> int | None:
    mark = item.get_closest_marker("lesson")
    return int(mark.args[0]) if mark is not None and mark.args else None


# -- pytest hooks ------------------------------------------------------------------------

#: the summed weights of each test function's parametrised cases, counted before deselection
CASES = pytest.StashKey[Counter[str]]()


#: the ``points`` marker, registered by :mod:`mqtt_factory_lab.plugin`
MARKER = (
    "points(n): what the experiment is worth when graded (default: solution 2, broker 1); "
    "in a lesson's pytestmark, for all its experiments"
)
#: the ``weight`` marker, registered by :mod:`mqtt_factory_lab.plugin`
WEIGHT_MARKER = (
    "weight(w): a parametrised case's share of its function's points (default 1); lesson 06 "
    "weighs each permission cell by what a wrong verdict exposes"
)


def add_options(group: Any) -> None:
    """The points options, in the lab's option group (:mod:`mqtt_factory_lab.plugin` calls it)."""
    group.addoption(
        "--points-json",
        metavar="PATH",
        help="write the run's score as JSON: per experiment lesson, concept, points, outcome, "
        "teaching message and program output",
    )
    group.addoption(
        "--points-jsonl",
        metavar="PATH",
        help="append one JSON line per experiment as it finishes (survives a killed run)",
    )
    group.addoption(
        "--points-plan",
        metavar="PATH",
        help="write the selected experiments and their points after collection "
        "(with --collect-only: an assignment's maximum without running it)",
    )
    group.addoption(
        "--gradescope",
        metavar="PATH",
        help="write Gradescope's results.json (one test per experiment, with its points)",
    )
    group.addoption(
        "--no-points-summary",
        action="store_true",
        help="leave out the per-lesson points summary at the end of the run",
    )


def configure(config: pytest.Config) -> None:
    """Register this run's :class:`PointsRecorder` (:mod:`mqtt_factory_lab.plugin` calls it)."""
    config.pluginmanager.register(PointsRecorder(config), "mqtt-factory-lab-points")


class PointsRecorder:
    """Collects every experiment's result and writes the summary and the files asked for."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.experiments: dict[str, Experiment] = {}
        self.started = time.monotonic()
        self.solution_name: str | None = None
        #: a pytest-xdist worker only labels its items; the controller records and writes
        self.is_worker = hasattr(config, "workerinput")
        jsonl = config.getoption("--points-jsonl")
        self.jsonl = Path(jsonl) if jsonl and not self.is_worker else None
        if self.jsonl is not None:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)

    # Items carry their lesson, concept, kind and points as user properties: they travel
    # with every report (also from pytest-xdist workers) and land in the JUnit XML.
    @pytest.hookimpl(tryfirst=True, specname="pytest_collection_modifyitems")
    def pytest_count_cases(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Count each function's parametrised cases before ``-m``/``-k`` deselect any
        (``specname``: a second implementation of the hook; pytest reads only ``pytest_*``)."""
        weights: Counter[str] = Counter()
        for item in items:  # each case counts by its weight (1 unless marked weight(w))
            weights[function_key(item)] += weight_of(item)  # type: ignore[assignment]
        config.stash[CASES] = weights

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        cases = self.config.stash.get(CASES, Counter())
        for item in items:
            lesson = lesson_of(item)
            if lesson is None and not any(
                item.get_closest_marker(m) for m in ("points", "solution", "broker")
            ):
                continue  # not an experiment: the lab's own tests
            item.user_properties += [
                ("lesson", lesson),
                ("concept", concept_of(item) if lesson is not None else "extra experiments"),
                ("kind", kind_of(item)),
                ("points", points_of(item, cases[function_key(item)])),
            ]

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        plan = self.config.getoption("--points-plan")
        if not plan or self.is_worker:
            return
        planned = [
            _experiment(item.nodeid, dict(item.user_properties))
            for item in session.items
            if any(name == "points" for name, _ in item.user_properties)
        ]
        _write_json(Path(plan), {"format": FORMAT, "experiments": [e.to_dict() for e in planned]})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if "points" not in props or self.is_worker:
            return
        exp = self.experiments.get(report.nodeid)
        if exp is None:
            exp = self.experiments[report.nodeid] = _experiment(report.nodeid, props)
        exp.duration += report.duration
        if report.when == "call" or report.failed or report.skipped:
            if report.failed:
                outcome = "failed" if report.when == "call" else "error"
                if exp.outcome not in ("failed", "error"):
                    exp.outcome = outcome
                    exp.message = _teaching_text(report)
                    exp.output = {
                        f"{m['role']} {m['name']}": content
                        for title, content in report.sections
                        if (m := PROGRAM_SECTION.match(title))
                    }
                    exp.output.update(
                        (f"broker {m['variant']}", content)
                        for title, content in report.sections
                        if (m := BROKER_SECTION.match(title))
                    )
            elif report.skipped and exp.outcome == "not run":
                exp.outcome = "skipped"
                exp.message = _skip_reason(report)
            elif report.passed and report.when == "call" and exp.outcome == "not run":
                exp.outcome = "passed"
        exp.points = exp.max_points if exp.outcome == "passed" else 0.0
        if report.when == "teardown" and self.jsonl is not None:
            with self.jsonl.open("a") as stream:
                stream.write(json.dumps(exp.to_dict()) + "\n")

    def results(self) -> list[Experiment]:
        return list(self.experiments.values())

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.is_worker:
            return
        experiments = self.results()
        solution = _solution_name(self.config)
        path = self.config.getoption("--points-json")
        if path:
            _write_json(Path(path), document(experiments, solution))
        path = self.config.getoption("--gradescope")
        if path:
            _write_json(Path(path), gradescope(experiments, time.monotonic() - self.started))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        experiments = [e for e in self.results() if e.outcome != "skipped"]
        if not experiments or self.config.getoption("--no-points-summary"):
            return
        terminalreporter.section("points")
        lessons = summarize(experiments)
        for key, entry in lessons.items():
            name = f"lesson {key}" if key != "extra" else "extra experiments"
            terminalreporter.write_line(
                f"{name} ({entry['concept']}): {entry['passed']} of {entry['total']} experiments "
                f"passed, {_num(entry['points'])} of {_num(entry['max_points'])} points",
                green=entry["passed"] == entry["total"],
                red=entry["passed"] < entry["total"],
            )
        total = round(sum(e["points"] for e in lessons.values()), 2)
        maximum = round(sum(e["max_points"] for e in lessons.values()), 2)
        terminalreporter.write_line(f"total: {_num(total)} of {_num(maximum)} points", bold=True)
        failures = [e for e in experiments if e.outcome in ("failed", "error", "not run")]
        by_name = {e.name: e for e in failures}
        for mistake in group((e.name, e.message) for e in failures):
            exp = by_name[mistake.first]
            terminalreporter.write_line("")
            terminalreporter.write_line(
                f"✗ lesson {lesson_key(exp.lesson)} {exp.name} "
                f"(0 of {_num(exp.max_points)} points, {exp.outcome})",
                red=True,
            )
            lines = [
                line
                for line in _message_body(exp.message).splitlines()
                if not line.startswith(SAME_AS)
            ]
            for line in lines[:SUMMARY_LINES]:
                terminalreporter.write_line(f"    {line}")
            if len(lines) > SUMMARY_LINES:
                terminalreporter.write_line(
                    f"    … ({len(lines) - SUMMARY_LINES} more lines in the report above)"
                )
            others = mistake.names[1:]
            if others:
                lost = sum(by_name[name].max_points for name in others)
                terminalreporter.write_line(
                    f"    … and the same mistake in {len(others)} more experiments "
                    f"({_num(lost)} points): {names_in_short(others)}",
                    red=True,
                )


def _experiment(nodeid: str, props: dict[str, Any]) -> Experiment:
    return Experiment(
        nodeid=nodeid,
        name=nodeid.rpartition("::")[2],
        lesson=props.get("lesson"),
        concept=props.get("concept") or "",
        kind=props.get("kind"),
        max_points=float(props.get("points", 0)),
    )


#: how Python joins chained exceptions; a failure re-raised by a fixture repeats its message
CHAINED = re.compile(
    r"\n\n(During handling of the above exception, another exception occurred|"
    r"The above exception was the direct cause of the following exception):\n"
)


def _teaching_text(report: pytest.TestReport) -> str:
    text = CHAINED.split(report.longreprtext, maxsplit=1)[0]
    return text if len(text) <= 20_000 else text[:20_000] + "\n… (cut at 20000 characters)"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr or "")


def _message_body(message: str) -> str:
    """The teaching message without its first lines when they are only pytest-xdist's
    ``[gw0] linux -- Python ...`` and ``path:line: Kind``."""
    lines = message.splitlines()
    if lines and re.match(r"^\[gw\d+\] ", lines[0]):
        lines = lines[1:]
    if lines and re.match(r"^\S+:\d+: \w+$", lines[0]):
        lines = lines[1:]
    return "\n".join(lines).strip()


def _num(value: float) -> str:
    return f"{round(value, 2):g}"


def _solution_name(config: pytest.Config) -> str | None:
    from mqtt_factory_lab.fixtures.factory import SOLUTION

    solution = config.stash.get(SOLUTION, None)
    return None if solution is None else solution.name


def document(experiments: list[Experiment], solution: str | None = None) -> dict[str, Any]:
    """The ``--points-json`` document."""
    lessons = summarize(experiments)
    return {
        "format": FORMAT,
        "solution": solution,
        "score": round(sum(e["points"] for e in lessons.values()), 2),
        "max_score": round(sum(e["max_points"] for e in lessons.values()), 2),
        "lessons": lessons,
        "experiments": [e.to_dict() for e in experiments],
    }


def gradescope(experiments: list[Experiment], seconds: float) -> dict[str, Any]:
    """Gradescope's ``results.json``: one test per experiment, failures with their message.

    Format: https://gradescope-autograders.readthedocs.io/en/latest/specs/
    """
    tests = []
    for exp in experiments:
        if exp.outcome == "skipped":
            continue
        output = _message_body(exp.message)
        for program, printed in exp.output.items():
            output += f"\n\n--- what {program} printed ---\n{printed}"
        tests.append(
            {
                "name": f"lesson {lesson_key(exp.lesson)}: {exp.name}",
                "number": lesson_key(exp.lesson),
                "score": exp.points,
                "max_score": exp.max_points,
                "status": "passed" if exp.outcome == "passed" else "failed",
                "output": output.strip(),
                "tags": [t for t in (exp.kind, exp.concept) if t],
                "visibility": "visible",
            }
        )
    return {
        "score": round(sum(t["score"] for t in tests), 2),
        "execution_time": round(seconds),
        "tests": tests,
    }


def read_jsonl(path: Path) -> list[Experiment]:
    """The experiments a ``--points-jsonl`` file holds (the last line per experiment wins)."""
    found: dict[str, Experiment] = {}
    if not path.exists():
        return []
    for line in path.read_text(errors="replace").splitlines():
        try:
            exp = Experiment.from_dict(json.loads(line))
        except (ValueError, TypeError):
            continue  # a line cut short when the run was killed
        found[exp.nodeid] = exp
    return list(found.values())


def read_plan(path: Path) -> list[Experiment]:
    data = json.loads(path.read_text())
    return [Experiment.from_dict(e) for e in data["experiments"]]


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as error:
        print(f"mqtt-factory-lab: could not write {path}: {error}", file=sys.stderr)

"""The points plugin: what experiments are worth, the run's score, and its machine-readable forms.

Each test runs a small made-up lesson in a child pytest (the lab's plugin loads through its
entry point) and reads what the run printed and wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

LESSON = '''"""Lesson 09 — Pretend concept: a lesson made up for the points plugin's tests."""

import pytest

pytestmark = [pytest.mark.lesson(9)]


@pytest.mark.solution
def test_solution_passes():
    pass


@pytest.mark.solution
@pytest.mark.points(5)
@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
def test_solution_fails_on_one_protocol(protocol):
    assert protocol == "5", (
        "A retained message must carry the retain flag: publish state with retain=True "
        "on factory/state/press."
    )


@pytest.mark.broker
def test_broker_passes():
    pass


@pytest.mark.broker
def test_broker_is_skipped():
    pytest.skip("the external broker is not the lab's to control")


def test_untagged_experiment():
    pass
'''


def run_pytest(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", str(folder), *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def lesson(tmp_path: Path) -> Path:
    (tmp_path / "pytest.ini").write_text("[pytest]\npython_files = [0-9][0-9]_*.py\n")
    path = tmp_path / "09_pretend.py"
    path.write_text(LESSON)
    # a test of the lab itself, not of a lesson: never graded
    (tmp_path / "test_plain.py").write_text("def test_not_an_experiment():\n    pass\n")
    return path


def test_points_summary_json_gradescope_and_junit(lesson: Path) -> None:
    folder = lesson.parent
    done = run_pytest(
        folder,
        "-p",
        "no:xdist",
        lesson.name,
        "test_plain.py",
        "--points-json=out/points.json",
        "--gradescope=out/results.json",
        "--points-jsonl=out/points.jsonl",
        "--junitxml=out/junit.xml",
    )
    assert done.returncode == 1, done.stdout + done.stderr

    # the terminal: per lesson passed / total and points / maximum, then the teaching message
    assert (
        "lesson 09 (Pretend concept): 4 of 5 experiments passed, 6.5 of 9 points" in done.stdout
    ), done.stdout
    assert "total: 6.5 of 9 points" in done.stdout
    assert "✗ lesson 09 test_solution_fails_on_one_protocol[3.1.1] (0 of 2.5 points" in done.stdout
    assert "publish state with retain=True" in done.stdout

    document = json.loads((folder / "out/points.json").read_text())
    assert (document["score"], document["max_score"]) == (6.5, 9)
    assert document["lessons"]["09"] == {
        "concept": "Pretend concept",
        "passed": 4,
        "total": 5,
        "points": 6.5,
        "max_points": 9,
    }
    by_name = {e["name"]: e for e in document["experiments"]}
    assert "test_not_an_experiment" not in by_name  # no lesson, no marker: not graded
    assert by_name["test_untagged_experiment"]["max_points"] == 1  # a lesson's, untagged
    failed = by_name["test_solution_fails_on_one_protocol[3.1.1]"]
    # points(5) belong to the function: its two cases share them
    assert (failed["outcome"], failed["points"], failed["max_points"]) == ("failed", 0, 2.5)
    assert failed["kind"] == "solution" and failed["lesson"] == 9
    assert "A retained message must carry the retain flag" in failed["message"]
    assert "Traceback" not in failed["message"]
    assert by_name["test_solution_passes"]["max_points"] == 2  # default for solution
    assert by_name["test_broker_passes"]["max_points"] == 1  # default for broker
    assert by_name["test_broker_is_skipped"]["outcome"] == "skipped"

    # the stream written as experiments finish holds the same results
    lines = (folder / "out/points.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["name"] for line in lines) == sorted(by_name)

    gradescope = json.loads((folder / "out/results.json").read_text())
    assert gradescope["score"] == 6.5
    tests = {t["name"]: t for t in gradescope["tests"]}
    assert len(tests) == 5  # the skipped experiment was not asked
    failing = tests["lesson 09: test_solution_fails_on_one_protocol[3.1.1]"]
    assert failing["status"] == "failed" and failing["max_score"] == 2.5 and failing["score"] == 0
    assert "retain=True" in failing["output"]

    cases = ET.parse(folder / "out/junit.xml").getroot().iter("testcase")
    properties = {
        case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
        for case in cases
    }
    assert properties["test_solution_passes"] == {
        "lesson": "9",
        "concept": "Pretend concept",
        "kind": "solution",
        "points": "2.0",
    }


def test_plan_lists_the_selected_experiments_without_running_them(lesson: Path) -> None:
    folder = lesson.parent
    done = run_pytest(
        folder, "-p", "no:xdist", lesson.name, "-m", "solution", "--collect-only",
        "--points-plan=plan.json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads((folder / "plan.json").read_text())["experiments"]
    assert sorted((e["name"], e["max_points"], e["outcome"]) for e in plan) == [
        ("test_solution_fails_on_one_protocol[3.1.1]", 2.5, "not run"),
        ("test_solution_fails_on_one_protocol[5]", 2.5, "not run"),
        ("test_solution_passes", 2, "not run"),
    ]


def test_a_selection_does_not_change_what_a_case_is_worth(lesson: Path) -> None:
    folder = lesson.parent
    done = run_pytest(folder, "-p", "no:xdist", lesson.name, "-k", "protocol and 5",
                      "--points-json=points.json")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads((folder / "points.json").read_text())
    assert [(e["name"], e["max_points"]) for e in document["experiments"]] == [
        ("test_solution_fails_on_one_protocol[5]", 2.5)
    ]


def test_points_under_xdist_are_counted_once_by_the_controller(lesson: Path) -> None:
    folder = lesson.parent
    done = run_pytest(folder, "-n", "2", lesson.name, "--points-json=points.json")
    assert done.returncode == 1, done.stdout + done.stderr
    document = json.loads((folder / "points.json").read_text())
    assert (document["score"], document["max_score"]) == (6.5, 9)
    assert len(document["experiments"]) == 6
    summary = done.stdout.split("✗", 1)[1]
    assert summary.splitlines()[1].strip().startswith("A retained message must"), (
        "the terminal's summary starts with the teaching message, not with the worker's "
        f"line or the assertion's file and line:\n{summary}"
    )


def test_a_bad_points_marker_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "test_bad.py").write_text(
        "import pytest\n\n@pytest.mark.lesson(1)\n@pytest.mark.points(-2)\n"
        "def test_x():\n    pass\n"
    )
    done = run_pytest(tmp_path, "-p", "no:xdist", "test_bad.py")
    assert done.returncode == 4, done.stdout + done.stderr
    assert "needs a number of points >= 0, got -2" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr

"""The grader's parts, one at a time: limits on a program, shards, hashes, lesson choice,
results merged with the plan, reports, and the command line's errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mqtt_factory_lab.core.limits import ENV_LIMITS, Limits, describe_exit
from mqtt_factory_lab.core.roles import RoleError, RoleProcess
from mqtt_factory_lab.grading.points import Experiment
from mqtt_factory_lab.grading.progress import Progress
from mqtt_factory_lab.grading.report import html_report, markdown, write_gradebook, write_reports
from mqtt_factory_lab.grading.settings import (
    GradingError,
    content_hash,
    default_jobs,
    discover_lessons,
    shard,
)
from mqtt_factory_lab.grading.submission import SubmissionResult, merge_with_plan
from mqtt_factory_lab.grading.unit import _Watch

SHOW_LIMITS = (
    "import resource\n"
    "for name in ('CPU', 'AS', 'FSIZE', 'CORE'):\n"
    "    print(name, resource.getrlimit(getattr(resource, 'RLIMIT_' + name))[0])\n"
)


def role(monkeypatch: pytest.MonkeyPatch, limits: Limits | None, code: str) -> RoleProcess:
    """A RoleProcess running ``python -c code`` under ``limits`` as the grader would set them."""
    if limits is None:
        monkeypatch.delenv(ENV_LIMITS, raising=False)
    else:
        monkeypatch.setenv(ENV_LIMITS, limits.to_env())
    return RoleProcess("device", "press-01", [sys.executable, "-c", code])


def test_a_role_gets_the_graders_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = Limits(cpu_seconds=7, role_cpu_seconds={"device": 9}, memory_mb=900, file_mb=3)
    with role(monkeypatch, limits, SHOW_LIMITS) as program:
        assert program.wait_exit(30) == 0, program.output()
        shown = dict(line.split() for line in program.output().splitlines())
    assert shown == {
        "CPU": "9",  # the device's own limit wins over the default 7
        "AS": str(900 * 2**20),
        "FSIZE": str(3 * 2**20),
        "CORE": "0",
    }


def test_outside_the_grader_a_role_runs_without_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    with role(monkeypatch, None, SHOW_LIMITS) as program:
        assert program.popen_options == {}
        assert program.wait_exit(30) == 0, program.output()
        assert "FSIZE -1" in program.output()


def test_a_program_past_its_cpu_limit_is_stopped_and_the_message_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with role(monkeypatch, Limits(cpu_seconds=1), "while True: pass") as program:
        program.wait_exit(60)
        assert program.returncode in (-24, -9)
        with pytest.raises(RoleError) as failure:
            program.wait_for_output("never printed", timeout=1)
    assert "SIGXCPU" in str(failure.value) or "SIGKILL" in str(failure.value)


def test_a_program_writing_past_its_file_limit_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    flood = "import sys\nwhile True: sys.stdout.write('x' * 65536)"
    with role(monkeypatch, Limits(file_mb=1), flood) as program:
        # SIGXFSZ for most programs; Python ignores it and fails with EFBIG ("File too large")
        assert program.wait_exit(60) in (-25, 1), program.returncode
        assert program.output_path.stat().st_size == 2**20
    assert describe_exit(-25).startswith("SIGXFSZ")
    assert describe_exit(0) == "" and describe_exit(None) == ""


def test_limits_travel_as_json_and_a_bad_value_is_named() -> None:
    limits = Limits(cpu_seconds=3, role_cpu_seconds={"controller": 8}, uid=64201, gid=64201)
    assert Limits.from_env({ENV_LIMITS: limits.to_env()}) == limits
    assert Limits.from_env({}) is None
    with pytest.raises(ValueError, match=ENV_LIMITS):
        Limits.from_env({ENV_LIMITS: "{not json"})


def test_shards_split_a_class_deterministically() -> None:
    students = [Path(n) for n in ("eve", "bob", "dan", "amy", "cat")]
    parts = [shard(students, f"{i}/2") for i in (1, 2)]
    assert [p.name for p in parts[0]] == ["amy", "cat", "eve"]
    assert [p.name for p in parts[1]] == ["bob", "dan"]
    assert shard(students, None) == students
    for bad in ("0/2", "3/2", "x", "1/0"):
        with pytest.raises(GradingError, match="I/N"):
            shard(students, bad)


def test_the_content_hash_follows_names_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "device.py").write_text("print(1)\n")
    first = content_hash(tmp_path)
    (tmp_path / "a" / "__pycache__").mkdir()
    (tmp_path / "a" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert content_hash(tmp_path) == first  # byte code is not the submission
    (tmp_path / "a" / "device.py").write_text("print(2)\n")
    assert content_hash(tmp_path) != first
    (tmp_path / "a" / "device.py").rename(tmp_path / "a" / "dev.py")
    assert content_hash(tmp_path) not in (first,)


def test_lessons_are_chosen_by_number(tmp_path: Path) -> None:
    for name in ("01_wildcards.py", "03_retained.py", "helper.py"):
        (tmp_path / name).write_text("")
    assert [p.name for p in discover_lessons(None, tmp_path)] == [
        "01_wildcards.py",
        "03_retained.py",
    ]
    assert [p.name for p in discover_lessons(["3"], tmp_path)] == ["03_retained.py"]
    with pytest.raises(GradingError, match=r"no lesson 02 .* the lab has lessons 01, 03"):
        discover_lessons(["02"], tmp_path)


def experiment(name: str, **kw: object) -> Experiment:
    fields = {"nodeid": f"labs/03_x.py::{name}", "name": name, "lesson": 3, "concept": "Retained messages",
              "kind": "solution", "max_points": 2.0, **kw}  # fmt: skip
    return Experiment(**fields)  # type: ignore[arg-type]


def test_experiments_without_a_result_score_zero_with_the_reason() -> None:
    plan = [experiment("test_a"), experiment("test_b")]
    done = [experiment("test_a", outcome="passed", points=2.0)]
    merged = merge_with_plan(plan, done, "the lesson run did not finish within 30 s")
    assert [(e.name, e.outcome, e.points) for e in merged] == [
        ("test_a", "passed", 2.0),
        ("test_b", "not run", 0.0),
    ]
    assert merged[1].message == "the lesson run did not finish within 30 s"


def test_reports_show_the_message_and_the_programs_output(tmp_path: Path) -> None:
    failing = experiment(
        "test_b",
        outcome="failed",
        message="labs/03_x.py:9: AssertionError\nPublish state with retain=True <now>.",
        output={"device press-01": "line\n" * 50},
    )
    result = SubmissionResult(
        "alice", "h", [experiment("test_a", outcome="passed", points=2.0), failing]
    )
    text = markdown(result)
    assert text.startswith("# alice: 2 of 4 points")
    assert "| 03 | Retained messages | 1 of 2 | 2 of 4 |" in text
    assert "Publish state with retain=True <now>.\n(labs/03_x.py:9: AssertionError)" in text
    assert "(last 40 of 50 lines)" in text
    page = html_report(result)
    assert "retain=True &lt;now&gt;." in page and "<now>" not in page
    header = write_gradebook([result], tmp_path / "gradebook.csv")
    assert header == ["student", "lesson 03", "total", "max", "problem"]
    assert (tmp_path / "gradebook.csv").read_text().splitlines()[1] == "alice,2,2,4,"


def test_reports_lead_with_the_lesson_group_repeats_and_quote_the_broker_log() -> None:
    will = experiment(
        "test_killed[mqtt5]",
        lesson=4,
        outcome="failed",
        message="labs/04_lwt.py:547: MQTTTimeout\nThe will travels in CONNECT: set it before.",
        output={"broker open": "its log during this test:\n    No will message specified."},
    )
    cells = [
        experiment(
            f"test_cell[bad-actor-{topic}]",
            lesson=6,
            outcome="failed",
            message=f"bad-actor may NOT read factory/{topic}, yet it received it.",
        )
        for topic in ("state/press-01", "alarms/press-01/temperature", "state/oven-01")
    ]
    text = markdown(SubmissionResult("bob", "h", [will, *cells]))
    section = text.split("### lesson 04")[1]
    assert section.split("```text\n")[1].startswith("The will travels in CONNECT"), section
    assert "(labs/04_lwt.py:547: MQTTTimeout)" in section
    assert "What the broker logged during the experiment (open)" in section
    assert "No will message specified." in section
    assert text.count("### lesson 06") == 1, text
    assert "The same mistake in 2 more experiments (4 points)" in text
    assert "test_cell[bad-actor-alarms/press-01/temperature]" in text
    page = html_report(SubmissionResult("bob", "h", [will, *cells]))
    assert page.count("lesson 06:") == 1 and "The same mistake in 2 more" in page


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqtt_factory_lab.cli", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_the_command_line_says_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "alice").mkdir()
    done = run_cli("grade", str(tmp_path), "--out", str(tmp_path / "out"), "--lessons", "42")
    assert done.returncode == 2 and "no lesson 42 in" in done.stderr, done.stderr
    done = run_cli("grade", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "is not a folder" in done.stderr, done.stderr
    done = run_cli("grade", str(tmp_path), "--out", str(tmp_path / "o"), "--shard", "5/2")
    assert done.returncode == 2 and "--shard '5/2'" in done.stderr, done.stderr
    done = run_cli("merge", str(tmp_path), "--out", str(tmp_path / "m"))
    assert done.returncode == 2 and "no runs/*.json" in done.stderr
    assert "Traceback" not in done.stderr
    help_text = run_cli("--help").stdout
    assert "grade" in help_text and "merge" in help_text and "conformance" in help_text
    assert "--broker-url" in run_cli("conformance", "--help").stdout


def test_runs_read_back_as_they_were_written() -> None:
    result = SubmissionResult("bob", "abc", [experiment("test_a", outcome="passed", points=2.0)])
    again = SubmissionResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert (again.student, again.score, again.max_score) == ("bob", 2.0, 2.0)


def test_the_progress_line_counts_done_running_and_left() -> None:
    stream = io.StringIO()
    progress = Progress(stream)
    progress.begin(2, reused=1, jobs=2)
    progress.started("alice")
    progress.started("bob")
    progress.stopped("alice")
    progress.finished(
        SubmissionResult("alice", "h", [experiment("test_a", outcome="passed", points=2.0)])
    )
    progress.end()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "1 unchanged submissions reused from the last run"
    assert lines[1].startswith("graded 0/2 · running 0 · left 2 · 0:00 elapsed · ~? left")
    assert "graded 0/2 · running 2 · left 0" in lines[3]
    assert "alice: 2 of 2 points in 0.0 s" in stream.getvalue()
    assert lines[-1].startswith("graded 1/2 · running 1 · left 0")


def test_the_index_page_links_every_report(tmp_path: Path) -> None:
    results = [
        SubmissionResult("bob", "h", [experiment("test_a", outcome="failed")], problem="x<y"),
        SubmissionResult("amy", "h", [experiment("test_a", outcome="passed", points=2.0)]),
    ]
    write_reports(results, tmp_path)
    page = (tmp_path / "index.html").read_text()
    assert page.index("reports/amy.html") < page.index("reports/bob.html")
    assert "<td>0 / 2</td>" in page and "x&lt;y" in page
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == [
        "amy.html", "amy.md", "bob.html", "bob.md",
    ]  # fmt: skip


def test_jobs_default_to_three_per_core_as_memory_allows() -> None:
    gib = 2**30
    assert default_jobs(cores=2, available=24 * gib) == 6
    assert default_jobs(cores=2, available=int(2.5 * gib)) == 2  # a GiB per submission
    assert default_jobs(cores=8, available=gib // 4) == 1  # never none
    assert default_jobs() >= 1


def test_a_lessons_cpu_and_the_childs_start_up_come_from_its_events(tmp_path: Path) -> None:
    events = tmp_path / "events"
    t = 1_000_000.0
    lines = [
        {"event": "start", "file": "01_a.py", "t": t + 1.5, "log": 0, "cpu": 1.2, "cpu_programs": 0.1},
        {"event": "end", "file": "01_a.py", "t": t + 4, "log": 0, "cpu": 2.0, "cpu_programs": 3.1},
        {"event": "start", "file": "02_b.py", "t": t + 4.2, "log": 0, "cpu": 2.1, "cpu_programs": 3.1},
        {"event": "end", "file": "02_b.py", "t": t + 6, "log": 0, "cpu": 2.6, "cpu_programs": 4.1},
    ]  # fmt: skip
    events.write_text("".join(json.dumps(line) + "\n" for line in lines))
    watch = _Watch(events, tmp_path / "jsonl", started=0.0)
    watch.started_wall = t  # the child was launched at t
    watch.read()
    first, second = watch.results(
        [Path("01_a.py"), Path("02_b.py")], [], "", token="x", returncode=0,
        timed_out=False, cancelled=False, killed=0, ended=0.0,
    )  # fmt: skip
    assert (first.startup_seconds, first.startup_cpu_seconds) == (1.5, 1.3)
    assert (first.cpu_seconds, first.programs_cpu_seconds) == (0.8, 3.0)
    assert (second.startup_seconds, second.startup_cpu_seconds) == (0.0, 0.0)
    assert (second.cpu_seconds, second.programs_cpu_seconds) == (0.5, 1.0)

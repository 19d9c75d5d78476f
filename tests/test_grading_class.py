"""The example class (tests/class_example) graded end to end with ``mqtt-lab grade``.

Fourteen submissions against lesson 03's solution experiments (8 experiments, 1 point each):
the reference, the starter kit, two partly broken solutions, one that hangs, one that
crashes at start, one that floods, one that forks without end, one with a broken manifest,
one that tries to change the tests, one started through a wrapper script, and three snoops
(an ACL that is /etc/shadow, an ACL that is a symlink to it, a device that tries to read the
grader's files and scans 127.0.0.1 for other students' brokers). The class is graded once (a module fixture); each test
checks one promise: the scores, the reasons, the reports, that the hostile submissions
changed nothing for the others, and — by PID — that nothing is left running.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from mqtt_factory_lab.core.process import tracked_pids, wait_until
from mqtt_factory_lab.grading.sandbox import ENV_TOKEN

#: grading the class takes about a minute on a busy 2-core machine: more than the default limit
pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).resolve().parent
CLASS = HERE / "class_example"
HIDDEN = HERE / "grading_hidden"
#: the options the example class is graded with (short limits: it must grade in well under
#: a minute on 2 cores). 2 CPU seconds a program: the reference scores 8 of 8 even with 1,
#: and each start of the flooding device ends after 2 s of CPU instead of 5 (17 CPU-seconds
#: for that submission, the broker's work for its flood included, instead of 39).
OPTIONS = ["--lessons", "03", "-j", "2", "--lesson-timeout", "30", "--cpu-seconds", "2",
           "--processes", "64"]  # fmt: skip
#: expected points of lesson 03 (4 solution checks × 2 points, each run on 2 protocols: 8) by student
EXPECTED = {
    "reference": 8,
    "starter": 0,
    "state_not_retained": 4,
    "retains_telemetry": 6,
    "hangs": 0,
    "crashes_at_start": 0,
    "floods": 0,
    "forks": 0,
    "broken_manifest": 0,
    "cheater": 0,
    "snoops": 0,
    "snoops_files": 0,
    "snoops_symlink": 0,
    "wrapper": 6,
}
#: the submissions whose manifest is refused: nothing of theirs runs
REFUSED = {"broken_manifest", "snoops_files", "snoops_symlink"}


@dataclass
class Graded:
    out: Path
    submissions: Path
    output: str
    seconds: float
    tokens: set[str]
    #: the grader's temporary folder (its ``TMPDIR``)
    tmp: Path

    def run(self, student: str) -> dict[str, Any]:
        return json.loads((self.out / "runs" / f"{student}.json").read_text())

    def experiments(self, student: str) -> dict[str, dict[str, Any]]:
        return {e["name"]: e for e in self.run(student)["experiments"]}

    def report(self, student: str, suffix: str = "md") -> str:
        return (self.out / "reports" / f"{student}.{suffix}").read_text()


def grade(
    submissions: Path, out: Path, *options: str, timeout: float = 300, tmp: Path | None = None
) -> tuple[str, float]:
    """Run ``mqtt-lab grade``; ``tmp``: its temporary folder (``TMPDIR``)."""
    started = time.monotonic()
    env = {**os.environ, "TMPDIR": str(tmp)} if tmp is not None else None
    done = subprocess.run(
        [sys.executable, "-m", "mqtt_factory_lab.grading", str(submissions), "--out", str(out),
         "--quiet", *options],
        capture_output=True, text=True, timeout=timeout, check=False, env=env,
    )  # fmt: skip
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr, seconds


def copy_class(submissions: Path, students: tuple[str, ...] | None = None) -> Path:
    """The example class (or some of its ``students``) in ``submissions``: a symlink inside a
    submission stays a link (``snoops_symlink/acl -> /etc/shadow``), the starter is copied."""
    for student in students or [p.name for p in CLASS.iterdir() if p.is_dir()]:
        source = CLASS / student
        symlinks = not source.is_symlink()
        shutil.copytree(source.resolve(), submissions / student, symlinks=symlinks)
    return submissions


def every_report(out: Path) -> dict[Path, str]:
    """Every file the grader wrote: the gradebook, reports, index and runs."""
    return {p: p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()}


def shadow_lines() -> list[str]:
    """The lines of /etc/shadow (the test runs as root), the secret the snoops want."""
    try:
        return [line for line in Path("/etc/shadow").read_text().splitlines() if len(line) > 8]
    except OSError:
        return []


def grading_processes(tokens: set[str]) -> dict[int, str]:
    """Every process carrying one of the grader's ``tokens`` in its environment, by PID."""
    found = {}
    for process in psutil.process_iter():
        try:
            token = process.environ().get(ENV_TOKEN)
        except psutil.Error:
            continue
        if token in tokens:
            found[process.pid] = token
    return found


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Graded]:
    """The example class, copied (symlinks as links; the starter through its link), graded once."""
    submissions = copy_class(tmp_path_factory.mktemp("class") / "submissions")
    out = tmp_path_factory.mktemp("graded")
    # a TMPDIR of its own, which the slots' users can pass through as they can /tmp (the
    # grader runs their programs as themselves only when they can reach their copies)
    tmp = Path(tempfile.mkdtemp(prefix="mqtt-lab-test-tmpdir-"))
    tmp.chmod(0o711)
    try:
        output, seconds = grade(submissions, out, *OPTIONS, tmp=tmp)
        runs = [json.loads(p.read_text()) for p in (out / "runs").glob("*.json")]
        tokens = {u["token"] for r in runs for u in r["units"]}
        print(f"\nthe example class graded in {seconds:.1f} s on {os.cpu_count()} cores")
        yield Graded(out, submissions, output, seconds, tokens, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_the_reference_like_submissions_follow_solution_toml() -> None:
    sys.path.insert(0, str(CLASS))
    try:
        from make_reference_like import expected_files
    finally:
        sys.path.remove(str(CLASS))
    stale = [str(p.relative_to(CLASS)) for p, text in expected_files().items()
             if not p.exists() or p.read_text() != text]  # fmt: skip
    assert not stale, (
        f"{stale} differ from the lab's solution.toml: run "
        "python tests/class_example/make_reference_like.py"
    )


def test_every_student_gets_the_expected_points(graded: Graded) -> None:
    with (graded.out / "gradebook.csv").open() as stream:
        rows = {row["student"]: row for row in csv.DictReader(stream)}
    assert list(next(iter(rows.values()))) == ["student", "lesson 03", "total", "max", "problem"]
    scores = {student: float(row["total"]) for student, row in rows.items()}
    assert scores == EXPECTED, graded.output
    assert {row["max"] for row in rows.values()} == {"8"}
    assert {row["lesson 03"] for row in rows.values()} == {f"{v:g}" for v in EXPECTED.values()}


def test_partly_broken_solutions_lose_exactly_the_experiments_of_their_mistake(
    graded: Graded,
) -> None:
    failed = {n for n, e in graded.experiments("retains_telemetry").items() if e["points"] == 0}
    assert failed == {
        "test_device_does_not_retain_telemetry[mqtt5]",
        "test_device_does_not_retain_telemetry[mqtt3.1.1]",
    }
    for name in failed:
        message = graded.experiments("retains_telemetry")[name]["message"]
        assert "publishes telemetry retained" in message, message
    failed = {n for n, e in graded.experiments("state_not_retained").items() if e["points"] == 0}
    assert {n.split("[")[0] for n in failed} == {
        "test_device_state_and_status_wait_for_late_dashboards",
        "test_device_retained_state_follows_the_device",
    }
    report = graded.report("state_not_retained")
    assert "# state_not_retained: 4 of 8 points" in report
    # Which of the two experiments' checks tells it depends on when the device's state came:
    # stored (nothing for a late dashboard) or live (a message without the flag). Both name the fix.
    assert "publish it with retain=true" in report.lower(), report


def test_the_starter_fails_with_teaching_messages_not_tracebacks(graded: Graded) -> None:
    for name, experiment in graded.experiments("starter").items():
        assert experiment["outcome"] == "failed", (name, experiment)
        # its device forgets the retain flag; its controller never acts on an alarm (lesson 02)
        said = "sent no command" if "controller" in name else "without the retain flag"
        assert said in experiment["message"], experiment["message"]
        assert "Traceback" not in experiment["message"]
    html = graded.report("starter", "html")
    assert "published &#x27;online&#x27;" in html and "without the retain flag" in html


def test_a_hanging_submission_is_stopped_at_the_lesson_time_limit(graded: Graded) -> None:
    run = graded.run("hangs")
    assert run["problem"] == "03_retained.py: stopped after 30 s"
    assert run["units"][0]["timed_out"]
    outcomes = [e["outcome"] for e in run["experiments"]]
    assert outcomes[0] == "failed" and "not run" in outcomes, outcomes
    first, *rest = run["experiments"]
    assert "never published a retained 'online' status" in first["message"]
    not_run = [e for e in rest if e["outcome"] == "not run"]
    assert all("did not finish within 30 s" in e["message"] for e in not_run), not_run


def test_a_crash_at_start_shows_the_programs_own_error(graded: Graded) -> None:
    for name, experiment in graded.experiments("crashes_at_start").items():
        assert experiment["outcome"] == "failed"
        if "controller" in name:  # it has no controller: lesson 03 says which role to add
            assert "has no [roles.controller]" in experiment["message"]
            continue
        assert "exited before publishing online" in experiment["message"]
        assert "ModuleNotFoundError: No module named 'paho.mqtt.clinet'" in experiment["message"]
    assert "paho.mqtt.clinet" in graded.report("crashes_at_start")


def test_a_flooding_submission_is_graded_and_stopped(graded: Graded) -> None:
    run = graded.run("floods")
    assert [e["points"] for e in run["experiments"]] == [0] * 8
    assert all(e["message"] for e in run["experiments"])
    assert run["seconds"] < 60, run["units"]


def test_a_fork_bomb_is_swept_away(graded: Graded) -> None:
    run = graded.run("forks")
    assert run["units"][0]["killed_leftovers"] > 0, run["units"]
    assert "programs were still running after the lesson and were killed" in run["problem"]


def test_a_broken_manifest_scores_zero_with_the_reason(graded: Graded) -> None:
    run = graded.run("broken_manifest")
    assert run["units"] == []  # nothing was started
    assert run["problem"].startswith("the solution manifest cannot be used: ")
    assert "broken_manifest/solution.toml is not valid TOML" in run["problem"]
    assert all(e["outcome"] == "error" and e["points"] == 0 for e in run["experiments"])
    assert len(run["experiments"]) == 8


@pytest.mark.parametrize("student", ["snoops_files", "snoops_symlink"])
def test_a_file_outside_the_submission_is_refused_and_never_quoted(
    graded: Graded, student: str
) -> None:
    """``[files] acl = "/etc/shadow"`` and ``acl -> /etc/shadow``: one manifest error each;
    the grader copied nothing into a broker, and no report quotes a line of the file."""
    run = graded.run(student)
    assert run["units"] == [], run["units"]  # no broker, no program: nothing ran
    assert "is outside the solution's folder" in run["problem"], run["problem"]
    assert all(e["outcome"] == "error" and e["points"] == 0 for e in run["experiments"])
    secrets = shadow_lines()
    assert secrets, "the test needs /etc/shadow to hold something (it runs as root)"
    leaks = [(p.name, line) for p, text in every_report(graded.out).items() for line in secrets
             if line in text]  # fmt: skip
    assert not leaks, leaks


def test_a_snoop_reads_none_of_the_graders_files_and_no_other_broker(graded: Graded) -> None:
    """The snoop finds the grader's files through /proc (lesson copies, logs, results, other
    submissions, brokers' configuration) and scans 127.0.0.1; it reads none, reaches only
    its own broker; its report says so, and quotes nothing it should not."""
    if os.geteuid() != 0:
        pytest.skip("the grader isolates students' users and networks only as root")
    # its device experiments (it has no controller: lesson 03's controller check says so)
    messages = [
        e["message"] for e in graded.run("snoops")["experiments"] if "controller" not in e["name"]
    ]
    assert len(messages) == 6 and all("snoop: read 0 of " in m for m in messages), messages
    assert not any("its grader's folder is None" in m for m in messages), "it found no grader"
    assert any(" denied 0" not in m for m in messages), "the snoop found no file to try"
    for message in messages:
        own, ports = _snoop_ports(message)
        assert ports == [own], message  # its own broker: the scan works; nobody else's
    header = graded.report("snoops")
    assert "network: a namespace of its own" in header and "programs ran as user 642" in header


def test_nothing_in_a_submission_changes_the_tests(graded: Graded) -> None:
    """The cheater's conftest.py would pass every test, its pytest.ini would collect none,
    its mqtt_factory_lab/ would break every import: all eight experiments ran and failed."""
    experiments = graded.experiments("cheater")
    assert len(experiments) == 8
    for name, experiment in experiments.items():
        assert experiment["outcome"] == "failed", experiment
        said = (
            "has no [roles.controller]"
            if "controller" in name
            else "the device role (press-01) exited"
        )
        assert said in experiment["message"], experiment["message"]


def test_student_programs_run_under_the_graders_limits(graded: Graded) -> None:
    """The cheater's device prints its limits; its report quotes them (--cpu-seconds 2)."""
    message = next(iter(graded.experiments("cheater").values()))["message"]
    assert "RLIMIT_CPU 2\n" in message, message
    assert f"RLIMIT_AS {1024 * 2**20}\n" in message and f"RLIMIT_FSIZE {20 * 2**20}\n" in message
    if os.geteuid() == 0:  # privileges dropped (a readable Python made if needed): NPROC holds
        assert "uid 0\n" not in message and "RLIMIT_NPROC 64\n" in message, message


def test_a_wrapper_script_leaves_nothing_running_between_experiments(graded: Graded) -> None:
    """``sh run.sh python ...`` does not forward SIGTERM: stopping the device's process group
    stops the real program after each experiment, so the sweep at the end finds nothing."""
    run = graded.run("wrapper")
    assert run["score"] == 6, [e["message"] for e in run["experiments"] if e["points"] == 0]
    assert run["units"][0]["killed_leftovers"] == 0, run["units"]
    assert run["problem"] == ""


def test_nothing_is_left_running(graded: Graded) -> None:
    assert len(graded.tokens) == len(EXPECTED) - len(REFUSED)  # one run per usable manifest
    left = grading_processes(graded.tokens)
    assert not left, [psutil.Process(p).cmdline() for p in left if psutil.pid_exists(p)]
    # This worker's own brokers (started by other tests, tracked by the lab) may run on.
    ours = tracked_pids()
    children = [c for c in psutil.Process().children(recursive=False) if c.pid not in ours]
    assert not children, [c.cmdline() for c in children]


def test_nothing_is_left_in_the_temporary_folder(graded: Graded) -> None:
    # "hangs" is stopped at its limit with its brokers and programs: what they wrote went too
    left = sorted(p.name for p in graded.tmp.iterdir())
    assert left == [], f"the grader left {left} in its temporary folder"


def test_a_second_run_regrades_only_what_changed(graded: Graded) -> None:
    before = {
        p.stem: json.loads(p.read_text())["graded_at"] for p in (graded.out / "runs").glob("*.json")
    }
    manifest = graded.submissions / "reference" / "solution.toml"
    manifest.write_text(manifest.read_text() + "\n# changed after the deadline\n")
    output, _ = grade(graded.submissions, graded.out, *OPTIONS)
    assert f"graded {len(EXPECTED)} submissions ({len(EXPECTED) - 1} unchanged)" in output, output
    after = {
        p.stem: json.loads(p.read_text())["graded_at"] for p in (graded.out / "runs").glob("*.json")
    }
    assert {s for s in after if after[s] != before[s]} == {"reference"}
    assert graded.run("reference")["score"] == 8


def test_lessons_graded_in_one_child_keep_their_runs_to_themselves(tmp_path: Path) -> None:
    """One child pytest grades a submission's lessons one after the other, each with its own
    brokers and a sweep of what it left. Lesson 05 judges, at its end, a press whose connection
    it dropped at its start: that run must not be moved past lesson 03, whose end would stop
    its broker and its press (the reference lost both of lesson 05's reconnection points so)."""
    submissions = copy_class(tmp_path / "submissions", ("reference",))
    out = tmp_path / "graded"
    grade(submissions, out, "--lessons", "03,05", "-j", "1", "--lesson-timeout", "60")
    run = json.loads((out / "runs" / "reference.json").read_text())
    lost = {e["name"]: e.get("message", "") for e in run["experiments"] if e["outcome"] != "passed"}
    assert not lost, lost
    assert run["score"] == run["max_score"] > 0, (run["score"], run["max_score"])


def test_hidden_experiments_shards_and_merge(tmp_path: Path) -> None:
    submissions = tmp_path / "submissions"
    for student in ("reference", "starter"):
        shutil.copytree(CLASS / student, submissions / student)
    outs = [tmp_path / "shard1", tmp_path / "shard2"]

    def shard(part: str, out: Path) -> tuple[str, float]:
        return grade(submissions, out, "--lessons", "03", "-j", "1", "--extra-tests", str(HIDDEN),
                     "--shard", part)  # fmt: skip

    # Shards are how a class is split across machines: the two run at once, as they would.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(shard, ("1/2", "2/2"), outs))
    assert [p.stem for p in (outs[0] / "runs").glob("*.json")] == ["reference"]
    assert [p.stem for p in (outs[1] / "runs").glob("*.json")] == ["starter"]
    merged = tmp_path / "merged"
    done = subprocess.run(
        [sys.executable, "-m", "mqtt_factory_lab.cli", "merge", *map(str, outs), "--out", str(merged)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with (merged / "gradebook.csv").open() as stream:
        rows = {row["student"]: row for row in csv.DictReader(stream)}
    # lesson 03: 8 + the hidden experiment's 5; extra: the hidden one without a lesson, 3
    assert (rows["reference"]["lesson 03"], rows["reference"]["extra"]) == ("13", "3")
    assert (rows["reference"]["total"], rows["reference"]["max"]) == ("16", "16")
    assert (rows["starter"]["total"], rows["starter"]["max"]) == ("0", "16")
    assert "test_hidden_state_names_the_device_kind" in (merged / "reports/starter.md").read_text()


def test_hidden_experiments_stay_hidden_and_other_brokers_out_of_reach(tmp_path: Path) -> None:
    """The snoop is graded beside the reference (-j 2) with hidden experiments, while a
    broker of someone else runs on the machine's 127.0.0.1: it finds the hidden file's path
    (in /proc) but cannot read it, reaches neither the reference's brokers nor the other
    one, and no report holds a line of the hidden file's source."""
    if os.geteuid() != 0:
        pytest.skip("the grader isolates students' users and networks only as root")
    from mqtt_factory_lab.brokers.local import LocalMosquitto

    hidden = tmp_path / "hidden"  # the instructor's folder: root's only, as the docs say
    shutil.copytree(HIDDEN, hidden)
    hidden.chmod(0o700)
    submissions = copy_class(tmp_path / "submissions", ("snoops", "reference"))
    out = tmp_path / "out"
    with LocalMosquitto() as elsewhere:
        grade(submissions, out, "--lessons", "03", "-j", "2", "--extra-tests", str(hidden),
              "--lesson-timeout", "60")  # fmt: skip
        runs = {
            s: json.loads((out / "runs" / f"{s}.json").read_text()) for s in ("snoops", "reference")
        }
    assert runs["reference"]["score"] == runs["reference"]["max_score"] == 16, runs["reference"]
    experiments = [e for e in runs["snoops"]["experiments"] if "controller" not in e["name"]]
    assert len(experiments) == 8 and all("snoop:" in e["message"] for e in experiments)
    for experiment in experiments:
        message = experiment["message"]
        assert "snoop: read 0 of " in message, message
        if "hidden_state.py" in experiment["nodeid"]:  # its own run names the hidden file
            assert "snoop: hidden experiments found 1, read 0" in message, message
        own, ports = _snoop_ports(message)
        seen = json.loads(message.split("snoop: listening ports seen ")[1].splitlines()[0])
        assert elsewhere.port in seen, message  # it knew where the other broker listened
        assert elsewhere.port not in ports and ports == [own], message
    source = [line for line in (HIDDEN / "hidden_state.py").read_text().splitlines()
              if line.startswith(("Named ", "from mqtt_factory_lab"))]  # fmt: skip
    leaks = [(p.name, line) for p, text in every_report(out).items() for line in source
             if line in text]  # fmt: skip
    assert len(source) == 2 and not leaks, leaks


def test_ctrl_c_stops_the_grader_and_everything_it_started(tmp_path: Path) -> None:
    submissions = tmp_path / "submissions"
    shutil.copytree(CLASS / "hangs", submissions / "hangs")
    grader = subprocess.Popen(
        [sys.executable, "-m", "mqtt_factory_lab.grading", str(submissions), "--out",
         str(tmp_path / "out"), "--lessons", "03", "--quiet", "--lesson-timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:

        def hanging_device() -> list[psutil.Process] | None:
            found = [
                p
                for p in psutil.Process(grader.pid).children(recursive=True)
                if "device.py" in " ".join(_cmdline(p))
            ]
            return found or None

        started = wait_until(hanging_device, 60)
        family = psutil.Process(grader.pid).children(recursive=True)
        grader.send_signal(signal.SIGINT)
        output, _ = grader.communicate(timeout=60)
    finally:
        if grader.poll() is None:
            grader.kill()
            grader.wait()
    assert grader.returncode == 130, output
    assert "interrupted; every program it started was stopped" in output
    _gone, alive = psutil.wait_procs([*started, *family], timeout=10)
    assert not alive, [_cmdline(p) for p in alive]


def _snoop_ports(message: str) -> tuple[int, list[int]]:
    """``snoop: own broker N; open ports on 127.0.0.1 [...]`` of a snoop's output."""
    line = next(x for x in message.splitlines() if "snoop: own broker" in x)
    own = int(line.split("own broker ")[1].split(";")[0])
    return own, json.loads(line.split("127.0.0.1 ")[1])


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


#: hidden experiment files for the one-child-per-submission test: one that takes its child
#: pytest down half way, one that hangs past the lesson limit, and two that must not suffer
CRASHES = """
import os
import pytest
pytestmark = pytest.mark.points(1)
def test_before_the_crash():
    assert True
def test_the_crash():
    os._exit(3)
def test_after_the_crash():
    assert True
"""
HANGS = """
import time
import pytest
pytestmark = pytest.mark.points(1)
def test_before_the_hang():
    assert True
def test_the_hang():
    time.sleep(600)
"""
FINE = """
import pytest
pytestmark = pytest.mark.points(1)
def test_fine():
    assert True
"""


def test_a_crashing_or_hanging_unit_costs_only_its_own_verdict(tmp_path: Path) -> None:
    """One child pytest runs every unit of a submission; a unit that kills it (exit 3) or
    overruns its limit keeps what it did and is charged alone, and the units after it run in
    a new child with their own verdicts: the lesson before, the file between, the one after."""
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    for name, text in (("a_crashes", CRASHES), ("b_fine", FINE), ("c_hangs", HANGS),
                       ("d_fine", FINE)):  # fmt: skip
        (hidden / f"{name}.py").write_text(text)
    submissions = copy_class(tmp_path / "submissions", ("reference",))
    out = tmp_path / "out"
    grade(submissions, out, "--lessons", "03", "-j", "1", "--extra-tests", str(hidden),
          "--lesson-timeout", "15")  # fmt: skip
    run = json.loads((out / "runs" / "reference.json").read_text())
    units = {u["file"]: u for u in run["units"]}
    assert list(units) == ["03_retained.py", "a_crashes.py", "b_fine.py", "c_hangs.py",
                           "d_fine.py"]  # fmt: skip
    outcomes = {e["name"]: (e["outcome"], e["message"]) for e in run["experiments"]}
    assert all(outcomes[n][0] == "passed" for n in outcomes if "[" in n), outcomes  # lesson 03
    assert units["03_retained.py"]["returncode"] == 0, units
    assert outcomes["test_before_the_crash"][0] == "passed"
    assert units["a_crashes.py"]["returncode"] == 3 and not units["a_crashes.py"]["timed_out"]
    for name in ("test_the_crash", "test_after_the_crash"):
        outcome, message = outcomes[name]
        assert outcome == "not run" and "(a_crashes.py) ended (exit status 3)" in message
    assert outcomes["test_before_the_hang"][0] == "passed"
    assert units["c_hangs.py"]["timed_out"] and not units["b_fine.py"]["timed_out"]
    outcome, message = outcomes["test_the_hang"]
    assert outcome == "not run" and "did not finish within 15 s" in message, message
    assert units["c_hangs.py"]["seconds"] < 15 + 15, units  # its limit, the grace, no more
    fine = [e for e in run["experiments"] if e["name"] == "test_fine"]
    assert [e["outcome"] for e in fine] == ["passed", "passed"], fine
    # one child for lesson 03, one for the hidden files up to the crash, one after it up
    # to the hang, one for the last: each lesson's record names the child that ran it
    tokens = [u["token"] for u in run["units"]]
    assert len(set(tokens)) == 4 and tokens[2] == tokens[3], tokens
    assert run["problem"] == "c_hangs.py: stopped after 15 s", run["problem"]
    assert not grading_processes(set(tokens))


def test_a_hanging_submission_costs_its_own_time_limit_and_the_rest_go_on(tmp_path: Path) -> None:
    """A submission that hangs in every lesson is stopped at its own limit (not one lesson
    limit per lesson): the lessons it did not get to score 0 with that reason, and a
    submission graded beside it keeps its points."""
    submissions = tmp_path / "submissions"
    shutil.copytree(CLASS / "hangs", submissions / "hangs")
    shutil.copytree(CLASS / "reference", submissions / "reference", symlinks=True)
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "mqtt_factory_lab.grading", str(submissions), "--out", str(out),
         "--lessons", "02,03", "-j", "2", "--quiet", "--lesson-timeout", "120",
         "--submission-timeout", "20"],
        check=True, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    hangs = json.loads((out / "runs" / "hangs.json").read_text())
    assert hangs["problem"].startswith("stopped at the submission's time limit (20 s)"), hangs
    assert hangs["seconds"] < 20 + 10 + 15, hangs["seconds"]  # its limit, the grace, no more
    units = {unit["file"]: unit for unit in hangs["units"]}
    assert units["03_retained.py"]["out_of_time"], units  # never a lesson limit of 120 s
    not_run = [e for e in hangs["experiments"] if e["outcome"] == "not run"]
    assert not_run and all("time limit of 20 s" in e["message"] for e in not_run), not_run
    assert hangs["score"] == 0
    reference = json.loads((out / "runs" / "reference.json").read_text())
    assert reference["score"] == reference["max_score"] > 0, reference["problem"]

"""The grader's promises to keep a submission in its box, one at a time: a manifest's files
stay inside the submission, a broker's files are the lab's user's alone, a wrapper stops
with the program it started, the student's user gets a readable Python (and so the process
limit), each lesson run gets a network of its own, and a broker password stays off every
command line. The example class's hostile submissions (tests/test_grading_class.py) try
them end to end."""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from mqtt_factory_lab.brokers.local import LocalMosquitto
from mqtt_factory_lab.conformance import run as conformance
from mqtt_factory_lab.core.connection import ENV_PASSWORD
from mqtt_factory_lab.core.process import ChildProcess
from mqtt_factory_lab.core.solution import ManifestError, load
from mqtt_factory_lab.grading.grader import ClassGrader
from mqtt_factory_lab.grading.sandbox import (
    ReadableRuntime,
    network_prefix,
    network_problem,
    unprivileged_python_problem,
)
from mqtt_factory_lab.grading.settings import Settings

#: a user id no one on the machine uses (the grader's slots start at 64200)
NOBODY = 64299
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it switches users")


def manifest(folder: Path, acl: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "solution.toml"
    path.write_text(f"[roles.device]\ncommand = 'x'\n[files]\nacl = {acl!r}\n")
    return path


@pytest.mark.parametrize(
    "acl", ["/etc/passwd", "../outside.acl", "link_out", "sub/../../outside.acl"]
)
def test_a_manifest_file_outside_the_submission_is_refused(tmp_path: Path, acl: str) -> None:
    (tmp_path / "outside.acl").write_text("topic readwrite #\n")
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "sub").mkdir()
    (tmp_path / "student" / "link_out").symlink_to(tmp_path / "outside.acl")
    with pytest.raises(ManifestError) as refused:
        load(manifest(tmp_path / "student", acl))
    assert "is outside the solution's folder" in str(refused.value), refused.value


def test_a_symlink_inside_the_submission_is_fine(tmp_path: Path) -> None:
    (tmp_path / "acls").mkdir()
    (tmp_path / "acls" / "real.acl").write_text("topic readwrite #\n")
    (tmp_path / "acl").symlink_to("acls/real.acl")
    assert load(manifest(tmp_path, "acl")).files["acl"] == tmp_path / "acls" / "real.acl"


@root_only
def test_a_local_brokers_files_are_the_labs_users_alone(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite #\n")
    with LocalMosquitto("acl", acl_file=acl) as broker:
        assert stat.S_IMODE(broker.workdir.stat().st_mode) == 0o700  # log, config, database
        files = [p for p in broker.workdir.rglob("*") if p.parent != broker.workdir]
        open_to_others = [str(p) for p in files if stat.S_IMODE(p.stat().st_mode) & 0o077]
        assert files and not open_to_others
        peek = subprocess.run(
            ["cat", str(broker.workdir / "config" / "acl")],
            user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, text=True, check=False,
        )  # fmt: skip
    assert peek.returncode != 0 and "Permission denied" in peek.stderr, peek


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_wrapper_and_the_program_it_started_stop_together(how: str) -> None:
    """``sh -c 'python ...; echo'`` does not forward SIGTERM: the group gets it."""
    program = f"{sys.executable} -c \"import time; print('up', flush=True); time.sleep(120)\""
    wrapper = ChildProcess(["sh", "-c", f"{program}; echo the wrapper outlived it"], name="wrap")
    with wrapper:
        wrapper.wait_for_output("up", timeout=30)
        real = psutil.Process(wrapper.pid).children(recursive=True)
        assert real, "the wrapper started no program"
        getattr(wrapper, how)()
        _gone, alive = psutil.wait_procs(real, timeout=10)
    alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.cmdline() for p in alive]


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A folder the unprivileged user can reach (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="mqtt-lab-runtime-test-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@root_only
def test_the_readable_runtime_runs_the_lab_as_an_unprivileged_user(
    world_readable_dir: Path,
) -> None:
    """The lab's venv may lie where only root reads it (a checkout under /root or a 0700
    temporary folder, a pyenv under /root); the copy works for any user, and leaves out the
    hidden experiments' folder and the lab's .git and .venv."""
    hidden = Path(__file__).parent / "grading_hidden"
    runtime = ReadableRuntime.build(world_readable_dir / "rt", (hidden,))
    assert unprivileged_python_problem(NOBODY, runtime.python, runtime.env) == ""
    where = subprocess.run(
        [runtime.python, "-I", "-c", "import mqtt_factory_lab.core.paths as p; print(p.LAB_ROOT)"],
        user=NOBODY, group=NOBODY, extra_groups=[], cwd="/", env=runtime.env,
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(where) == runtime.lab_root and runtime.lab_root.is_relative_to(runtime.root)
    for private in ("tests/grading_hidden", ".git", ".venv"):
        assert not (runtime.lab_root / private).exists(), private


@root_only
def test_the_grader_drops_privileges_out_of_the_box(tmp_path: Path) -> None:
    """No --run-as-uid, no reinstall: the slots' users run programs, with the process limit."""
    grader = ClassGrader(Settings(lessons=()), tmp_path / "out", jobs=1)
    try:
        assert grader.privileges == "", grader.privileges
        uid = grader.settings.uid_for(0)
        assert uid is not None and uid >= 64200
        needed = unprivileged_python_problem(uid) != ""
        assert (grader.runtime is not None) == needed
        print(f"\nthe lab's own Python is {'not ' if needed else ''}readable by user {uid}")
        assert f"programs ran as user {uid}" in grader.isolation(0)
    finally:
        grader.close()
    assert grader.runtime is None or not grader.runtime.root.exists()


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"isolate_network": False}, "turned off (--share-network)"),
        ({"backend": "docker"}, "the docker backend's brokers live outside"),
    ],
)
def test_a_report_says_plainly_when_the_network_was_not_isolated(
    tmp_path: Path, options: dict[str, object], reason: str
) -> None:
    grader = ClassGrader(Settings(lessons=(), **options), tmp_path / "out", jobs=1)  # type: ignore[arg-type]
    try:
        header = grader.isolation(0)
    finally:
        grader.close()
    assert header.startswith("network: NOT isolated — shared with the machine") and reason in header


@root_only
def test_two_graders_on_one_machine_never_share_a_user(tmp_path: Path) -> None:
    """The sweep kills every process of a slot's user: a second grader (a shard, a test
    worker) must get other uids, or it would kill the first one's student programs."""
    first = ClassGrader(Settings(lessons=()), tmp_path / "a", jobs=2)
    second = ClassGrader(Settings(lessons=()), tmp_path / "b", jobs=2)
    try:
        ours = {first.settings.uid_for(0), first.settings.uid_for(1)}
        theirs = {second.settings.uid_for(0), second.settings.uid_for(1)}
        assert None not in ours and not ours & theirs, (ours, theirs)
    finally:
        first.close()
        second.close()


@root_only
def test_a_lesson_run_has_a_network_of_its_own() -> None:
    assert network_problem(sys.executable) == ""
    with socket.create_server(("127.0.0.1", 0)) as outside:
        port = outside.getsockname()[1]
        probe = (
            "import socket\n"
            f"outside = socket.socket().connect_ex(('127.0.0.1', {port}))\n"
            "inside = socket.create_server(('127.0.0.1', 0))\n"
            "mine = socket.create_connection(inside.getsockname(), timeout=5)\n"
            "print('outside', outside, 'inside ok')\n"
        )
        done = subprocess.run(
            [*network_prefix(sys.executable), sys.executable, "-c", probe],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    refused = done.stdout.split()[1]
    assert refused != "0" and done.stdout.strip().endswith("inside ok"), done.stdout


def test_a_password_in_the_broker_url_stays_off_the_child_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, object] = {}

    def run(command: list[str], **options: object) -> subprocess.CompletedProcess[str]:
        seen.update(command=command, env=options["env"])
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(conformance.subprocess, "run", run)
    args = argparse.Namespace(out=tmp_path, labs=Path("labs"), pytest_args=[])
    # The faked child ran nothing, so the run judged nothing (status 1); only its command
    # line and environment matter here.
    conformance._run_pytest(args, "mqtts://ci:p%40ss-W0rd@broker.example:8883")
    command = seen["command"]
    assert not [part for part in command if "p%40ss" in part or "p@ss" in part], command
    assert "--broker-url=mqtts://ci@broker.example:8883" in command
    assert seen["env"][ENV_PASSWORD] == "p@ss-W0rd"  # type: ignore[index]

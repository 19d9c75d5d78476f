"""The solution contract: manifests, and what the lab says when a solution's program misbehaves."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mqtt_factory_lab.core.factory import FactoryLauncher
from mqtt_factory_lab.core.roles import RoleError
from mqtt_factory_lab.core.solution import REFERENCE_MANIFEST, ManifestError, load


def write_manifest(folder: Path, body: str) -> Path:
    path = folder / "solution.toml"
    path.write_text(textwrap.dedent(body))
    return path


def test_reference_manifest_describes_every_factory_role():
    solution = load()
    assert solution.is_reference
    assert {"device", "controller", "observer"} <= set(solution.roles)
    assert solution.file("acl") == REFERENCE_MANIFEST.parent / "docker" / "acl"
    argv = solution.command(
        "device",
        {"anomaly": True, "crash_after": 2.5},
        kind="press",
        device_id="press-07",
        client_id="press-07",
        seed=3,
        time_scale=60,
        rate=10,
    )
    assert argv[:3] == [sys.executable, "-m", "sim.device"]
    assert argv[-3:] == ["--anomaly", "--crash-after", "2.5"], "options are appended in order"
    assert solution.ready_line("device", device_id="press-07") == "ready press-07"


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        pytest.param("[roles.device\n", "not valid TOML", id="toml-syntax-error"),
        pytest.param("[solution]\nname='x'\n", "no [roles.<name>] tables", id="no-roles"),
        pytest.param("[roles.device]\nready='x'\n", "needs a `command`", id="role-without-command"),
        pytest.param(
            "[roles.device]\ncommand=['run', '{device_name}']\n",
            "unknown placeholder {device_name}",
            id="unknown-placeholder",
        ),
        pytest.param("[roles.device]\ncommand=[]\n", "non-empty list", id="empty-command"),
        pytest.param(
            "[roles.device]\ncommand='x'\n[files]\nacl='missing.acl'\n",
            "does not exist",
            id="missing-file",
        ),
    ],
)
def test_a_broken_manifest_is_refused_with_the_reason(tmp_path, body, complaint):
    with pytest.raises(ManifestError) as caught:
        load(write_manifest(tmp_path, body))
    assert complaint in str(caught.value), f"the error should say {complaint!r}: {caught.value}"
    assert str(tmp_path) in str(caught.value), "the error names the manifest file"


def test_a_missing_manifest_says_how_to_pass_one(tmp_path):
    with pytest.raises(ManifestError, match="--solution PATH"):
        load(tmp_path / "nope.toml")


def test_a_role_the_lesson_needs_but_the_manifest_lacks_is_named(tmp_path):
    solution = load(write_manifest(tmp_path, "[roles.device]\ncommand='true'\n"))
    with pytest.raises(ManifestError, match=r"no \[roles.controller\].*Roles it declares: device"):
        solution.command("controller")
    with pytest.raises(ManifestError, match="no option 'anomaly'"):
        solution.command("device", {"anomaly": True})


def test_pytest_refuses_a_broken_solution_before_running_anything(tmp_path):
    manifest = write_manifest(tmp_path, "[roles.device]\n")
    result = _pytest("labs/03_retained.py", f"--solution={manifest}")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "--solution" in result.stderr and "needs a `command`" in result.stderr


@pytest.mark.parametrize(
    ("command", "expected", "shows"),
    [
        pytest.param(
            ["/nonexistent/student-device"],
            "could not be started",
            "/nonexistent/student-device",
            id="command-missing",
        ),
        pytest.param(
            [sys.executable, "-c", "import sys; print('boom: no broker config'); sys.exit(2)"],
            "exited before publishing online",
            "boom: no broker config",
            id="exits-at-start",
        ),
        pytest.param(
            [
                sys.executable,
                "-c",
                "import signal; print('connecting...', flush=True); signal.pause()",
            ],
            "never published a retained 'online' status",
            "connecting...",
            id="never-comes-online",
        ),
        pytest.param(
            [
                sys.executable,
                str(Path(__file__).parent / "broken" / "mutate.py"),
                *("--no-retain", "status", "sim.device", "--device", "press"),
                *("--device-id", "press-01", "--client-id", "{client_id}"),
            ],
            "published 'online' on",
            "without the retain flag",
            id="online-not-retained",
        ),
    ],
)
def test_a_misbehaving_device_fails_with_its_role_and_output(
    tmp_path, broker, topic_root, command, expected, shows
):
    manifest = write_manifest(tmp_path, "[roles.device]\ncommand = " + _toml_list(command) + "\n")
    launcher = FactoryLauncher(load(manifest), broker, topic_root, time_scale=60)
    launcher.ready_timeout = 1.5
    with launcher, pytest.raises(RoleError) as caught:
        launcher.start_device("press", "press-01")
    message = str(caught.value)
    assert "the device role (press-01)" in message, message
    assert expected in message, message
    assert shows in message, "the error shows the command or what the program printed"
    assert all(not p.is_running() for p in launcher.processes), "every program is stopped"


def test_the_reference_device_comes_online_and_stops_cleanly(broker, topic_root, lab_seed):
    with FactoryLauncher(load(), broker, topic_root, seed=lab_seed) as launcher:
        press = launcher.start_device("press")
        assert press.status["status"] == "online"
        assert press.process.is_running()
        pid = press.process.pid
    assert not press.process.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _toml_list(items: list[str]) -> str:
    return (
        "["
        + ", ".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items)
        + "]"
    )


def _pytest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_pytest_without_the_labs_packages_says_what_to_run(tmp_path):
    hide_paho = (
        "import importlib.util as u; real = u.find_spec; "
        "u.find_spec = lambda name, *a: None if name == 'paho' else real(name, *a); "
        "import mqtt_factory_lab.requirements_check"
    )
    done = subprocess.run(
        [sys.executable, "-c", hide_paho], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode != 0
    assert "Run scripts/setup once, then use .venv/bin/pytest" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, "one sentence, not an import traceback"

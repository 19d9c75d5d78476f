"""Lesson 06 grades ACLs: it passes the reference and catches each broken one.

Every solution experiment of ``labs/06_acl.py`` must be able to fail. Each broken
solution under ``tests/broken/lesson06_*`` runs the reference devices with one
mistake a student makes in an ACL file; the lesson (``-m solution``) must fail
exactly the experiments that teach the broken rule, with a message naming it.
The options a platform team uses in CI (``--acl-file``, ``--acl-matrix``) are
checked here too.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LESSON = "labs/06_acl.py"
BROKEN = Path(__file__).parent / "broken"


def test_the_reference_passes_every_solution_experiment(run_lesson):
    result = run_lesson(LESSON, "-m", "solution")
    assert result.returncode == 0 and not result.failed(), result.output
    assert len(result.passed("test_matrix_")) == 108, result.outcomes
    assert len(result.passed("test_solution_devices_need_nothing")) == 2, result.outcomes


@pytest.mark.parametrize(
    ("broken", "must_fail", "says"),
    [
        pytest.param(
            "every_device_writes_all_telemetry",
            [
                "test_matrix_says_who_may_publish_where[press-01-publish-factory/telemetry/oven-01/temperature-denied]",
                "test_matrix_says_who_may_publish_where[oven-01-publish-factory/telemetry/press-01/temperature-denied]",
                "test_matrix_says_who_may_publish_where[bad-actor-publish-factory/telemetry/press-01/temperature-denied]",
            ],
            ["may NOT publish to factory/telemetry/", "pattern write factory/telemetry/%c/#"],
            id="every-device-writes-all-telemetry",
        ),
        pytest.param(
            "everyone_reads_everything",
            [
                "test_matrix_says_who_may_read_what[bad-actor-subscribe-factory/state/press-01-denied]",
                "test_matrix_says_who_may_read_what[bad-actor-subscribe-factory/commands/controller/press-01-denied]",
                "test_matrix_says_who_may_read_what[press-01-subscribe-factory/telemetry/oven-01/temperature-denied]",
            ],
            ["may NOT read factory/", "topic read factory/#"],
            id="everyone-reads-everything",
            marks=pytest.mark.broken_sweep,
        ),
        pytest.param(
            "device_reads_all_commands",
            [
                "test_matrix_says_who_may_read_what[press-01-subscribe-factory/commands/controller/oven-01-denied]",
                "test_matrix_says_who_may_read_what[oven-01-subscribe-factory/commands/dashboard/press-01-denied]",
            ],
            ["may NOT read factory/commands/", "lets it read"],
            id="device-reads-all-commands",
            marks=pytest.mark.broken_sweep,
        ),
        pytest.param(
            "device_cannot_write_events",
            [
                "test_solution_devices_need_nothing_their_acl_denies[mqtt3.1.1]",
                "test_solution_devices_need_nothing_their_acl_denies[mqtt5]",
            ],
            ["tried what their own ACL", "Denied PUBLISH from press-01", "factory/events/press-01"],
            id="device-cannot-write-events",
            marks=pytest.mark.broken_sweep,
        ),
    ],
)
def test_a_broken_acl_fails_the_experiments_that_teach_its_rule(
    run_lesson, broken, must_fail, says
):
    result = run_lesson(LESSON, "-m", "solution", solution=BROKEN / f"lesson06_{broken}")
    failed = set(result.failed())
    missing = [name for name in must_fail if name not in failed]
    assert not missing, f"these experiments should fail for {broken}: {missing}\n{result.output}"
    for name in must_fail:
        for phrase in says:
            assert phrase in result.message(name), (
                f"{name} should say {phrase!r}:\n{result.message(name)}"
            )
    # Only cells of the broken rule fail: the same action, and never a cell that should be allowed.
    family = must_fail[0].split("[")[0]
    strays = [n for n in failed if not n.startswith(family) or n.endswith("-allowed]")]
    assert not strays, f"{broken} should fail only {family} cells that deny; also failed: {strays}"


def test_acl_file_and_matrix_options_check_a_platform_teams_config(run_lesson, tmp_path):
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(
        """
[clients.press-01]
role = "a device"
[clients.dashboard]
role = "the dashboard"
username = "dashboard"
[clients.intruder]
role = "anyone else"

[publish]
"factory/telemetry/press-01/temperature" = ["press-01"]
[subscribe]
"factory/telemetry/press-01/temperature" = ["dashboard"]
"""
    )
    ok = run_lesson(LESSON, "-k", "matrix", f"--acl-matrix={matrix}")
    assert ok.returncode == 0 and len(ok.passed()) == 6, ok.output  # 3 clients x 1 topic x 2

    broken = BROKEN / "lesson06_every_device_writes_all_telemetry" / "acl"
    result = run_lesson(LESSON, "-k", "matrix", f"--acl-matrix={matrix}", f"--acl-file={broken}")
    assert result.failed() == [
        "test_matrix_says_who_may_publish_where[intruder-publish-factory/telemetry/press-01/temperature-denied]"
    ], result.output
    assert str(broken.relative_to(Path.cwd())) in result.message("intruder-publish"), result.output


def test_a_malformed_matrix_stops_the_run_with_the_entry_to_fix(run_lesson, tmp_path):
    matrix = tmp_path / "matrix.toml"
    matrix.write_text(
        '[clients.press-01]\n[publish]\n"factory/x" = ["press-1"]\n[subscribe]\n"factory/x" = []\n'
    )
    result = run_lesson(LESSON, "-k", "matrix", f"--acl-matrix={matrix}")
    assert result.returncode != 0 and not result.outcomes, result.output
    assert "--acl-matrix" in result.output and "press-1" in result.output, result.output
    assert "Traceback" not in result.output, result.output


def test_a_broker_folder_carries_the_given_acl_and_password_file(tmp_path):
    # What the docker backend mounts is what render() writes (local_paths=False keeps /mosquitto).
    from mqtt_factory_lab.brokers.config import BrokerConfigError, render
    from mqtt_factory_lab.core.paths import DOCKER_DIR

    password_file = tmp_path / "passwd"
    password_file.write_text("press-01:$7$101$not-a-real-hash\n")
    acl = BROKEN / "lesson06_everyone_reads_everything" / "acl"
    rendered = render(
        "acl+hardened",
        tmp_path / "broker",
        port=1883,
        local_paths=False,
        acl_file=acl,
        password_file=password_file,
    )
    assert rendered.files["acl"].read_text() == acl.read_text()
    assert rendered.files["passwd"].read_text() == password_file.read_text()
    hardened = rendered.files["conf.d/hardened.conf"].read_text()
    assert "password_file /mosquitto/config/passwd" in hardened
    assert "allow_anonymous false" in hardened
    default = render("acl", tmp_path / "default", port=1883)
    assert default.files["acl"].read_text() == (DOCKER_DIR / "acl").read_text()
    with pytest.raises(BrokerConfigError, match="does not exist"):
        render("acl", tmp_path / "missing", port=1883, acl_file=tmp_path / "nope")


def test_an_acl_without_the_lab_round_trip_fails_every_cell_at_once_in_one_sentence(
    run_lesson, tmp_path
):
    starter = Path(__file__).resolve().parent.parent / "starter"
    acl = tmp_path / "acl"
    acl.write_text(
        "".join(
            line
            for line in (starter / "acl").read_text().splitlines(keepends=True)
            if not line.startswith("pattern readwrite lab/sync/")
        )
    )
    (tmp_path / "solution.toml").write_text((starter / "solution.toml").read_text())
    for program in ("device.py", "controller.py", "datacenter.py", "acl-machines", "bridge.conf"):
        (tmp_path / program).write_text((starter / program).read_text())
    result = run_lesson(LESSON, "-m", "solution", "-k", "matrix", solution=tmp_path)

    cells = result.failed("test_matrix_")
    assert len(cells) == 108 and not result.passed(), result.outcomes
    sentence = "so no cell of the permission matrix can be proven: keep the line `pattern"
    odd = [name for name in cells if sentence not in result.messages[name]]
    assert not odd, [result.messages[name] for name in odd[:3]]
    assert "the same mistake in 108 experiments" in result.output, result.output[-3000:]


def test_points_follow_harm_a_stranger_reading_the_plant_costs_most_of_the_matrix(tmp_path):
    plan = tmp_path / "plan.json"
    subprocess.run(
        [sys.executable, "-m", "pytest", LESSON, "-m", "solution", "--collect-only", "-q",
         "-p", "no:cacheprovider", f"--points-plan={plan}"],
        cwd=Path(__file__).resolve().parent.parent, capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    points = {e["name"]: e["max_points"] for e in json.loads(plan.read_text())["experiments"]}
    assert round(sum(points.values()), 2) == 6
    stranger_reads = sum(
        v for n, v in points.items() if "who_may_read_what[bad-actor-" in n and "-denied]" in n
    )
    own_reading = points[
        "test_matrix_says_who_may_read_what[press-01-subscribe-factory/telemetry/press-01/temperature-denied]"
    ]
    assert stranger_reads > 1.5, stranger_reads  # of the read matrix's 2.5 points
    assert stranger_reads > 30 * own_reading, (stranger_reads, own_reading)

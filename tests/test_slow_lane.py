"""The slow lane: a verdict must not depend on luck. Each broken variant is graded 20 times.

Every folder in ``tests/broken/`` (but ``student``, which is not broken) is a solution with one
mistake, and ``tests/test_lesson_0N.py`` shows once that its lesson catches it. A check that
catches a mistake only when a kill lands in the right millisecond would pass there by luck,
so here each variant runs the experiments that must catch it ``RUNS`` times (each repetition
a fresh set of programs: ``tests/harness_support/repeat_each.py``), and every repetition must
fail. The lab's reference is graded ``REFERENCE_RUNS`` times (5) as well: a correct solution
must never fail by luck either. The lane is deselected unless asked for by name:
``scripts/test -m slow_lane`` (CI runs it; ``MQTT_LAB_SLOW_LANE_RUNS`` and
``MQTT_LAB_SLOW_LANE_REFERENCE_RUNS`` change the counts for a quicker look).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BROKEN = HERE / "broken"
RUNS = int(os.environ.get("MQTT_LAB_SLOW_LANE_RUNS", "20"))
#: seconds a child run may take, per repetition of one variant's catching experiments
BUDGET_PER_RUN = 60

#: variant folder → (lesson, ``-k`` expression of the experiments that must catch it)
CAUGHT_BY = {
    "lesson01_device_exits_on_bad_command": ("01_wildcards", "rejects_a_bad_command"),
    "lesson01_device_obeys_all_commands": (
        "01_wildcards",
        "stop_for_the_conveyor or subscribes_only_to_its_own",
    ),
    "lesson01_telemetry_hash_for_temperature": ("01_wildcards", "each_filter"),
    "lesson01_telemetry_levels_swapped": ("01_wildcards", "seed_topic_tree"),
    "lesson01_sensor_in_capitals": ("01_wildcards", "seed_topic_tree"),
    "lesson02_controller_alarms_at_qos0": ("02_qos", "alarms_raised_while_it_was_away"),
    "lesson02_telemetry_at_qos1": ("02_qos", "telemetry_at_qos0"),
    "lesson03_controller_retains_commands": ("03_retained", "retain_its_commands"),
    "lesson04_fixed_keepalive": ("04_lwt", "keepalive_budget"),
    "lesson04_no_goodbye": ("04_lwt", "gracefully_publishes_offline"),
    "lesson04_no_will": ("04_lwt", "killed_device_is_declared_offline"),
    "lesson04_will_after_online": ("04_lwt", "killed_device_is_declared_offline"),
    "lesson04_will_not_retained": ("04_lwt", "killed_device_is_declared_offline"),
    "lesson05_always_clean": ("05_sessions", "persistent_controller_acts"),
    "lesson05_always_persistent": ("05_sessions", "clean_session_controller"),
    "lesson05_random_client_id": ("05_sessions", "persistent_controller_acts"),
    "lesson05_device_subscribes_once": ("05_sessions", "hears_its_commands_again"),
    "lesson06_device_cannot_write_events": ("06_acl", "need_nothing_their_acl_denies"),
    "lesson06_device_reads_all_commands": (
        "06_acl",
        "who_may_read_what and press-01-subscribe-factory/commands/controller/oven-01",
    ),
    "lesson06_every_device_writes_all_telemetry": (
        "06_acl",
        "who_may_publish_where and oven-01-publish-factory/telemetry/press-01",
    ),
    "lesson06_everyone_reads_everything": (
        "06_acl",
        "who_may_read_what and bad-actor-subscribe-factory/state/press-01",
    ),
    "lesson07_ack_before_commit": ("07_traceability", "killed_datacenter or cannot_commit"),
    "lesson07_crashes_on_invalid_json": ("07_traceability", "dead_letter_table and json"),
    "lesson07_no_datacenter": ("07_traceability", "sent_twice"),
    "lesson07_stores_redeliveries_twice": ("07_traceability", "sent_twice"),
    "lesson08_any_certificate_writes_anywhere": ("08_tls", "each_certificate_write_only_its_own"),
    "lesson08_device_ignores_client_cert": ("08_tls", "connect_with_their_certificates"),
    "lesson08_device_skips_verification": (
        "08_tls",
        "refuses_a_broker_it_cannot_verify and device",
    ),
    "lesson09_commands_without_expiry": ("09_mqtt5", "commands_expire"),
    "lesson09_datacenter_without_share": ("09_mqtt5", "shared_subscription_store"),
    "lesson09_publishes_without_user_property": ("09_mqtt5", "labels_every_publish"),
    "lesson09_reply_without_correlation_data": ("09_mqtt5", "answers_setpoint_requests"),
    "lesson10_always_clean": ("10_bridge", "published_while_the_cloud_is_away"),
    "lesson10_both_ways": (
        "10_bridge",
        "reach_the_site_only_on_command_topics or no_message_comes_back",
    ),
    "lesson10_no_remote_prefix": ("10_bridge", "under_the_site_prefix"),
    "lesson11_counts_redeliveries": ("11_observability", "counts_once"),
    "lesson11_online_never_drops": ("11_observability", "killed_device_shows_online_0"),
}
#: ``[mqtt5-run7-not-json]``: the repetition's number among the test's parameters
REPETITION = re.compile(r"[\[-]run(\d+)[\]-]")


def test_every_broken_variant_has_the_experiments_that_catch_it():
    folders = {
        p.name for p in BROKEN.iterdir() if (p / "solution.toml").exists() and p.name != "student"
    }  # lesson07_shared holds code the lesson 07 variants share: no manifest
    assert folders == set(CAUGHT_BY), (
        f"tests/broken/ and CAUGHT_BY must name the same variants: only in tests/broken/: "
        f"{sorted(folders - set(CAUGHT_BY))}; only in CAUGHT_BY: {sorted(set(CAUGHT_BY) - folders)}"
    )


@pytest.mark.slow_lane
@pytest.mark.timeout(BUDGET_PER_RUN * RUNS + 120)
@pytest.mark.parametrize("variant", sorted(CAUGHT_BY))
def test_each_broken_variant_is_caught_in_every_run(run_lesson, monkeypatch, variant):
    lesson, catching = CAUGHT_BY[variant]
    monkeypatch.setenv("PYTHONPATH", str(HERE / "harness_support"))
    run = run_lesson(
        f"labs/{lesson}.py",
        "-m",
        "solution",
        "-k",
        catching,
        "-p",
        "repeat_each",
        f"--lab-repeat={RUNS}",
        solution=BROKEN / variant,
        timeout=BUDGET_PER_RUN * RUNS,
    )
    caught: dict[int, bool] = defaultdict(bool)
    for name, outcome in run.outcomes.items():
        match = REPETITION.search(name)
        assert match, f"{name} is not a repetition of the slow lane: {run.output[-2000:]}"
        caught[int(match.group(1))] |= outcome in ("failed", "error")
    assert len(caught) == RUNS, (
        f"{variant}: {len(caught)} repetitions ran, not {RUNS} (-k {catching!r}):\n"
        f"{run.output[-2000:]}"
    )
    missed = sorted(n for n, hit in caught.items() if not hit)
    print(f"{variant}: caught in {RUNS - len(missed)} of {RUNS} runs")
    assert not missed, (
        f"{variant} was caught in {RUNS - len(missed)} of {RUNS} runs of labs/{lesson}.py "
        f"(-k {catching!r}); it passed in runs {missed}. A check that catches a mistake only "
        "sometimes depends on timing: make the experiment deterministic."
    )


#: how often the slow lane grades the lab's own reference: a verdict must not fail by luck
#: either (``MQTT_LAB_SLOW_LANE_REFERENCE_RUNS``)
REFERENCE_RUNS = int(os.environ.get("MQTT_LAB_SLOW_LANE_REFERENCE_RUNS", "5"))


@pytest.mark.slow_lane
@pytest.mark.timeout(BUDGET_PER_RUN * REFERENCE_RUNS * 3 + 120)
@pytest.mark.parametrize(
    "lesson",
    [
        "01_wildcards",
        "02_qos",
        "03_retained",
        "04_lwt",
        "05_sessions",
        "07_traceability",
        "08_tls",
        "09_mqtt5",
        "10_bridge",
        "11_observability",
    ],
)
def test_the_reference_passes_every_solution_experiment_in_every_run(
    run_lesson, monkeypatch, lesson
):
    monkeypatch.setenv("PYTHONPATH", str(HERE / "harness_support"))
    run = run_lesson(
        f"labs/{lesson}.py",
        "-m",
        "solution",
        "-p",
        "repeat_each",
        f"--lab-repeat={REFERENCE_RUNS}",
        timeout=BUDGET_PER_RUN * REFERENCE_RUNS * 3,
    )
    assert run.passed(), f"labs/{lesson}.py ran no solution experiment:\n{run.output[-2000:]}"
    failed = run.failed()
    assert not failed, (
        f"The lab's reference failed {len(failed)} of {len(run.outcomes)} runs of labs/{lesson}.py "
        f"solution experiments: a correct solution failed by luck. {failed[:5]}\n"
        + "\n".join(run.message(name)[:800] for name in failed[:2])
    )

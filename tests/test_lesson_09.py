"""Lesson 09 (MQTT 5) grades what it claims to.

* It passes the reference solution.
* Each broken solution in ``tests/broken/lesson09_*`` — the reference programs with one MQTT 5
  feature taken away by ``tests/broken/mutate.py`` — fails exactly its own experiment, with
  a message naming the feature and the fix.
* On a broker without MQTT 5 (amqtt 0.12.1) the whole lesson is skipped for one finding,
  and nothing fails.

The child pytests run only what they need, to stay fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_conformance import amqtt, child_pytest  # noqa: F401  (amqtt is a fixture)

LESSON = "labs/09_mqtt5.py"
BROKEN = Path(__file__).resolve().parent / "broken"

LABELS = "test_device_labels_every_publish_with_its_schema_and_content_type"
ANSWERS = "test_device_answers_setpoint_requests_on_the_response_topic_with_their_correlation_data"
EXPIRY = "test_controller_commands_expire_so_a_late_conveyor_does_not_obey_them"
SHARED = "test_two_datacenter_workers_on_a_shared_subscription_store_each_record_once"
SOLUTION_EXPERIMENTS = (LABELS, ANSWERS, EXPIRY, SHARED)


def test_lesson_09_passes_against_the_reference_solution(run_lesson):
    run = run_lesson(LESSON, "-m", "solution")

    assert not run.failed(), f"failed against the reference: {run.failed()}\n{run.output[-3000:]}"
    for name in SOLUTION_EXPERIMENTS:
        assert run.passed(name), f"{name} did not pass: {run.outcomes}\n{run.output[-3000:]}"


@pytest.mark.parametrize(
    ("variant", "experiment", "words"),
    [
        pytest.param(
            "lesson09_reply_without_correlation_data",
            ANSWERS,
            ["without Correlation Data", "two requests in flight", "CorrelationData"],
            id="reply-without-correlation-data",
        ),
        pytest.param(
            "lesson09_publishes_without_user_property",
            LABELS,
            ["user property schema=vf.", "UserProperty"],
            id="publish-without-user-property",
        ),
        pytest.param(
            "lesson09_commands_without_expiry",
            EXPIRY,
            ["message expiry interval", "MessageExpiryInterval=None", "set properties."],
            id="commands-without-expiry",
        ),
        pytest.param(
            "lesson09_datacenter_without_share",
            SHARED,
            ["stored by both", "$share/", "shared subscription"],
            id="datacenter-without-share",
        ),
    ],
)
def test_lesson_09_catches_a_solution_without_one_mqtt5_feature(
    run_lesson, variant, experiment, words
):
    run = run_lesson(LESSON, "-m", "solution", solution=BROKEN / variant)

    assert run.failed() == [experiment], (
        f"{variant} lacks one MQTT 5 feature: exactly {experiment} must fail; outcomes: "
        f"{run.outcomes}\n{run.output[-3000:]}"
    )
    message = run.message(experiment)
    for needed in words:
        assert needed in message, (
            f"{variant}: the failure should say {needed!r}; it says:\n{message}"
        )
    others = [name for name in SOLUTION_EXPERIMENTS if name != experiment]
    assert all(run.passed(name) for name in others), (
        f"{variant} makes one mistake only: the other experiments must pass; {run.outcomes}"
    )


def test_lesson_09_on_a_broker_without_mqtt5_is_skipped_for_one_finding(tmp_path, amqtt):  # noqa: F811
    run = child_pytest(tmp_path, LESSON, f"--broker-url={amqtt.url}")

    assert run.outcomes, run.explain()
    assert set(run.outcomes.values()) == {"skipped"}, (
        "without MQTT 5 every experiment of lesson 09 is skipped, none fails: " + run.explain()
    )
    findings = [line for line in run.output.splitlines() if line.startswith("finding:")]
    assert findings == [
        "finding: the broker lacks MQTT 5: CONNACK 'Unsupported protocol version' (0x84) to an "
        f"MQTT 5 CONNECT ({len(run.outcomes)} experiments skipped for it)"
    ], run.explain()
    assert run.returncode == 0, run.explain()

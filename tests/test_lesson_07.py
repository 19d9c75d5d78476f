"""Lesson 07 grades data centers: it fails each broken one with the rule it breaks, and passes ours.

Each variant in ``tests/broken/lesson07_*`` is a solution whose line and trace are the
reference programs and whose data center has one classic flaw. The lesson runs against
it in a child pytest (``run_lesson``), restricted to the experiments that matter, and
must fail there with a message that names the rule, so that a student reads the fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

LESSON = "labs/07_traceability.py"
#: a child pytest runs a whole lesson against a broker: more than the default 60 s per test
pytestmark = pytest.mark.timeout(300)
BROKEN = Path(__file__).resolve().parent / "broken"


@pytest.mark.parametrize(
    ("variant", "caught_by", "rule"),
    [
        pytest.param(
            "lesson07_ack_before_commit",
            ("killed_datacenter", "cannot_commit"),
            "acknowledge QoS 1 messages only after the commit",
            id="acknowledges-before-commit",
        ),
        pytest.param(
            "lesson07_stores_redeliveries_twice",
            ("sent_twice", "killed_datacenter"),
            "idempotency key",
            id="stores-redeliveries-twice",
        ),
        pytest.param(
            "lesson07_crashes_on_invalid_json",
            ("dead_letter_table[invalid-json]", "dead_letter_table[not-utf8]"),
            "must never crash on a payload",
            id="crashes-on-invalid-json",
        ),
    ],
)
def test_lesson_07_fails_a_broken_datacenter_for_its_one_mistake_naming_the_rule(
    run_lesson, variant: str, caught_by: tuple[str, ...], rule: str
) -> None:
    run = run_lesson(LESSON, "-m", "solution", solution=BROKEN / variant)

    assert run.passed(), f"the lesson ran no solution experiment:\n{run.output[-3000:]}"
    failed = run.failed()
    assert failed, (
        f"lesson 07 passed against {variant}, whose data center is broken: no experiment "
        f"catches it.\n{run.output[-3000:]}"
    )
    unexpected = [name for name in failed if not any(part in name for part in caught_by)]
    assert not unexpected, (
        f"{variant} has one mistake, caught by {caught_by}; these experiments failed too, so "
        f"they test something else or are unreliable: {unexpected}\n"
        + "\n".join(run.message(name)[:1000] for name in unexpected)
    )
    for name in failed:
        assert rule in run.message(name), (
            f"{name} failed against {variant}, but its message does not name the rule "
            f"({rule!r}):\n{run.message(name)[:2000]}"
        )


def test_lesson_07_without_a_datacenter_role_says_which_role_to_add(run_lesson) -> None:
    run = run_lesson(
        LESSON, "-m", "solution", "-k", "sent_twice", solution=BROKEN / "lesson07_no_datacenter"
    )

    assert run.failed() == ["test_datacenter_stores_a_record_sent_twice_only_once"], run.outcomes
    assert "has no [roles.datacenter]" in run.message("sent_twice"), run.message("sent_twice")


def test_lesson_07_passes_against_the_reference_solution(run_lesson) -> None:
    run = run_lesson(LESSON, "-m", "solution")

    assert not run.failed(), (
        f"the reference solution fails lesson 07: {run.failed()}\n"
        + "\n".join(run.message(name)[:1500] for name in run.failed())
    )
    assert len(run.passed()) >= 20 and run.returncode == 0, run.output[-3000:]


def test_lesson_07_broker_experiments_pass_over_both_protocols(run_lesson) -> None:
    run = run_lesson(LESSON, "-m", "broker")

    assert not run.failed(), "\n".join(run.message(name)[:1500] for name in run.failed())
    assert {p for n in run.passed() for p in ("mqtt3.1.1", "mqtt5") if p in n} == {
        "mqtt3.1.1",
        "mqtt5",
    }, sorted(run.outcomes)

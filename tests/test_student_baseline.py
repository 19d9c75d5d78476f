"""The broken solutions of lessons 01 to 05 are one student's programs with one mistake each.

``tests/broken/student/`` is that student's device and controller; each
``tests/broken/lessonNN_*`` folder runs them with a ``--mistake``. Without any mistake
they must pass every solution experiment, so that each broken folder fails because of
its one mistake and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import pytest

STUDENT = Path(__file__).resolve().parent / "broken" / "student"


@pytest.mark.parametrize(
    "lesson",
    [
        "labs/01_wildcards.py",
        "labs/02_qos.py",
        "labs/03_retained.py",
        "labs/04_lwt.py",
        "labs/05_sessions.py",
    ],
)
def test_the_student_programs_without_a_mistake_pass_every_solution_experiment(run_lesson, lesson):
    run = run_lesson(lesson, "-m", "solution", solution=STUDENT)
    assert run.returncode == 0 and not run.failed(), run.output[-3000:]
    assert run.passed(), "the lesson must have run solution experiments"

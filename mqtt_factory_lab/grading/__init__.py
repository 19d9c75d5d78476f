"""Grading a whole class: every submission in isolation, in parallel, into a gradebook.

``mqtt-lab grade SUBMISSIONS_DIR --out DIR`` (or ``python -m mqtt_factory_lab.grading``)
grades every folder of ``SUBMISSIONS_DIR`` that holds a ``solution.toml``:

:mod:`~mqtt_factory_lab.grading.settings`   the lessons, hidden experiments and options
:mod:`~mqtt_factory_lab.grading.grader`     the class: the plan, ``-j`` at a time, reuse
:mod:`~mqtt_factory_lab.grading.submission` one submission: its private copy and result
:mod:`~mqtt_factory_lab.grading.unit`       one child pytest per submission for all its
                                            lessons, with its own process group, and a
                                            time limit per lesson (a lesson that hangs or
                                            kills it is charged alone; the rest run in a
                                            new child)
:mod:`~mqtt_factory_lab.grading.child`      the child's side: lesson events, fresh brokers
                                            and a leftover sweep between two lessons
:mod:`~mqtt_factory_lab.grading.sandbox`    the user, readable Python, network namespace and
                                            sweep that keep a submission in its box
:mod:`~mqtt_factory_lab.core.limits`        CPU, memory, file and process limits, and an
                                            unprivileged user, for the student's programs
:mod:`~mqtt_factory_lab.grading.points`     the points plugin (what an experiment is worth)
:mod:`~mqtt_factory_lab.grading.report`     ``gradebook.csv``, per-student HTML and Markdown
:mod:`~mqtt_factory_lab.grading.progress`   the progress line

The limits are the core's (:mod:`mqtt_factory_lab.core.limits`): the core never imports the
grader.
"""

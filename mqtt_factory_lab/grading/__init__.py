"""Grading a whole class: every submission in isolation, in parallel, into a gradebook.

``mqtt-lab grade SUBMISSIONS_DIR --out DIR`` (or ``python -m mqtt_factory_lab.grading``)
grades every folder of ``SUBMISSIONS_DIR`` that holds a ``solution.toml``:

:mod:`~mqtt_factory_lab.grading.runner`   one child pytest per submission and lesson, with its
                                          own brokers, copy, process group and time limits
:mod:`~mqtt_factory_lab.grading.report`   ``gradebook.csv``, per-student HTML and Markdown

The limits are the core's (:mod:`mqtt_factory_lab.core.limits`): the core never imports the
grader.
"""

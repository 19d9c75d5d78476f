"""The example class is data for tests/test_grading_class.py, not tests of the lab.

Its submissions hold hostile files (a conftest.py that would turn failures into passes,
a pytest.ini, a module named like the lab's): pytest must never enter their folders when
it collects the lab's own tests.
"""

collect_ignore_glob = ["*"]

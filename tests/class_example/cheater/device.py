"""A device that does nothing: this submission hopes its conftest.py will pass it instead.

It prints the limits it runs under, which the grader's test reads in its report.
"""

import os
import resource
import sys

for name in ("CPU", "AS", "FSIZE", "NPROC"):
    soft, _hard = resource.getrlimit(getattr(resource, f"RLIMIT_{name}"))
    print(f"RLIMIT_{name} {soft}", flush=True)
print(f"uid {os.getuid()}", flush=True)
print("no device here; the conftest.py is supposed to pass the lessons", flush=True)
sys.exit(1)

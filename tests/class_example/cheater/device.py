"""A device that does nothing: this submission hopes its conftest.py will pass it instead."""

import sys

print("no device here; the conftest.py is supposed to pass the lessons", flush=True)
sys.exit(1)

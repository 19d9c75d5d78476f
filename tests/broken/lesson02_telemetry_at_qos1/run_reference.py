"""Run one of the lab's reference programs from this folder: ``python run_reference.py sim.device ...``.

This broken solution keeps the reference programs and breaks only what it is about.
"""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the lab's root, holding sim/
module = sys.argv.pop(1)
runpy.run_module(module, run_name="__main__", alter_sys=True)

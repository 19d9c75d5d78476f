"""Run a module of the lab's reference solution from a broken variant's folder.

``python ../lesson07_shared/reference.py sim.chocolate --batches 3`` is ``python -m
sim.chocolate --batches 3`` with the lab's root on the import path: a variant's manifest
runs the reference line and trace, and only its data center is broken.
"""

import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)

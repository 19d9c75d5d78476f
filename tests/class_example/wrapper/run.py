"""Runs the lab's own factory program, with one student mistake if asked: this example
submission's stand-in for a student's code (see tests/broken/mutate.py for the mistakes).

    python run.py sim.device --device press ...              the reference program
    python run.py --no-retain state sim.device --device ...  with a mistake
"""

import runpy
import sys

from mqtt_factory_lab.core.paths import LAB_ROOT

MUTATE = LAB_ROOT / "tests" / "broken" / "mutate.py"
sys.argv = [str(MUTATE), *sys.argv[1:]]
runpy.run_path(str(MUTATE), run_name="__main__")

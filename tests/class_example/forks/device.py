"""A device that forks without end: each child leaves the process group and ignores SIGTERM.

The grader's process limit stops the forking; its sweep (by the environment token every
program inherits) kills the children that escaped. Capped at 40 children per start all the
same, so that a run without the limit (student programs run as root) stays small.
"""

import os
import signal
import sys
import threading

children = 0
while children < 40:
    try:
        pid = os.fork()
    except OSError as error:  # EAGAIN: the process limit
        print(f"fork refused after {children} children: {error}", flush=True)
        break
    if pid == 0:
        os.setsid()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        threading.Event().wait()  # blocks until killed
        os._exit(0)
    children += 1
print(f"{children} children forked; never comes online", flush=True)
sys.exit(3)

"""A device that hangs: it waits for something that never comes and ignores SIGTERM.

The grader's lesson time limit stops the run; SIGKILL ends the program.
"""

import signal
import threading

signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("waiting for a lock nobody releases", flush=True)
lock = threading.Lock()
lock.acquire()
lock.acquire()  # blocks forever: a deadlock, as a student may write one

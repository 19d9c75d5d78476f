"""A hostile device: finds its grader's files through /proc and glob, tries to read them,
and scans 127.0.0.1 for MQTT brokers that are not its own. It prints one line per file it
read (``snoop: READ path: first bytes``) and a summary; then exits without working."""

import glob
import os
import socket
import sys
from pathlib import Path

GRADE = "/tmp/mqtt-lab-grade-"

processes = {}
for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        argv = Path(cmdline).read_bytes().decode(errors="replace").split("\0")
        ppid = int(Path(cmdline).with_name("stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        continue
    processes[int(Path(cmdline).parent.name)] = (ppid, argv)

# Its own grader's folder, named in the arguments of the child pytest that started it
# (another grader on the same machine is not the one that promised it anything).
folder, pid = None, os.getppid()
while folder is None and pid in processes:
    ppid, argv = processes[pid]
    for arg in argv:
        path = arg.partition("=")[2] if arg.startswith("--") else arg
        if path.startswith(GRADE) and path.count("/") > 2:
            folder = path[: path.index("/", len(GRADE))]
            break
    pid = ppid
print(f"snoop: its grader's folder is {folder}", flush=True)

# That grader's child pytests (one per running submission) and the brokers they started:
# every path in their arguments, and the broker's other files (acl, passwd).
candidates = {"/etc/shadow"}
graders = {p for p, (_, argv) in processes.items() if folder and any(folder in a for a in argv)}
for pid, (ppid, argv) in processes.items():
    if pid not in graders and ppid not in graders:
        continue
    for arg in argv:
        text = arg.partition("=")[2] if arg.startswith("--") else arg
        if text.startswith((GRADE, "/tmp/mqtt-lab-broker-")):
            candidates.add(text)
            if text.endswith("/mosquitto.conf"):
                candidates.update(str(Path(text).parent / n) for n in ("acl", "passwd"))
for pattern in ("*", "lab/*/*", "s*/*"):
    candidates.update(glob.glob(f"{folder}/{pattern}") if folder else [])

read, denied = [], []
for name in sorted(candidates):
    path = Path(name)
    try:
        if path.is_dir():
            continue
        first = path.read_bytes()[:40]
    except OSError:
        denied.append(name)
        continue
    if name.startswith(os.getcwd()):
        continue  # its own folder: not a secret
    read.append(name)
    print(f"snoop: READ {name}: {first!r}", flush=True)

own = int(os.environ.get("VF_BROKER_PORT", "0"))
open_ports = []
for port in range(1024, 65536):
    probe = socket.socket()
    probe.settimeout(0.2)
    if probe.connect_ex(("127.0.0.1", port)) == 0 and probe.getsockname()[1] != port:
        open_ports.append(port)  # (not a TCP self-connect on an ephemeral port)
    probe.close()
hidden = [n for n in denied + read if "/extra/" in n]
print(f"snoop: hidden experiments found {len(hidden)}, read {len(set(hidden) & set(read))}",
      flush=True)  # fmt: skip
print(f"snoop: read {len(read)} of {len(read) + len(denied)} files, denied {len(denied)}",
      flush=True)  # fmt: skip
print(f"snoop: own broker {own}; open ports on 127.0.0.1 {open_ports}", flush=True)
sys.exit(1)

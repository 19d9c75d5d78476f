"""A hostile device: finds the grader's files through /proc and glob, tries to read them,
and scans 127.0.0.1 for MQTT brokers that are not its own. It prints one line per file it
read (``snoop: READ path: first bytes``) and a summary; then exits without working."""

import glob
import os
import socket
import sys
from pathlib import Path

candidates = {"/etc/shadow"}
processes = {}
for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
    try:
        argv = Path(cmdline).read_bytes().decode(errors="replace").split("\0")
        ppid = int(Path(cmdline).with_name("stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        continue
    processes[int(Path(cmdline).parent.name)] = (ppid, argv)
# the grader's child pytests (their arguments name its folder), and the brokers they started
graders = {pid for pid, (_, argv) in processes.items() if any("mqtt-lab-grade-" in a for a in argv)}
for pid, (ppid, argv) in processes.items():
    if pid not in graders and ppid not in graders:
        continue
    for arg in argv:
        text = arg.partition("=")[2] if arg.startswith("--") else arg
        if text.startswith("/tmp/mqtt-lab-") and not text.startswith("/tmp/mqtt-lab-runtime-"):
            # (the grader's readable copy of Python and the lab is public: not a secret)
            path = Path(text)
            candidates.add(str(path))
            if path.name == "mosquitto.conf":  # the broker's other files: acl, passwd
                candidates.update(str(path.parent / n) for n in ("acl", "passwd"))
for pattern in (
    "/tmp/mqtt-lab-grade-*/*",
    "/tmp/mqtt-lab-grade-*/lab/*/*",
    "/tmp/mqtt-lab-grade-*/s*/*",
):
    candidates.update(glob.glob(pattern))
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
hidden = [n for n in denied if "/extra/" in n]
print(
    f"snoop: hidden experiments found {len(hidden)}, read {len([n for n in read if '/extra/' in n])}",
    flush=True,
)
print(
    f"snoop: read {len(read)} of {len(read) + len(denied)} files, denied {len(denied)}", flush=True
)
print(f"snoop: own broker {own}; open ports on 127.0.0.1 {open_ports}", flush=True)
sys.exit(1)

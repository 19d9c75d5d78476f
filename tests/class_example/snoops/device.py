"""A hostile device: finds its grader's files through /proc and glob, tries to read them and
to list its temporary folders (its own TMPDIR, the grader's), and looks for every port
listening on the machine (/proc/*/net/tcp) to connect to it on 127.0.0.1: another student's
broker, the grader's, anyone's. It prints one line per file it read or folder it listed
(``snoop: READ path: first bytes``, ``snoop: LISTED``) and a summary; then exits without
working."""

import glob
import os
import socket
import sys
from pathlib import Path

#: what the grader's folder and the brokers' folders are called, wherever TMPDIR puts them
GRADE, BROKER = "mqtt-lab-grade-", "mqtt-lab-broker-"

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
        at = path.find(GRADE)
        if path.startswith("/") and at > 0 and "/" in path[at:]:
            folder = path[: path.index("/", at)]
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
        if text.startswith("/") and (GRADE in text or BROKER in text):
            candidates.add(text)
            if text.endswith("/mosquitto.conf"):
                candidates.update(str(Path(text).parent / n) for n in ("acl", "passwd"))
for pattern in ("*", "lab/*/*", "s*/*"):
    candidates.update(glob.glob(f"{folder}/{pattern}") if folder else [])

read, denied = [], []
# The temporary folders: its own (TMPDIR, where its child pytest keeps brokers' folders and
# programs' logs) and the grader's, which it may write in as in /tmp but must not list.
for name in {os.environ.get("TMPDIR", ""), folder or ""} - {""}:
    try:
        listed = os.listdir(name)
    except OSError:
        denied.append(name + "/")
        continue
    read.append(name + "/")
    print(f"snoop: LISTED {name}: {listed[:5]}", flush=True)
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

# Every TCP port listening on the machine, from /proc/PID/net/tcp of its ancestors up to
# init (another process's file shows that process's network namespace: the grader's is the
# machine's), then a connection to each one on 127.0.0.1.
own = int(os.environ.get("VF_BROKER_PORT", "0"))
seen = set()
tables, pid = ["/proc/net/tcp", "/proc/1/net/tcp"], os.getppid()
while pid in processes:
    tables.append(f"/proc/{pid}/net/tcp")
    pid = processes[pid][0]
for table in tables:
    try:
        rows = Path(table).read_text().splitlines()[1:]
    except OSError:
        continue
    for row in rows:
        local, state = row.split()[1], row.split()[3]
        address, port = local.split(":")
        if state == "0A" and address in ("0100007F", "00000000"):  # LISTEN on loopback/any
            seen.add(int(port, 16))
open_ports = []
for port in sorted(seen):
    probe = socket.socket()
    probe.settimeout(0.5)
    if probe.connect_ex(("127.0.0.1", port)) == 0:
        open_ports.append(port)
    probe.close()
hidden = [n for n in denied + read if "/extra/" in n]
print(f"snoop: hidden experiments found {len(hidden)}, read {len(set(hidden) & set(read))}",
      flush=True)  # fmt: skip
print(f"snoop: read {len(read)} of {len(read) + len(denied)} files, denied {len(denied)}",
      flush=True)  # fmt: skip
print(f"snoop: listening ports seen {sorted(seen)}", flush=True)
print(f"snoop: own broker {own}; open ports on 127.0.0.1 {open_ports}", flush=True)
sys.exit(1)

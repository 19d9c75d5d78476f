"""Is a port free? If not, one sentence naming who holds it."""

from __future__ import annotations

import socket

import psutil


def holder(port: int) -> str | None:
    """``None`` when ``port`` can be listened on (127.0.0.1), else who listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            return None
        except OSError:
            pass
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.Error:
        connections = []
    for connection in connections:
        if (
            connection.laddr
            and connection.laddr.port == port
            and connection.status == psutil.CONN_LISTEN
            and connection.pid
        ):
            try:
                process = psutil.Process(connection.pid)
                command = " ".join(process.cmdline()) or process.name()
                return f"{process.name()} (pid {process.pid}, user {process.username()}: {command[:120]})"
            except psutil.Error:
                return f"pid {connection.pid}"
    return f"a program this user cannot see (`ss -ltnp 'sport = :{port}'` as root names it)"


def port_problem(port: int, what: str, option: str) -> str | None:
    """The sentence to print when ``port`` is taken, or None when it is free."""
    who = holder(port)
    if who is None:
        return None
    return (
        f"port {port} ({what}) is already in use by {who}: stop that program, "
        f"or start the sandbox on another port with {option} PORT"
    )

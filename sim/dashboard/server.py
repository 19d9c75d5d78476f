"""The dashboard server: one MQTT client, many pages, over WebSockets (aiohttp).

::

    $ python -m sim.dashboard --http-port 8080
    ready dashboard
    dashboard at http://127.0.0.1:8080/

Routes:

=====================  =====================================================
``GET /``              the page (``static/index.html``)
``GET /static/...``    its script and style sheet
``GET /ws``            WebSocket: the server pushes JSON frames (below)
``POST /api/commands`` a command request (:mod:`sim.dashboard.commands`);
                       202 with the command sent, or 4xx/503 with ``error``
=====================  =====================================================

Frames on the WebSocket, one JSON object each:

* ``{"type": "hello", "root", "client_id", "broker", "connected"}`` first;
* ``{"type": "messages", "items": [{"t": topic, "q": qos, "r": 0|1, "p": text, "ts": s}]}``:
  what arrived from the broker since the last frame (``r`` is the retain flag
  as delivered: 1 for a message the broker replayed from its retained store);
* ``{"type": "broker", "connected": bool, "detail": str}`` when the
  connection to the broker is lost or back;
* ``{"type": "command", ...}`` when a command was published, and
  ``{"type": "outcome", "result": "accepted" | "rejected" | "no answer", ...}``
  when its device answered (:mod:`sim.dashboard.tracker`).

Threads: paho runs its network loop in its own thread and hands every event
to the asyncio loop with ``call_soon_threadsafe``; everything else happens in
the asyncio loop. Messages that arrive together go out in one frame, so a
busy factory (200 messages/s) costs a few frames per second per page, not one
frame per message, and adds no waiting.

Exit status: 0 after SIGTERM or Ctrl-C, 1 when the broker is unreachable at
start or the HTTP port cannot be used, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from aiohttp import WSMsgType, web

from sim.connection import BrokerSettings, add_arguments, connect, make_client
from sim.dashboard.commands import MAX_REQUEST_BYTES, DeviceInfo, RequestError, build_command
from sim.dashboard.tracker import OutcomeTracker
from sim.runtime import add_log_level, broker_settings, print_ready, setup_logging, write_line

log = logging.getLogger("dashboard")

STATIC = Path(__file__).resolve().parent / "static"
#: longest payload text a page gets (the traffic view shows less anyway)
MAX_PAYLOAD_TEXT = 2000
#: frames a page may have waiting before it is considered stuck and closed
MAX_QUEUED_FRAMES = 500
#: the page may load nothing from anywhere else, and no inline script runs
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

Emit = Callable[[dict[str, Any]], None]


class MqttBridge:
    """The dashboard's MQTT client: subscribes to ``<root>/#``, publishes commands.

    Every event (a message, the connection lost or back) is handed to ``emit``
    from paho's network thread.

    :param settings: where the broker is (``VF_*`` variables and flags).
    :param client_id: the dashboard's client id (``dashboard``).
    :param emit: called with each event as a dict.
    """

    def __init__(self, settings: BrokerSettings, client_id: str, emit: Emit) -> None:
        self.settings = settings
        self.client_id = client_id
        self.filter = f"{settings.topic_root}/#"
        self.emit = emit
        self.connected = False
        self._subscribed = threading.Event()
        self._suback: list[Any] = []
        self._closing = False
        self.client = make_client(client_id, settings)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        # Back within seconds of the broker (paho's default waits up to 2 minutes).
        self.client.reconnect_delay_set(min_delay=1, max_delay=5)

    def start(self, timeout: float = 10.0) -> None:
        """Connect and subscribe; return once the broker granted the subscription.

        :raises ConnectionError: saying what went wrong and what to do.
        """
        connect(self.client, self.settings, timeout)
        if not self._subscribed.wait(timeout):
            self.close()
            raise ConnectionError(f"no SUBACK for {self.filter} within {timeout}s")
        failed = [code for code in self._suback if getattr(code, "is_failure", False)]
        if failed:
            self.close()
            raise ConnectionError(
                f"the broker refused the subscription to {self.filter}: {failed[0]} "
                f"(does its ACL let client id {self.client_id!r} read {self.filter}?)"
            )

    def resubscribe(self) -> None:
        """Subscribe again: the broker replays every retained message under the root.

        Called for each page that connects, so the page gets every device's
        state and status from the broker itself, at once.
        """
        if self.connected:
            self.client.subscribe(self.filter, qos=1)

    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> None:
        """Publish at QoS 1 and wait for the PUBACK (blocking: run it in an executor).

        :raises ConnectionError: when the broker is unreachable or did not acknowledge.
        """
        info = self.client.publish(topic, payload, qos=1, retain=False)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(
                f"the broker is unreachable ({mqtt.error_string(info.rc)}); nothing was sent"
            )
        try:
            info.wait_for_publish(timeout)
        except RuntimeError as error:
            raise ConnectionError(
                f"the broker connection was lost while sending ({error})"
            ) from error
        if not info.is_published():
            raise ConnectionError(f"the broker did not acknowledge the command within {timeout}s")

    def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    # -- paho callbacks (network thread) ------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if getattr(reason_code, "is_failure", False):
            log.warning("the broker refused the connection: %s", reason_code)
            return
        self.connected = True
        # A clean session: the subscription has to be made again after every reconnect.
        client.subscribe(self.filter, qos=1)
        self.emit({"type": "broker", "connected": True, "detail": "connected"})

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        if self._closing:
            return
        log.warning(
            "lost the broker at %s:%s (%s); reconnecting",
            self.settings.host,
            self.settings.port,
            reason_code,
        )
        self.emit(
            {
                "type": "broker",
                "connected": False,
                "detail": f"{self.settings.host}:{self.settings.port}, reconnecting",
            }
        )

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self._suback = list(reason_codes)
        self._subscribed.set()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self.emit({"type": "message", "message": message, "at": time.time()})


class PageConnection:
    """One open page: its WebSocket and the frames waiting to be sent to it."""

    def __init__(self, ws: web.WebSocketResponse, peer: str) -> None:
        self.ws = ws
        self.peer = peer
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.writer: asyncio.Task[None] | None = None
        self.closing: asyncio.Task[bool] | None = None

    def offer(self, frame: str) -> None:
        if self.closing is not None:
            return
        if self.queue.qsize() >= MAX_QUEUED_FRAMES:
            # A page that cannot keep up would hold ever more memory; it
            # reconnects by itself and gets the retained state again.
            log.warning("page %s is not keeping up; closing its connection", self.peer)
            if self.writer is not None:
                self.writer.cancel()
            self.closing = asyncio.ensure_future(self.ws.close(message=b"too slow"))
            return
        self.queue.put_nowait(frame)

    async def run(self) -> None:
        while True:
            frame = await self.queue.get()
            await self.ws.send_str(frame)


class Hub:
    """What the server knows and sends: the pages, the known devices, pending commands.

    Lives in the asyncio loop; :meth:`receive` is its entrance from paho's thread.
    """

    def __init__(self, settings: BrokerSettings, client_id: str) -> None:
        self.settings = settings
        self.root = settings.topic_root
        self.client_id = client_id
        self.pages: set[PageConnection] = set()
        #: devices seen in state/status topics; only these may get commands
        self.devices: dict[str, DeviceInfo] = {}
        self.tracker = OutcomeTracker(self.root)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.bridge: MqttBridge | None = None
        self._batch: list[dict[str, Any]] = []
        self._flush_scheduled = False

    # -- from paho's thread ------------------------------------------------------
    def receive(self, event: dict[str, Any]) -> None:
        if self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self.loop.call_soon_threadsafe(self._handle, event)

    # -- in the loop -----------------------------------------------------------------
    def _handle(self, event: dict[str, Any]) -> None:
        if event["type"] != "message":
            self._flush()
            self.broadcast(event)
            return
        message: mqtt.MQTTMessage = event["message"]
        payload = bytes(message.payload)
        self._learn(message.topic, payload)
        self._batch.append(
            {
                "t": message.topic,
                "q": message.qos,
                "r": 1 if message.retain else 0,
                "p": payload[:MAX_PAYLOAD_TEXT].decode("utf-8", errors="replace"),
                "n": len(payload),
                "ts": round(event["at"], 3),
            }
        )
        if not message.retain:
            for outcome in self.tracker.observe(message.topic, payload):
                self._log_outcome(outcome)
                self._batch.append(outcome)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            assert self.loop is not None
            self.loop.call_soon(self._flush)

    def _learn(self, topic: str, payload: bytes) -> None:
        """Remember devices (and their setpoint names) from their state and status topics."""
        parts = topic[len(self.root) + 1 :].split("/") if topic.startswith(self.root + "/") else []
        if len(parts) != 2 or parts[0] not in ("state", "status"):
            return
        device = parts[1]
        if not payload:  # a retained message cleared
            return
        info = self.devices.get(device, DeviceInfo())
        if parts[0] == "state":
            with contextlib.suppress(ValueError):
                data = json.loads(payload)
                setpoints = data.get("setpoints") if isinstance(data, dict) else None
                if isinstance(setpoints, dict):
                    info = DeviceInfo(setpoints=frozenset(setpoints))
        self.devices[device] = info

    def _flush(self) -> None:
        self._flush_scheduled = False
        messages = [item for item in self._batch if "t" in item]
        others = [item for item in self._batch if "t" not in item]
        self._batch = []
        if messages:
            self.broadcast({"type": "messages", "items": messages})
        for item in others:
            self.broadcast(item)

    def broadcast(self, frame: dict[str, Any]) -> None:
        text = json.dumps(frame, separators=(",", ":"))
        for page in list(self.pages):
            page.offer(text)

    def _log_outcome(self, outcome: dict[str, Any]) -> None:
        level = logging.INFO if outcome["result"] == "accepted" else logging.WARNING
        log.log(
            level,
            "command %s to %s: %s (%s)",
            outcome["command_id"],
            outcome["device"],
            outcome["result"],
            outcome["detail"],
        )

    async def expire_commands(self) -> None:
        """Report commands nobody answered (every second)."""
        while True:
            await asyncio.sleep(1.0)
            for outcome in self.tracker.expire():
                self._log_outcome(outcome)
                self.broadcast(outcome)

    def hello(self) -> dict[str, Any]:
        connected = self.bridge is not None and self.bridge.connected
        return {
            "type": "hello",
            "root": self.root,
            "client_id": self.client_id,
            "broker": f"{self.settings.host}:{self.settings.port}",
            "connected": connected,
        }


# -- HTTP ---------------------------------------------------------------------------


def _same_origin(request: web.Request) -> bool:
    """Whether the request comes from our own page (or from no page at all, like curl).

    Another site open in the same browser must not drive the factory or read
    it through our WebSocket: a browser sends ``Origin`` on both, so a foreign
    one is refused.
    """
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc == request.host


@web.middleware
async def security_headers(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    response = await handler(request)
    if not isinstance(response, web.WebSocketResponse):
        response.headers.update(SECURITY_HEADERS)
    return response


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def loopback_only(http_host: str) -> Callable[..., Any]:
    """Refuse requests whose ``Host`` is not a loopback name, when serving on loopback.

    A web site can point its own name at 127.0.0.1 (DNS rebinding) and then
    pass the same-origin check; the ``Host`` header still carries its name.
    """

    @web.middleware
    async def check_host(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if http_host in LOOPBACK_NAMES:
            name = (request.url.host or "").strip("[]")
            if name not in LOOPBACK_NAMES:
                log.warning("refused a request for host %r (serving on loopback only)", name[:80])
                raise web.HTTPForbidden(text="this dashboard answers only to localhost / 127.0.0.1")
        return await handler(request)

    return check_host


def make_app(hub: Hub, http_host: str = "127.0.0.1") -> web.Application:
    """The aiohttp application serving the page, its WebSocket and the command endpoint."""
    app = web.Application(
        middlewares=[loopback_only(http_host), security_headers],
        client_max_size=MAX_REQUEST_BYTES,
    )

    async def index(request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def websocket(request: web.Request) -> web.StreamResponse:
        if not _same_origin(request):
            log.warning("refused a WebSocket from origin %s", request.headers.get("Origin"))
            raise web.HTTPForbidden(text="cross-origin WebSocket refused")
        ws = web.WebSocketResponse(heartbeat=20.0)
        await ws.prepare(request)
        page = PageConnection(ws, request.remote or "?")
        page.offer(json.dumps(hub.hello()))
        hub.pages.add(page)
        page.writer = asyncio.ensure_future(page.run())
        log.info("page connected from %s (%d open)", page.peer, len(hub.pages))
        if hub.bridge is not None:
            hub.bridge.resubscribe()
        try:
            async for message in ws:
                if message.type == WSMsgType.ERROR:
                    break
        finally:
            hub.pages.discard(page)
            page.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await page.writer
            log.info("page from %s disconnected (%d open)", page.peer, len(hub.pages))
        return ws

    async def post_command(request: web.Request) -> web.Response:
        def refuse(status: int, error: str) -> web.Response:
            log.warning("refused a command request from %s: %s", request.remote, error)
            return web.json_response({"error": error}, status=status)

        if not _same_origin(request):
            return refuse(403, "commands are accepted only from the dashboard's own page")
        if request.content_type != "application/json":
            return refuse(415, "send the command request as application/json")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return refuse(413, f"a command request is at most {MAX_REQUEST_BYTES} bytes")
        try:
            device, command = build_command(body, hub.devices, hub.client_id)
        except RequestError as error:
            return refuse(400, str(error))
        topic = f"{hub.root}/commands/{hub.client_id}/{device}"
        text = json.dumps(command, separators=(",", ":"), allow_nan=False)
        description = command["command"]
        if description == "set":
            description = f"set {command['setpoint']}={command['value']:g}"
        hub.tracker.sent(device, command, text)
        hub.broadcast(
            {
                "type": "command",
                "command_id": command["command_id"],
                "device": device,
                "description": description,
                "topic": topic,
            }
        )
        assert hub.bridge is not None
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, hub.bridge.publish, topic, text.encode()
            )
        except ConnectionError as error:
            outcome = {
                "type": "outcome",
                "command_id": command["command_id"],
                "device": device,
                "result": "not sent",
                "detail": str(error),
            }
            hub.tracker.pending = [
                p for p in hub.tracker.pending if p.command_id != command["command_id"]
            ]
            hub.broadcast(outcome)
            return refuse(503, str(error))
        log.info("sent %s to %s on %s (%s)", description, device, topic, command["command_id"])
        return web.json_response(
            {"command_id": command["command_id"], "topic": topic, "payload": command}, status=202
        )

    app.router.add_get("/", index)
    app.router.add_get("/ws", websocket)
    app.router.add_post("/api/commands", post_command)
    app.router.add_static("/static/", STATIC)
    return app


# -- program ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sim.dashboard",
        description="Serve the factory's live dashboard: device status and values, alarms, "
        "traffic, and a command center, updated over a WebSocket.",
        epilog="Prints 'ready <client id>' then the page's address on stdout once it "
        "listens and is subscribed; logs go to stderr. SIGTERM or Ctrl-C stops it.",
    )
    parser.add_argument(
        "--http-host",
        default="127.0.0.1",
        help="address to serve the page on (default 127.0.0.1: this machine only; "
        "0.0.0.0 lets anyone who reaches it send commands)",
    )
    parser.add_argument(
        "--http-port",
        type=int,
        default=8080,
        help="port to serve the page on (default 8080; 0 picks a free one)",
    )
    parser.add_argument(
        "--client-id",
        default="dashboard",
        help="MQTT client id, also the publisher in command topics (default dashboard, "
        "which docker/acl allows to write <root>/commands/dashboard/#)",
    )
    add_log_level(parser)
    add_arguments(parser)
    return parser


async def serve(args: argparse.Namespace, settings: BrokerSettings) -> int:
    """Listen, connect, say ready, and run until SIGTERM or Ctrl-C."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    hub = Hub(settings, args.client_id)
    hub.loop = loop
    runner = web.AppRunner(make_app(hub, args.http_host), access_log=None, shutdown_timeout=1.0)
    if args.http_host not in LOOPBACK_NAMES:
        log.warning(
            "serving on %s: anyone who can reach this address can command the factory",
            args.http_host,
        )
    await runner.setup()
    bridge: MqttBridge | None = None
    expiry: asyncio.Task[None] | None = None
    try:
        try:
            await web.TCPSite(runner, args.http_host, args.http_port).start()
        except OSError as error:
            log.error(
                "cannot serve the page on %s:%s (%s); is another program (another dashboard?) "
                "using the port? Choose another with --http-port.",
                args.http_host,
                args.http_port,
                error.strerror or error,
            )
            return 1
        host, port = runner.addresses[0][:2]
        bridge = MqttBridge(settings, args.client_id, hub.receive)
        hub.bridge = bridge
        try:
            await loop.run_in_executor(None, bridge.start)
        except ConnectionError as error:
            log.error("%s", error)
            return 1
        expiry = asyncio.ensure_future(hub.expire_commands())
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/"
        log.info(
            "subscribed to %s on %s:%s as %r; serving %s",
            bridge.filter,
            settings.host,
            settings.port,
            args.client_id,
            url,
        )
        print_ready(args.client_id)
        write_line(f"dashboard at {url}")
        await stop.wait()
        log.info("stopping")
        return 0
    finally:
        if expiry is not None:
            expiry.cancel()
        for page in list(hub.pages):
            with contextlib.suppress(Exception):
                await page.ws.close(message=b"dashboard stopping")
        await runner.cleanup()
        if bridge is not None:
            await loop.run_in_executor(None, bridge.close)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.http_port <= 65535:
        parser.error(f"--http-port must be between 0 and 65535, not {args.http_port}")
    setup_logging("%(asctime)s %(levelname)s dashboard: %(message)s", args.log_level)
    settings = broker_settings(parser, args)
    try:
        return asyncio.run(serve(args, settings))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

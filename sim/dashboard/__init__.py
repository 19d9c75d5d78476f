"""The factory's live dashboard: ``python -m sim.dashboard`` serves a web page on http://127.0.0.1:8080.

The server (:mod:`sim.dashboard.server`) joins the broker as the client id
``dashboard``, subscribes to everything under the topic root and pushes each
message to the open pages over a WebSocket. The page (``static/``: plain HTML,
CSS and JavaScript, no build step, nothing loaded from the internet) shows

* one card per device: online/offline and since when, state, setpoints,
  counters, each sensor's latest value with a short history, active alarms;
* a command center that sends start, stop, reset and set to a device and shows
  whether the device accepted or rejected it;
* the traffic: per topic the count, rate, QoS and retain flag and last payload,
  and a live log narrowed by a topic filter (``+`` and ``#`` work);
* the chocolate line, when one publishes under ``<root>/<site>/<line>/...``.

Why it is built this way:

* **Retained messages, not a cache.** Every time a page connects, the server
  subscribes again, and the broker replays its retained state and status
  messages: the page shows every device at once, and what it shows is what
  the broker holds (the seed's "restart the dashboard" exercise).
* **Commands are checked on the server.** The browser names a device and a
  command; the server accepts only devices it has seen and payloads that
  fit ``schemas/command.schema.json``, builds the topic itself
  (``<root>/commands/<client id>/<device>``, which ``docker/acl`` allows) and
  publishes at QoS 1. No topic or raw payload ever comes from the browser.
* **Payloads are text.** The page writes every received string with
  ``textContent``, never as HTML, and the server sends a Content Security
  Policy that forbids inline script.

:mod:`sim.dashboard.commands` checks a browser's command request;
:mod:`sim.dashboard.tracker` follows a sent command to the device's answer.
"""

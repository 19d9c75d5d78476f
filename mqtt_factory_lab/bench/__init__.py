"""Benchmarks that print figures, never pass/fail (``python -m mqtt_factory_lab.bench``).

:mod:`~mqtt_factory_lab.bench.lab`        broker ready time, lesson wall times, factory start-up
                                          and throughput (the default run)
:mod:`~mqtt_factory_lab.bench.dashboard`  publish-to-page latency (``--dashboard``; Chromium)
:mod:`~mqtt_factory_lab.bench.chocolate`  the chocolate data center: ingest, trace, kill -9
                                          (``--chocolate``)
"""

from mqtt_factory_lab.bench.lab import main

__all__ = ["main"]

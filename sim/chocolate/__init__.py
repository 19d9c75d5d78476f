"""The chocolate factory: an 8-step line making white, milk and dark chocolate.

``python -m sim.chocolate`` runs the line against the broker (see
:mod:`sim.chocolate.__main__`). The package is in layers, each with one job:

=====================  ==========================================================
:mod:`.recipes`        white, milk and dark: ingredients, route, tempering curve
:mod:`.plant`          the eight steps, their machines, sensors, QC points; topics
:mod:`.lots`           raw-material lots from suppliers, allocated by weight
:mod:`.line`           :class:`~.line.LineCore`: every message of a production run,
                       decided without a network (so it is tested directly)
:mod:`.runner`         :class:`~.runner.LineRunner`: one MQTT client per machine,
                       each with its Last Will; paces the messages in plant time
=====================  ==========================================================

Topics follow the seed's namespace ``<root>/<site>/<line>/<step>/<machine>/<type>``
(``<root>`` is ``factory`` unless ``VF_TOPIC_ROOT`` says otherwise), for example
``factory/tunis-01/line-a/s5_tempering/temper-01/telemetry``.
"""

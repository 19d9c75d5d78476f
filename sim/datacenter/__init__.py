"""The chocolate factory's data center: every message stored, nothing lost, lots traceable.

``python -m sim.datacenter`` subscribes to the line with a persistent session
and stores every message in SQLite (``--db``); ``python -m sim.datacenter
trace ...`` answers the recall questions from that database. One module, one job:

=====================  ==============================================================
:mod:`.contract`       which schema a topic's payload follows, and why a payload is
                       rejected (the reasons that end in the dead-letter table)
:mod:`.storage`        the SQLite database: raw ``mqtt_messages``, ``dead_letters``
                       and the normalised traceability tables; idempotent ingest
:mod:`.ingest`         the MQTT subscriber: acknowledges a QoS 1 message only after
                       the transaction holding it has committed
:mod:`.trace`          :class:`~.trace.Traceability`: backward and forward trace, mass
                       balance, recall report (the Python API behind ``trace``)
=====================  ==============================================================

Like every ``sim`` program it needs no part of the test harness: only the
standard library, paho-mqtt, and jsonschema for the contract.
"""

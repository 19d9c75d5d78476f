"""The broker conformance suite: what a broker can do, what the lessons found, the report.

:mod:`~mqtt_factory_lab.conformance.capabilities`  probe a broker's features once per session
:mod:`~mqtt_factory_lab.conformance.spec`          the MQTT rules experiments cite, and the
                                                   recorder of their outcomes
:mod:`~mqtt_factory_lab.conformance.run`           ``mqtt-lab conformance`` / ``python -m
                                                   mqtt_factory_lab.conformance``: run, report
"""

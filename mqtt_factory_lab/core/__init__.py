"""The harness's core: starting programs, talking MQTT, reading a solution, running a factory.

:mod:`~mqtt_factory_lab.core.paths`        where the lab's files are (checkout or installed)
:mod:`~mqtt_factory_lab.core.process`      child processes that never outlive the run; waiting
                                           for an event with a deadline
:mod:`~mqtt_factory_lab.core.connection`   one broker connection's settings (URL, TLS, auth)
:mod:`~mqtt_factory_lab.core.client`       ``RecordingClient``, the experiments' MQTT client
:mod:`~mqtt_factory_lab.core.limits`       CPU, memory, file and process limits for programs
:mod:`~mqtt_factory_lab.core.solution`     a solution manifest (``solution.toml``), read
:mod:`~mqtt_factory_lab.core.roles`        one role of a solution (device, controller...) running
:mod:`~mqtt_factory_lab.core.factory`      a whole factory of roles on one broker

The core never imports the grader, the conformance suite, the fixtures or the plugin
(``[tool.importlinter]`` in ``pyproject.toml``).
"""

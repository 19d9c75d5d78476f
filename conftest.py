"""Root conftest: wires the lab's pytest plugin (mqtt_factory_lab/plugin.py) into every run.

When the project is installed (``scripts/setup`` installs it into ``.venv``) pytest
also finds the plugin through its ``pytest11`` entry point under the same name, so
it is registered once either way.
"""

pytest_plugins = ["mqtt_factory_lab.plugin"]

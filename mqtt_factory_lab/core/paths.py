"""Where the lab's own files are: one answer for a checkout and for an installed package.

The lab is more than Python code: broker configuration (``docker/``), JSON Schemas
(``schemas/``), the reference solution (``solution.toml`` and ``sim/``) and the
lessons (``labs/``). In a checkout (and an editable install) they sit beside this
package; ``pip install mqtt-factory-lab`` puts them under
``<prefix>/share/mqtt-factory-lab/`` (``[tool.setuptools.data-files]`` in
``pyproject.toml``), so the package never needs generic top-level names such as
``sim`` in everyone's site-packages.
"""

from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent.parent
_INSTALLED = Path(sys.prefix) / "share" / "mqtt-factory-lab"


def lab_root() -> Path:
    """The folder that holds ``docker/``, ``schemas/``, ``solution.toml`` and ``sim/``."""
    for candidate in (_CHECKOUT, _INSTALLED):
        if (candidate / "docker" / "mosquitto.conf").is_file():
            return candidate
    return _CHECKOUT


LAB_ROOT = lab_root()
DOCKER_DIR = LAB_ROOT / "docker"
SCHEMA_DIR = LAB_ROOT / "schemas"
REFERENCE_MANIFEST = LAB_ROOT / "solution.toml"
LABS_DIR = LAB_ROOT / "labs"

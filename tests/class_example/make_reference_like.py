"""Writes the manifests of the example submissions that run the lab's reference programs.

``reference``, ``state_not_retained`` and ``retains_telemetry`` are the lab's ``solution.toml``
with every ``python -m sim.X`` command run through the submission's ``run.py`` (with one
mistake for the two broken ones). When ``solution.toml`` changes (a lesson adds an option or
a filter), run ``python tests/class_example/make_reference_like.py``;
``tests/test_grading_class.py`` fails until the copies match.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
LAB = HERE.parent.parent
#: submission folder → (description, the device's mistake: arguments of tests/broken/mutate.py)
SUBMISSIONS = {
    "reference": ("the lab's reference programs: full marks", ()),
    "state_not_retained": ("publishes its state without the retain flag", ("--no-retain", "state")),
    "retains_telemetry": ("retains its telemetry", ("--retain", "telemetry")),
}


def manifest(name: str, description: str, mutation: tuple[str, ...]) -> str:
    reference = tomllib.loads((LAB / "solution.toml").read_text())
    lines = [
        "# An example submission of tests/class_example, written by make_reference_like.py.",
        "[solution]",
        f"name = {json.dumps(name)}",
        f"description = {json.dumps(description)}",
        "",
    ]
    for role, spec in reference["roles"].items():
        command = list(spec["command"])
        assert command[1] == "-m", f"the reference {role} is not run with -m"
        mistake = list(mutation) if role == "device" else []
        lines.append(f"[roles.{role}]")
        lines.append(f"command = {json.dumps([command[0], 'run.py', *mistake, *command[2:]])}")
        if "ready" in spec:
            lines.append(f"ready = {json.dumps(spec['ready'])}")
        for option, args in spec.get("options", {}).items():
            lines.append(f"options.{option} = {json.dumps(args)}")
        lines.append("")
    lines += [
        "[files]",
        *(f"{k} = {json.dumps(Path(v).name)}" for k, v in reference["files"].items()),
    ]
    if reference.get("filters"):
        lines += ["", "[filters]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in reference["filters"].items()]
    return "\n".join(lines) + "\n"


def expected_files() -> dict[Path, str]:
    """Every file these submissions should hold (manifest and the reference's files)."""
    reference = tomllib.loads((LAB / "solution.toml").read_text())
    files = {}
    for folder, (description, mutation) in SUBMISSIONS.items():
        files[HERE / folder / "solution.toml"] = manifest(folder, description, mutation)
        for relative in reference["files"].values():
            files[HERE / folder / Path(relative).name] = (LAB / relative).read_text()
    return files


def main() -> None:
    for path, text in expected_files().items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    for folder in SUBMISSIONS:
        if folder != "reference":
            shutil.copy(HERE / "reference" / "run.py", HERE / folder / "run.py")


if __name__ == "__main__":
    main()

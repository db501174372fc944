"""Print pip constraints pinning bigcos's runtime dependencies to the versions installed here.

    python jobs/templates/pin_constraints.py > constraints.txt

Run it in the virtual environment whose test suite passed; the Dockerfile installs bigcos with
``pip install -c constraints.txt .``, so the image gets exactly these versions. Every
distribution bigcos needs at run time is pinned (its dependencies and theirs, for this Python
and platform); extras (``[test]``, ``[bench]``) are left out.
"""

import re
import sys
from importlib import metadata

from packaging.requirements import Requirement


def runtime_pins(root: str = "bigcos") -> dict[str, str]:
    """``{distribution: version}`` of everything ``root`` requires, transitively."""
    pins: dict[str, str] = {}
    todo = [root]
    while todo:
        dist = metadata.distribution(todo.pop())
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if name in pins:
            continue
        pins[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    del pins[root]
    return pins


def main() -> None:
    print(f"# pinned by jobs/templates/pin_constraints.py (Python {sys.version.split()[0]})")
    for name, version in sorted(runtime_pins().items()):
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()

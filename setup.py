"""Package discovery for the folder layout (everything else is in pyproject.toml).

receivers/, processors/, exporters/ and configs/ sit at the top level of the repository but install
as halod.receivers, halod.processors, ...: pyproject's package-dir maps them, and this finds every
sub-package under each mapped folder so a new component folder needs no packaging change.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {
    "halod": "halod",
    "halod.receivers": "receivers",
    "halod.processors": "processors",
    "halod.exporters": "exporters",
    "halod.configs": "configs",
}


def discover() -> list[str]:
    packages = []
    for package, folder in ROOTS.items():
        base = Path(folder)
        packages.append(package)
        for init in sorted(base.rglob("__init__.py")):
            rel = init.parent.relative_to(base)
            if rel.parts and "__pycache__" not in rel.parts:
                packages.append(".".join((package, *rel.parts)))
    return packages


setup(packages=discover())

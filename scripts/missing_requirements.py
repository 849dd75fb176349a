"""Print, one per line, the requirements of fusedopt's build and of the named extras that this
Python does not satisfy yet (nothing when all are there): scripts/setup.sh installs only those,
so a machine without network that already has everything sets up offline.

usage: python scripts/missing_requirements.py test,bench,mmengine
"""
import os
import sys
from importlib import metadata

try:
    from packaging.requirements import Requirement
except ImportError:   # pip always vendors it
    from pip._vendor.packaging.requirements import Requirement

try:
    import tomllib
except ImportError:   # Python < 3.11
    from pip._vendor import tomli as tomllib

# what the --no-build-isolation build of the extension needs beside torch
BUILD_TOOLS = ["setuptools>=70.1", "wheel", "ninja"]


def requirements(extras):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    out = BUILD_TOOLS + project["dependencies"]
    for extra in extras:
        if extra not in project["optional-dependencies"]:
            sys.exit(f"missing_requirements.py: unknown extra {extra!r}; pyproject.toml has "
                     f"{sorted(project['optional-dependencies'])}")
        out += project["optional-dependencies"][extra]
    return out


def satisfied(text):
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate():
        return True                          # not for this platform
    try:
        version = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return False
    return req.specifier.contains(version, prereleases=True)


def main():
    extras = [e for e in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if e]
    for text in requirements(extras):
        if not satisfied(text):
            req = Requirement(text)   # printed without its marker: it holds here (satisfied())
            extras_ = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            print(f"{req.name}{extras_}{req.specifier}")


if __name__ == "__main__":
    main()

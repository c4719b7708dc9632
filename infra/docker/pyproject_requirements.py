"""Print the requirements of pyproject.toml (base dependencies plus the named extras), one per line.

The Docker builds install dependencies from this list before copying the sources, so that a code change does
not reinstall torch; and the gateway image asks for no extra, so it gets no torch (tests check that too).
Usage: python pyproject_requirements.py pyproject.toml [--extra ml ...]
"""

from __future__ import annotations

import argparse
import tomllib


def requirements(pyproject: str, extras: list[str]) -> list[str]:
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"unknown extra {extra!r}; pyproject has {sorted(optional)}")
        reqs.extend(optional[extra])
    return reqs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("pyproject")
    parser.add_argument("--extra", action="append", default=[])
    args = parser.parse_args()
    print("\n".join(requirements(args.pyproject, args.extra)))


if __name__ == "__main__":
    main()

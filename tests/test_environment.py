"""Pins: every dependency is pinned exactly, and conda users get the same pins as pip users."""

import re

import yaml

from tools.chapters import ROOT


def pins(lines) -> dict[str, str]:
    found = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not pinned exactly: {line!r}"
            found[re.sub(r"[-_.]+", "-", name).lower()] = version
    return found


def test_requirements_pin_everything_exactly():
    requirements = pins((ROOT / "requirements.txt").read_text().splitlines())
    assert requirements["torch"] == "2.13.0"
    assert requirements["jupyter-book"] == "1.0.4.post1"
    assert requirements["nbgrader"] == "0.9.6"
    assert requirements["sphinx"].startswith("7.")


def test_environment_yml_carries_the_same_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    requirements = pins((ROOT / "requirements.txt").read_text().splitlines())
    assert pins(pip_section) == requirements

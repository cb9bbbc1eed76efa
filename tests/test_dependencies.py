"""pyproject.toml: the libraries whose major versions the code relies on are bounded, and
the versions installed here (the tested ones) are inside those bounds."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
BOUNDED = ("transformers", "onnxruntime", "aiomqtt", "paho-mqtt", "numpy", "tokenizers")


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found: dict[str, Requirement] = {}
    for extra in project["optional-dependencies"].values():
        for line in extra:
            req = Requirement(line)
            if req.name in BOUNDED:
                found[req.name] = req
    return found


@pytest.mark.parametrize("name", BOUNDED)
def test_major_version_is_bounded(name: str) -> None:
    req = requirements()[name]
    assert any(spec.operator in ("<", "<=", "==", "~=") for spec in req.specifier), str(req)


@pytest.mark.parametrize("name", BOUNDED)
def test_installed_version_is_inside_the_bounds(name: str) -> None:
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{name} is not installed here")
    assert installed in requirements()[name].specifier, f"{name} {installed}"


@pytest.mark.parametrize("name", BOUNDED)
def test_readme_names_a_tested_version_inside_the_bounds(name: str) -> None:
    readme = (ROOT / "README.md").read_text()
    marker = f"| {name} | "
    assert marker in readme, f"README's tested versions table lacks {name}"
    tested = readme.split(marker, 1)[1].split("|", 1)[0].strip()
    assert tested in requirements()[name].specifier, f"README: {name} {tested}"

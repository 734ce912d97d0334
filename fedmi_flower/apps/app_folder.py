"""The Flower app folder a run submits: this package as it is installed, plus a user's own modules.

``flwr run <folder>`` ships a folder as a FAB to the SuperLink, whose ServerApp and
ClientApps import from it first. A checkout is such a folder (its ``pyproject.toml`` holds
``[tool.flwr.app]``), an installed wheel is not; so every run writes one: the app's
``pyproject.toml`` (package data, ``flower_app.toml``), a copy of the package as this
process imports it (``clients``, ``strategies`` and ``experiments`` inside it, wherever
they came from), and each module a ``package.module:attribute`` import path of the
experiment names that is not installed (a file beside the user's work). SuperNodes on
other machines then run the submitter's code, as Flower intends a FAB to carry it.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import tomllib
from collections.abc import Iterable
from pathlib import Path

import fedmi_flower

TEMPLATE = Path(__file__).with_name("flower_app.toml")
"""The app's ``pyproject.toml`` (its version is replaced by the installed one)."""

MAPPED = ("clients", "strategies", "experiments")
"""Top-level folders of the checkout that install inside the package (pyproject.toml's package-dir)."""

_JUNK = shutil.ignore_patterns("__pycache__", "*.pyc")


def write_app_folder(into: str | Path, import_paths: Iterable[str] = ()) -> Path:
    """Write the Flower app folder into ``into`` (emptied first); return it.

    Parameters
    ----------
    into : str | Path
        The folder to write (``flwr run`` is given it).
    import_paths : Iterable[str]
        ``package.module:attribute`` names the run imports (a model builder, a strategy class);
        the top-level module of each that lives outside an installed distribution is copied in.
    """
    folder = Path(into)
    if folder.exists():
        shutil.rmtree(folder)
    package = folder / "fedmi_flower"
    shutil.copytree(Path(fedmi_flower.__file__).resolve().parent, package, ignore=_JUNK)
    for name in MAPPED:
        source = Path(next(iter(importlib.import_module(f"fedmi_flower.{name}").__path__))).resolve()
        if not (package / name).is_dir():
            shutil.copytree(source, package / name, ignore=_JUNK)
    for source in user_modules(import_paths):
        target = folder / source.name
        if source.is_dir():
            shutil.copytree(source, target, ignore=_JUNK)
        else:
            shutil.copy2(source, target)
    text = TEMPLATE.read_text().replace('version = "0.0.0"', f'version = "{app_version()}"')
    (folder / "pyproject.toml").write_text(text)
    return folder


def app_version() -> str:
    """The installed version, or 0.0.0 for a source tree never installed (Flower needs a valid one)."""
    version = fedmi_flower.__version__
    return version if version[:1].isdigit() else "0.0.0"


def user_modules(import_paths: Iterable[str]) -> list[Path]:
    """The files or package folders of the top-level modules of ``import_paths`` that are not installed.

    A module under ``site-packages`` (or ``dist-packages``) is installed: every process of
    the run imports it from there, so it is not shipped. One that is not importable is left
    for the run's own check to report.
    """
    found: list[Path] = []
    for path in import_paths:
        if ":" not in path:
            continue
        top = path.partition(":")[0].split(".")[0]
        if top == "fedmi_flower":
            continue
        try:
            spec = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        if spec is None or spec.origin in (None, "built-in", "frozen"):
            continue
        origin = Path(spec.origin).resolve()
        source = origin.parent if spec.submodule_search_locations else origin
        if any(part in ("site-packages", "dist-packages") for part in source.parts):
            continue
        if source not in found:
            found.append(source)
    return found


def flower_app_table(pyproject: str | Path) -> dict:
    """The ``[tool.flwr.app]`` table of a ``pyproject.toml`` (compared in tests)."""
    with open(pyproject, "rb") as stream:
        return tomllib.load(stream)["tool"]["flwr"]["app"]

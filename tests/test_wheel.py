"""The package as a researcher installs it: its wheel, in a fresh virtual environment, outside the checkout.

The fresh environment gets its dependencies (torch, Flower, Ray: gigabytes, installed from
this disk once) from the test's own environment through a ``.pth`` line, which adds that
``site-packages`` folder without running its ``.pth`` files: the checkout's editable
install stays invisible, so every ``fedmi_flower`` module the runs import comes from the
wheel. Flower's commands (``flwr``, ``flower-superlink``, ...) are written into the fresh
environment's ``bin/`` from their entry points, as pip writes them, so that the processes
Flower starts run the fresh environment's Python too.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from fedmi_flower.apps.app_folder import TEMPLATE, flower_app_table, write_app_folder

REPO = Path(__file__).resolve().parent.parent
SKIP_IN_COPY = shutil.ignore_patterns(".git", ".venv", "runs", "data", "build", "*.egg-info", "__pycache__", ".*cache")


def build_wheel(into: Path) -> Path:
    source = into / "source"
    shutil.copytree(REPO, source, ignore=SKIP_IN_COPY)  # a build writes build/ and *.egg-info beside its source
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(into), str(source)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    (wheel,) = into.glob("fedmi_flower-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def fresh_venv(where: Path, wheel: Path) -> Path:
    """A virtual environment with the wheel installed and this environment's dependencies visible; its bin/."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True, timeout=120)
    python = where / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for entry in importlib.metadata.distribution("flwr").entry_points:
        if entry.group == "console_scripts":
            script = where / "bin" / entry.name
            module, _, attribute = entry.value.partition(":")
            script.write_text(
                f"#!{python}\nimport sys\nfrom {module} import {attribute.split('.')[0]} as entry\n"
                f"sys.exit(entry{attribute[len(attribute.split('.')[0]) :]}())\n"
            )
            script.chmod(0o755)
    return where / "bin"


def test_the_wheel_holds_the_package_its_experiments_and_no_generic_top_level_names(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"fedmi_flower"}, f"the wheel installs top-level names {sorted(tops)}: only fedmi_flower"
    for folder in ("clients", "strategies"):
        for path in (REPO / folder).glob("*.py"):
            assert f"fedmi_flower/{folder}/{path.name}" in names
    for path in (REPO / "experiments").glob("*.toml"):
        assert f"fedmi_flower/experiments/{path.name}" in names
    assert "fedmi_flower/apps/flower_app.toml" in names
    # Every module of the checkout's package is in the wheel (a subpackage left out of pyproject.toml's list).
    for path in (REPO / "fedmi_flower").rglob("*.py"):
        assert path.relative_to(REPO).as_posix() in names, f"{path} is not in the wheel"


def test_the_app_written_for_a_run_is_the_checkouts_flower_app(tmp_path):
    """The app ``fedmi run`` submits and the checkout's (``flwr run .``) name the same components and config."""
    written, checkout = flower_app_table(TEMPLATE), flower_app_table(REPO / "pyproject.toml")
    assert written["components"] == checkout["components"]
    assert written["config"] == checkout["config"]
    folder = write_app_folder(tmp_path / "app")
    for name in ("clients", "strategies"):
        assert (folder / "fedmi_flower" / name / "__init__.py").is_file()
    assert (folder / "fedmi_flower" / "experiments" / "smoke.toml").is_file()
    assert 'version = "0.0.0"' not in (folder / "pyproject.toml").read_text()


def test_an_installed_wheel_lists_and_runs_outside_the_checkout(wheel, tmp_path, mnist_root):
    bin_dir = fresh_venv(tmp_path / "venv", wheel)
    work = tmp_path / "work"  # no checkout here, nor above
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "FEDMI_EXPERIMENTS")} | {
        "FEDMI_DATA_ROOT": str(mnist_root),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }

    def fedmi(*args: str, timeout: int = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bin_dir / "fedmi"), *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
        )

    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import fedmi_flower.clients as c, fedmi_flower; print(c.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert "site-packages" in where.stdout and str(REPO) not in where.stdout, where.stdout + where.stderr
    listed = fedmi("list")
    assert listed.returncode == 0 and "smoke" in listed.stdout and "quickstart" in listed.stdout, listed.stderr
    studies = fedmi("study", "paper", "--short", "--dry-run", "--out", str(work / "study"))  # the studies ship too
    assert studies.returncode == 0 and "39 runs" in studies.stdout, studies.stdout + studies.stderr
    ran = fedmi("run", "smoke", "--out", str(work / "smoke"), timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "[round 1/1]" in ran.stdout
    log = (work / "smoke" / "run.log").read_text()
    assert str(REPO) not in log, "the run imported the checkout"
    assert (work / "smoke" / "rounds.jsonl").read_text().count("\n") == 1

"""The layers of docs/architecture.md: every import of the package points down, and the science never meets Flower."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# layer -> the layers it may import (itself included). Order of docs/architecture.md.
ALLOWED: dict[str, set[str]] = {
    "config": {"config", "science"},  # the config's vocabulary (ablations) is the science's
    "science": {"science"},
    "records": {"records", "science", "config"},
    "wire": {"wire", "science", "config"},
    "analysis": {"analysis", "records", "wire", "science", "config"},
    "views": {"views", "records", "science", "config"},
    "clients": {"clients", "wire", "science", "config"},
    "strategies": {"strategies", "analysis", "records", "wire", "science", "config"},
    "apps": {"apps", "strategies", "clients", "views", "analysis", "records", "wire", "science", "config"},
    "cli": {"cli", "apps", "strategies", "clients", "views", "analysis", "records", "wire", "science", "config"},
}
FLOWER = ("flwr", "ray")
# Layers that may speak Flower: the adapters and the apps.
FLOWER_LAYERS = {"clients", "strategies", "apps", "cli"}
# What trains or discovers: views read records and call only pure functions.
TRAINS_OR_DISCOVERS = {"train_sparse", "discover_circuits", "learn_gate_scores"}


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to, or None outside the package."""
    parts = module.split(".")
    if parts[0] != "fedmi_flower" or len(parts) == 1:
        return None
    return parts[1]


def modules() -> list[tuple[str, Path]]:
    found = []
    # clients/ and strategies/ are top-level folders that install as fedmi_flower.clients and .strategies.
    for package, prefix in (("fedmi_flower", ()), ("clients", ("fedmi_flower",)), ("strategies", ("fedmi_flower",))):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = (*prefix, *(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
            found.append((".".join(parts), path))
    return found


def imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """Every module ``name`` imports (relative imports resolved), with the names taken from it."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((base, [alias.name for alias in node.names]))
    return out


MODULES = modules()


def test_every_module_has_a_layer():
    assert MODULES, "no module found"
    for name, _ in MODULES:
        if name in ("fedmi_flower",):
            continue
        assert layer_of(name) in ALLOWED, f"{name} belongs to no layer of docs/architecture.md"


@pytest.mark.parametrize("name,path", MODULES, ids=[m for m, _ in MODULES])
def test_imports_point_down(name, path):
    layer = layer_of(name)
    if layer is None:
        return
    for target, names in imports(name, path):
        other = layer_of(target)
        if other is not None:
            assert other in ALLOWED[layer], f"{name} ({layer}) imports {target} ({other}): imports must point down"
        if target.split(".")[0] in FLOWER:
            assert layer in FLOWER_LAYERS, f"{name} ({layer}) imports {target}: only adapters and apps speak Flower"
        if layer == "views" and other == "science":
            assert not TRAINS_OR_DISCOVERS & set(names), (
                f"{name} imports {names} from {target}: views never train or discover"
            )


def test_the_checker_sees_a_wrong_way_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from fedmi_flower.apps.server_app import make_server_app\nimport flwr\n")
    found = imports("fedmi_flower.science.bad", bad)
    assert ("fedmi_flower.apps.server_app", ["make_server_app"]) in found
    assert layer_of(found[0][0]) not in ALLOWED["science"]
    relative = tmp_path / "rel.py"
    relative.write_text("from ..records.series import load_run\n")
    assert imports("fedmi_flower.views.rel", relative) == [("fedmi_flower.records.series", ["load_run"])]


def test_the_command_answers_help_list_and_config_errors_without_loading_torch_flower_or_ray():
    import subprocess
    import sys

    probe = (
        "import contextlib, io, sys\n"
        "from fedmi_flower.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "    main(['list'])\n"
        "    assert main(['run', 'quickstart', '--set', 'train.sparsity=1.5']) == 2\n"
        "    from fedmi_flower.apps.preflight import gpu_device_present\n"
        "    if not gpu_device_present():  # a GPU asked for where there is none: refused before torch loads\n"
        "        assert main(['run', 'smoke', '--set', 'resources.device=cuda', '--out', '/nonexistent/x']) == 2\n"
        "    try:\n"
        "        main(['--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'flwr', 'ray', 'matplotlib') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_ci_turns_every_conditional_skip_into_a_failure():
    """A test that skips where a system package is missing must run in CI: .ci/run installs the package and sets
    the variable that makes the skip a failure instead."""
    ci = (ROOT / ".ci" / "run").read_text()
    skips = {
        "FEDMI_REQUIRE_SYSTEM_DATASETS": ("tests/test_data.py", "dataset-fashion-mnist"),
        "FEDMI_REQUIRE_BROWSER": ("tests/test_explorer.py", "chromium-driver"),
    }
    for variable, (test_file, package) in skips.items():
        assert variable in (ROOT / test_file).read_text()
        assert f"export {variable}=1" in ci and package in ci
    tests = [p for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_architecture.py"]
    skipping = sorted(p.name for p in tests if "pytest.skip(" in p.read_text())
    assert skipping == ["test_data.py", "test_explorer.py"]  # a new conditional skip needs its CI variable here

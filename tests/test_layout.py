"""The package's import structure: the systems never import the training driver, and the driver
needs no more of them than their base class, so the two cannot import each other in a cycle;
the command line builds its help without Lightning."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import isnet

PACKAGE = Path(isnet.__file__).resolve().parent
SYSTEMS = sorted((PACKAGE / "systems").glob("*.py"))


def imported_names(path: Path) -> set[str]:
    """Absolute names of what the module at ``path`` imports, at its top or inside functions:
    ``import a.b`` gives ``a.b``; ``from a import b`` gives ``a`` and ``a.b``; relative imports
    are resolved against the module's package."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]  # also right for __init__.py
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ((node.module,) if node.module else ()))
            else:
                base = node.module
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def test_imported_names_resolve_relative_and_local_imports():
    assert {"isnet.defaults", "isnet.systems.base.SystemModule", "isnet.systems.gradients.gradient_times_input",
            "torch"} <= imported_names(PACKAGE / "systems" / "isnet.py")
    assert "isnet.systems.base.SystemModule" in imported_names(PACKAGE / "training.py")
    assert "isnet.checkpointing.epoch_checkpoints" in imported_names(PACKAGE / "training.py")  # inside train()
    assert "isnet.evaluation.lrp_explainer" in imported_names(PACKAGE / "systems" / "base.py")  # inside a method


def test_no_system_imports_the_training_driver():
    assert len(SYSTEMS) >= 10
    for path in SYSTEMS:
        bad = sorted(n for n in imported_names(path) if _within(n, "isnet.training"))
        assert not bad, f"isnet/systems/{path.name} imports {bad}: systems get the driver as before_fit's `fit`"


def test_the_training_driver_needs_only_the_systems_base_class():
    used = sorted(n for n in imported_names(PACKAGE / "training.py") if _within(n, "isnet.systems"))
    assert used and all(_within(n, "isnet.systems.base") for n in used), used


def test_building_the_command_line_does_not_import_lightning():
    """The help texts come from the registry, which imports the systems only when one is used."""
    code = ("import sys; from isnet.cli import build_parser; build_parser(); "
            "assert 'lightning' not in sys.modules, 'lightning imported'")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr

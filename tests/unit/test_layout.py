"""The package layout's import rules, read from the code (every import, also inside functions):

- ``dicomstl/`` is the ground floor: it imports none of the packages above it;
- ``gpu_worker/``, ``scheduler/`` and ``web/`` import the ground floor, not each other;
- ``dicomstl_cli/`` (the entry points) may import everything, and nothing imports it;
- the web app's blueprints do not import each other;
- only ``gpu_worker/gpu/`` imports CuPy.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("dicomstl", "gpu_worker", "scheduler", "web", "dicomstl_cli")
#: package -> the packages of this project it may import (besides itself)
ALLOWED = {
    "dicomstl": set(),
    "gpu_worker": {"dicomstl"},
    "scheduler": {"dicomstl"},
    "web": {"dicomstl"},
    "dicomstl_cli": {"dicomstl", "gpu_worker", "scheduler", "web"},
}
GPU_PACKAGE = "gpu_worker/gpu/"


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute names)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _defines_blueprint(path: Path) -> bool:
    return any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Blueprint"
               for node in ast.walk(ast.parse(path.read_text())))


def violations(root: Path) -> list[str]:
    """What breaks the rules in the tree at ``root``, one line each."""
    found = []
    blueprints = {f"web.{p.stem}" for p in (root / "web").glob("*.py") if _defines_blueprint(p)}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            relative = path.relative_to(root).as_posix()
            module = relative.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
            for name in sorted(_imports(path)):
                top = name.split(".")[0]
                if top in PACKAGES and top != package and top not in ALLOWED[package]:
                    found.append(f"{relative} imports {name}: {package} may not import {top}")
                if top in ("cupy", "cupyx") and not relative.startswith(GPU_PACKAGE):
                    found.append(f"{relative} imports {name}: only {GPU_PACKAGE} imports CuPy")
                if module in blueprints and name in blueprints - {module}:
                    found.append(f"{relative} imports {name}: blueprints import no blueprint")
    return found


def test_the_code_keeps_the_layout():
    assert violations(ROOT) == []


def test_the_check_finds_each_kind_of_violation(tmp_path):
    def write(relative: str, text: str) -> None:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    for package in PACKAGES:
        write(f"{package}/__init__.py", "")
    write("dicomstl/jobs.py", "def f():\n    from gpu_worker.options import STAGES\n")
    write("web/api.py", "from flask import Blueprint\napi = Blueprint('api', __name__)\n"
                        "from web.pages import send_result\n")
    write("web/pages.py", "from flask import Blueprint\npages = Blueprint('pages', __name__)\n")
    write("web/results.py", "import dicomstl_cli.main\n")
    write("scheduler/main.py", "import cupy\n")
    write("gpu_worker/gpu/engine.py", "import cupy\n")  # allowed
    assert violations(tmp_path) == [
        "dicomstl/jobs.py imports gpu_worker.options: dicomstl may not import gpu_worker",
        "dicomstl/jobs.py imports gpu_worker.options.STAGES: dicomstl may not import "
        "gpu_worker",
        "scheduler/main.py imports cupy: only gpu_worker/gpu/ imports CuPy",
        "web/api.py imports web.pages: blueprints import no blueprint",
        "web/results.py imports dicomstl_cli.main: web may not import dicomstl_cli",
    ]

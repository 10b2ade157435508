"""The package's seams: imports run one way (docs/architecture.md), `import sam_jax` stays light, and no
module imports another's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import import_graph

ROOT = Path(__file__).resolve().parents[1]


def test_imports_run_one_way_without_circles():
    g = import_graph.graph()
    assert len(g) > 70 and sum(map(len, g.values())) > 150  # the whole tree was read
    assert [m for m in g if m.startswith("sam_jax.formats")] and "sam_jax.loading" in g
    assert import_graph.upward_imports(g) == []
    assert import_graph.cycles(g) == []


def test_the_layer_check_catches_an_upward_import_and_a_circle():
    g = {"sam_jax.modeling.sam": {"sam_jax.loading"}, "sam_jax.loading": {"sam_jax.modeling.sam"}}
    assert import_graph.upward_imports(g) == ["sam_jax.modeling.sam (modeling) imports sam_jax.loading (loading)"]
    assert import_graph.cycles(g) == [["sam_jax.loading", "sam_jax.modeling.sam"]]


def test_import_sam_jax_loads_no_training_data_jobs_or_server_code():
    code = (
        "import sys, sam_jax\n"
        "heavy = ('sam_jax.train', 'sam_jax.data', 'sam_jax.jobs', 'sam_jax.amg', 'sam_jax.serve', 'torch', 'scipy')\n"
        "print([m for m in sys.modules if m.startswith(heavy)])\n"
        "sam_jax.generate_masks\n"  # automatic masks load on first use
        "print('sam_jax.amg' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stdout


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("sam_jax", "convert"):
            found += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_no_module_imports_another_modules_private_names():
    files = [p for folder in ("sam_jax", "convert", "benchmarks") for p in (ROOT / folder).rglob("*.py")]
    assert len(files) > 40
    assert [hit for p in files for hit in _private_imports(p)] == []

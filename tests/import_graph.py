"""The import graph of `sam_jax/` and `convert/`, read with `ast` (nothing is imported),
checked against the layers of docs/architecture.md.

    python tests/import_graph.py     # prints each layer's modules and every upward or circular import

An import inside a function counts as any other: a lazy import is still a dependency.
`from package import submodule` is an edge to the submodule (a package's `__init__` runs
first in any case, so that edge is Python's, not the code's).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top: a module may import from its own layer and the layers below, never above.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundations",
        (
            "sam_jax.config",
            "sam_jax.io",
            "sam_jax.windowed",
            "sam_jax.masks",
            "sam_jax.vectors",
            "sam_jax.compilation_cache",
        ),
    ),
    ("modeling", ("sam_jax.modeling",)),
    ("nnx", ("sam_jax.nnx",)),
    ("checkpoint", ("sam_jax.checkpoint",)),
    (
        "computation",
        (
            "sam_jax.transforms",
            "sam_jax.prompt_layout",
            "sam_jax.predictor",
            "sam_jax.end_to_end",
            "sam_jax.embedding_files",
            "sam_jax.amg",
            "sam_jax.export",
            "sam_jax.data",
            "sam_jax.train",
        ),
    ),
    ("formats", ("sam_jax.formats",)),
    ("loading", ("sam_jax.loading", "sam_jax.conversion")),
    (
        "model users",
        ("sam_jax.compat", "sam_jax.segment_anything", "sam_jax.segment_anything_hq", "sam_jax.jobs", "sam_jax.serve"),
    ),
    ("command line", ("sam_jax.cli", "sam_jax.demo", "convert")),
    # The package facade re-exports for users; test support imports the references.
    ("facade", ("sam_jax",)),
    ("test support", ("sam_jax.testing",)),
)


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file, for every module of `sam_jax` and `convert`."""
    found = {}
    for path in sorted([*root.glob("sam_jax/**/*.py"), *root.glob("convert/**/*.py")]):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[str]:
    """The project modules that module `name` (at `path`) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            resolved = resolve(target)
            if resolved is not None and resolved != name:
                yield resolved


def graph(root: Path = ROOT) -> dict[str, set[str]]:
    known = modules(root)
    return {name: set(imports(name, path, known)) for name, path in known.items()}


def layer_of(module: str) -> int:
    """The index in `LAYERS` of the longest prefix naming `module`'s layer."""
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    if best < 0:
        raise KeyError(f"{module} is in no layer of tests/import_graph.py (add it where it belongs)")
    return best


def upward_imports(g: dict[str, set[str]]) -> list[str]:
    """Every import of a module in a higher layer than the importer's."""
    return sorted(
        f"{src} ({LAYERS[layer_of(src)][0]}) imports {dst} ({LAYERS[layer_of(dst)][0]})"
        for src, targets in g.items()
        for dst in targets
        if layer_of(dst) > layer_of(src)
    )


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    g = graph()
    for index, (title, _) in enumerate(LAYERS):
        names = sorted(m for m in g if layer_of(m) == index)
        print(f"{index} {title}: {', '.join(names)}")
    problems = upward_imports(g) + [" <-> ".join(c) for c in cycles(g)]
    print("\n".join(problems) if problems else f"{sum(map(len, g.values()))} imports, none upward, no circles")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

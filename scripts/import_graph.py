"""The top-level import graph of the four packages, read from the source.

    python scripts/import_graph.py [--png docs/figures/import-graph.png]

Prints one line per arrow between packages (how many import statements, how many of them inside
functions) and draws the floors of DESIGN.md with those arrows; an arrow that runs up a floor
or sideways is drawn red. tests/unit/test_layering.py holds the same rules with this reader.
"""

from __future__ import annotations

import argparse
import ast
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMESPACE = "cascade_testbed"
"""The one top-level package the four live in (so a user's `server.py` cannot shadow them)."""
PACKAGES = ("common", "server", "emulated_devices", "testbed")
FLOOR = {"common": 1, "server": 2, "emulated_devices": 2, "testbed": 3}


@dataclass(frozen=True)
class Import:
    path: str
    line: int
    target: str
    """The dotted module imported, resolved when the import is relative."""
    lazy: bool
    """Inside a function, so it runs only when the function does."""

    @property
    def package(self) -> str:
        """Which of the four packages the import targets (else its top-level name)."""
        parts = self.target.split(".")
        return parts[1] if parts[0] == NAMESPACE and len(parts) > 1 else parts[0]

    @property
    def source(self) -> str:
        """Which of the four packages the importing module is in."""
        return package_of(self.path)


def package_of(path: str) -> str:
    """`server/app.py` -> `server`."""
    return path.removeprefix(NAMESPACE + "/").split("/")[0]


def imports_of(source: str, path: str) -> list[Import]:
    """Every import statement in one module's source, at any depth, with relative imports
    resolved against `path` (a repository-relative posix path)."""
    module = path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    is_package = path.endswith("__init__.py")
    found: list[Import] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend(Import(path, child.lineno, a.name, lazy) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")
                    base = base[: len(base) - child.level + (1 if is_package else 0)]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                found.append(Import(path, child.lineno, target, lazy))
            visit(child, inside)

    visit(ast.parse(source, filename=path), False)
    return found


def by_name_imports(source: str) -> list[int]:
    """Lines that name `import_module` or `__import__`: imports no reading of the code follows."""
    return [n.lineno for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Name | ast.Attribute)
            and (n.id if isinstance(n, ast.Name) else n.attr) in {"import_module", "__import__"}]


def sources(root: Path = ROOT) -> dict[str, str]:
    """Every module of the four packages, by repository-relative path."""
    return {p.relative_to(root).as_posix(): p.read_text()
            for pkg in PACKAGES for p in sorted((root / NAMESPACE / pkg).rglob("*.py"))}


def package_edges(imports: list[Import]) -> dict[tuple[str, str], tuple[int, int]]:
    """(from, to) package -> (import statements, of which inside functions)."""
    total: Counter[tuple[str, str]] = Counter()
    lazy: Counter[tuple[str, str]] = Counter()
    for imp in imports:
        src = imp.source
        if imp.package in PACKAGES and imp.package != src:
            total[src, imp.package] += 1
            lazy[src, imp.package] += imp.lazy
    return {edge: (n, lazy[edge]) for edge, n in sorted(total.items())}


def draw(edges: dict[tuple[str, str], tuple[int, int]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    where = {"testbed": (0.5, 0.85), "server": (0.25, 0.5), "emulated_devices": (0.75, 0.5),
             "common": (0.5, 0.15)}
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.set_axis_off()
    for name, (x, y) in where.items():
        ax.text(x, y, f"{name}/\nfloor {FLOOR[name]}", ha="center", va="center", fontsize=11,
                bbox={"boxstyle": "round,pad=0.6", "fc": "#eef3fb", "ec": "#335"})
    for (src, dst), (n, lazy) in edges.items():
        upward = FLOOR[dst] >= FLOOR[src]
        (x0, y0), (x1, y1) = where[src], where[dst]
        ax.annotate("", xy=(x1, y1 + (0.07 if y1 < y0 else -0.07)),
                    xytext=(x0, y0 - (0.07 if y1 < y0 else -0.07)),
                    arrowprops={"arrowstyle": "->", "lw": 1.5,
                                "color": "red" if upward else "#333"})
        vertical = abs(x1 - x0) < 1e-6
        ax.text((x0 + x1) / 2 + (-0.02 if vertical else 0.02), y0 + (y1 - y0) * 0.4,
                f"{n}" + (f" ({lazy} lazy)" if lazy else ""), ha="right" if vertical else "left",
                fontsize=9, color="red" if upward else "#333")
    ax.set_title("Imports between packages (statements; lazy = inside a function)", fontsize=10)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", type=Path, help="also draw the graph to this file")
    args = parser.parse_args()
    imports = [imp for path, src in sources().items() for imp in imports_of(src, path)]
    edges = package_edges(imports)
    for (src, dst), (n, lazy) in edges.items():
        direction = "down" if FLOOR[dst] < FLOOR[src] else "UP/SIDEWAYS"
        print(f"{src:>16} -> {dst:<16} {n:3d} imports ({lazy} inside functions), {direction}")
    if args.png:
        draw(edges, args.png)
        print(f"drawn: {args.png}")


if __name__ == "__main__":
    main()

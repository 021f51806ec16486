"""The shape of the code: lines per folder, the largest file, import circles, arrows back up.

    python -m bench.layout [--root .] [--json FILE]

Every ``import`` counts, also those inside functions or under ``TYPE_CHECKING``: a lazy import
still ties two modules together. Folders sit on floors (``FLOORS``); an import from a lower
floor to a higher one is an arrow back up. ``tests/test_layout.py`` keeps both at zero.
"""

from __future__ import annotations

import argparse
import ast
import json
from collections import Counter
from pathlib import Path

# Top to bottom, the way one upload travels (docs/ARCHITECTURE.md).
FLOORS = {
    "bench": 6,
    "app": 5,
    "ui": 4,
    "serving": 3,
    "explain": 2,
    "review": 2,
    "training": 2,
    "model": 1,
    "imaging": 0,
}
SKIPPED = ("tests", ".venv", "review/migrations", "docs", "assets")


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every first-party module under ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if any(relative.as_posix().startswith(s) for s in SKIPPED) or relative.parts[0][0] == ".":
            continue
        name = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
        found[name] = path
    return found


def imports(root: Path) -> dict[str, set[str]]:
    """Module → the first-party modules it imports (anywhere in the file)."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def floor(module: str, floors: dict[str, int]) -> int:
    return floors.get(module.split(".")[0], max(floors.values()))


def arrows_up(graph: dict[str, set[str]], floors: dict[str, int] = FLOORS) -> list[str]:
    """Imports from a lower floor to a higher one, as ``a -> b``."""
    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if floor(target, floors) > floor(source, floors)
    )


def measure(root: Path, floors: dict[str, int] = FLOORS) -> dict:
    """Lines per folder (and share), the largest file, circles and arrows back up."""
    files = modules(root)
    lines = {name: len(path.read_text().splitlines()) for name, path in files.items()}
    per_folder = Counter()
    for name, count in lines.items():
        per_folder[files[name].relative_to(root).parts[0]] += count
    total = sum(per_folder.values())
    largest = max(lines, key=lines.get)
    graph = imports(root)
    return {
        "lines": total,
        "per_folder": {k: f"{v} ({100 * v / total:.0f} %)" for k, v in sorted(per_folder.items())},
        "largest_file": f"{files[largest].relative_to(root)} ({lines[largest]} lines)",
        "circles": circles(graph),
        "arrows_up": arrows_up(graph, floors),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."))
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = measure(args.root)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

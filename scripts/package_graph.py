"""Print which ProphRL package imports which (every import statement, also inside functions).

    python scripts/package_graph.py            # one line per package: the packages it imports

tests/test_package_roles.py checks this graph against the packages' roles.
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


@dataclasses.dataclass(frozen=True)
class PackageImport:
    package: str     # the importing package
    module: Path     # the importing file
    line: int
    imported: str    # the dotted name imported (module or "module.name")

    @property
    def imported_package(self) -> str:
        return self.imported.split(".")[0]


def cross_package_imports(src: Path = SRC, include_tests: bool = False) -> list[PackageImport]:
    """Every import of another prophrl package by a module of a package under src/ (tests left out unless asked)."""
    found = []
    for package_dir in sorted(p for p in src.iterdir() if (p / p.name).is_dir()):
        package = package_dir.name
        for path in sorted((package_dir / package).rglob("*.py")):
            if not include_tests and "test" in path.relative_to(package_dir).parts[:1]:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                for name in names:
                    top = name.split(".")[0]
                    if top.startswith("prophrl") and top != package:
                        found.append(PackageImport(package, path, node.lineno, name))
    return found


def package_imports(src: Path = SRC, include_tests: bool = False) -> dict[str, set[str]]:
    """{package: the other prophrl packages its modules import} for every package under src/."""
    graph: dict[str, set[str]] = defaultdict(set)
    for package_dir in sorted(p for p in src.iterdir() if (p / p.name).is_dir()):
        graph[package_dir.name]
    for found in cross_package_imports(src, include_tests):
        graph[found.package].add(found.imported_package)
    return dict(graph)


def main() -> int:
    for package, imported in sorted(package_imports().items()):
        print(f"{package:20s} -> {', '.join(sorted(imported)) or '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

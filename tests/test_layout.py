"""The layout stays a stack: ``lint-imports`` keeps the contracts in pyproject.toml (every
import runs down, so nothing served imports offline code; no cycle in a folder; nothing
imports app.py) and breaks on a planted one; each requirement file declares what its code
imports."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import grimp
import pytest

from tests.conftest import REPO

CONFIG = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
PACKAGES = CONFIG["root_packages"]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` (the console script of this interpreter's import-linter) in ``root``."""
    command = [sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"]
    return subprocess.run(
        [*command, "--no-cache", "--no-logo"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_repository_keeps_its_contracts():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Contracts: {len(CONFIG['contracts'])} kept, 0 broken." in result.stdout


def test_every_package_is_checked():
    """A new top-level folder is a package the contracts name, in a layer and cycle-free."""
    found = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()} - {"tests"}
    assert found == set(PACKAGES)
    contracts = {contract["id"]: contract for contract in CONFIG["contracts"]}
    layered = {name.strip() for layer in contracts["layers"]["layers"] for name in layer.split("|")}
    assert layered == set(PACKAGES)
    assert set(contracts["no-cycles"]["ancestors"]) == set(PACKAGES)
    assert contracts["app-on-top"]["forbidden_modules"] == ["app"]
    assert (REPO / "app.py").exists()


PLANTED = {
    "an import back up": (
        {"imaging/planted.py": "from model import config\n"},
        "imaging is not allowed to import model",
    ),
    "a lazy import back up": (
        {"model/planted.py": "def late():\n    import serving.runtime\n"},
        "model is not allowed to import serving",
    ),
    "served code importing offline code": (
        {"review/planted.py": "import training.data\n"},
        "review is not allowed to import training",
    ),
    "an import between independent siblings": (
        {"batch/planted.py": "from serving import runtime\n"},
        "batch is not allowed to import serving",
    ),
    "a cycle in a folder": (
        {
            "model/planted_a.py": "from model import planted_b\n",
            "model/planted_b.py": "from model import planted_a\n",
        },
        ".planted_b -> .planted_a",
    ),
    "an import of app.py": ({"ui/planted.py": "import app\n"}, "ui is not allowed to import app"),
}


@pytest.mark.parametrize("files, named", PLANTED.values(), ids=PLANTED.keys())
def test_a_planted_break_is_found(tmp_path, files, named):
    """The contracts on a tree of empty packages with the same names, and one planted break."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    assert lint_imports(tmp_path).returncode == 0
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 broken." in result.stdout and named in result.stdout


# The code each requirement file is for (requirements-dev.txt: all of it and tests/).
SERVED = ["batch", "explain", "imaging", "model", "review", "serving", "ui"]
RAY_ENGINE = "batch.predict_ray"
# Imports made only where the package is there, each guarded where it is made.
GUARDED = [
    ("serving.runtime", "spaces"),  # on a ZeroGPU Space, which provides it
    ("explain.localization", "skimage"),  # else numpy_otsu, the same threshold
]


def declared(name: str) -> set[str]:
    """Normalised distribution names in a requirement file and the files it includes."""
    names = set()
    for line in (REPO / name).read_text().splitlines():
        line = line.partition("#")[0].strip()
        if line.startswith("-r "):
            names |= declared(line.removeprefix("-r ").strip())
        elif line:
            names.add(normalise(re.match(r"[A-Za-z0-9._-]+", line).group()))
    return names


def normalise(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def third_party(modules: set[str]) -> set[str]:
    """The top-level names among ``modules`` that are neither ours nor the standard library."""
    ours = {*PACKAGES, "app", "tests", "conftest"}
    tops = {module.partition(".")[0] for module in modules}
    return {top for top in tops if top not in ours and top not in sys.stdlib_module_names}


def imported_by_files(paths: list[Path]) -> set[str]:
    """Every module named by an ``import`` anywhere in ``paths`` (files outside a package)."""
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
    return found


def imported_by_requirement_file() -> dict[str, set[str]]:
    """Requirement file → the third-party top-level names its code imports, in any function."""
    graph = grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)
    for importer, imported in GUARDED:
        assert graph.direct_import_exists(importer=importer, imported=imported), imported
        graph.remove_import(importer=importer, imported=imported)

    def upstream(*packages: str) -> set[str]:
        return set().union(*(graph.find_upstream_modules(p, as_package=True) for p in packages))

    needs = {
        "requirements-scale.txt": third_party(upstream(RAY_ENGINE)),
        "requirements-train.txt": third_party(upstream("training")),
        "requirements-bench.txt": third_party(upstream("bench")),
    }
    graph.remove_module(RAY_ENGINE)
    app = imported_by_files([REPO / "app.py"])
    ours = {module.partition(".")[0] for module in app} & set(PACKAGES)
    needs["requirements.txt"] = third_party(upstream(*SERVED, *ours) | app)
    tests = third_party(imported_by_files(sorted((REPO / "tests").rglob("*.py"))))
    needs["requirements-dev.txt"] = set().union(tests, *needs.values())
    return needs


def test_app_py_imports_only_served_code():
    """app.py is a module outside every package, so the contracts do not read its imports."""
    ours = {m.partition(".")[0] for m in imported_by_files([REPO / "app.py"])} & set(PACKAGES)
    assert ours <= set(SERVED)


def test_each_requirement_file_declares_what_its_code_imports():
    distributions = packages_distributions()
    missing = [
        f"{top} (imported by the code {name} is for)"
        for name, tops in imported_by_requirement_file().items()
        for top in sorted(tops)
        if not {normalise(d) for d in distributions.get(top, [top])} & declared(name)
    ]
    assert missing == []


def test_the_runtime_installs_no_training_benchmark_or_ray_package():
    runtime = declared("requirements.txt")
    assert not runtime & {"ray", "scikit-learn", "matplotlib", "torchmetrics", "psutil", "captum"}
    assert declared("requirements-dev.txt") >= set().union(
        *(declared(f"requirements-{part}.txt") for part in ("train", "bench", "scale"))
    )

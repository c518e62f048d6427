"""Package shape: one top-level import name, lazy heavy imports, no import cycle, no private
cross-package import, and the protocols that the solvers, certificates and trainer rely on."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lipdeq
from lipdeq.deq.protocols import DenseCapable, ImplicitModel, LinearOperator

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = {"lipdeq": ROOT / "lipdeq", "lipdeq.solvers": ROOT / "solvers"}


def _run(code: str, cwd: Path = ROOT, env_extra: dict | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


HEAVY = "import sys; print(sorted(m for m in ('cvxpy', 'clarabel', 'matplotlib', 'art') if m in sys.modules))"


def test_import_lipdeq_loads_no_cvxpy_nor_matplotlib():
    assert _run("import lipdeq; " + HEAVY) == "[]"


def test_cli_parser_and_train_help_load_no_cvxpy():
    code = ("import contextlib, io, lipdeq.cli as c; c.build_parser()\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try: c.main(['train', '--help'])\n"
            "    except SystemExit: pass\n" + HEAVY)
    assert _run(code) == "[]"


def test_unavailable_extra_command_is_reported_not_invalid_choice(monkeypatch, capsys):
    import importlib
    cli_main = importlib.import_module("lipdeq.cli.app")
    monkeypatch.setitem(cli_main.EXTRA_COMMANDS, "bench", ("experiments.no_such_module", "x"))
    assert cli_main.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert "unavailable" in err and "experiments/" in err and "invalid choice" not in err
    # with flags: still the reason, not "unrecognized arguments: --quick" (found by review)
    assert cli_main.main(["bench", "--quick", "projection"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unavailable" in err[0] and "unrecognized" not in err[0]


def _modules(pkg: str, folder: Path):
    for path in folder.rglob("*.py"):
        rel = path.relative_to(folder).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join([pkg, *parts]), path, path.name == "__init__.py"


def _imports(module: str, path: Path, is_pkg: bool):
    """(imported module, imported names, line) for every import, relative ones resolved."""
    tree = ast.parse(path.read_text())
    package = module if is_pkg else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno, node
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno, node


def _all_modules():
    mods = {}
    for pkg, folder in SOURCE_DIRS.items():
        for name, path, is_pkg in _modules(pkg, folder):
            if pkg == "lipdeq" and name.startswith("lipdeq.solvers"):
                continue
            mods[name] = (path, is_pkg)
    return mods


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else module


def test_no_private_name_crosses_a_package_boundary():
    mods = _all_modules()
    bad = []
    for name, (path, is_pkg) in mods.items():
        for target, names, line, _ in _imports(name, path, is_pkg):
            if not target.startswith("lipdeq"):
                continue
            private = [n for n in names if n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
            private += [p for p in target.split(".") if p.startswith("_") and p != "__init__"]
            if private and _subpackage(target) != _subpackage(name):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {private} from {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle_among_module_level_imports():
    mods = _all_modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_pkg) in mods.items():
        tree_body = ast.parse(path.read_text()).body  # module level only: lazy imports don't cycle
        for target, names, _, node in _imports(name, path, is_pkg):
            if node not in tree_body or not target.startswith("lipdeq"):
                continue
            for cand in [target] + [f"{target}.{n}" for n in names]:
                if cand in graph and cand != name:
                    graph[name].add(cand)
    # a package's __init__ re-exporting its own submodules is not a cycle of concepts
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in graph[m]:
            if d.startswith(m + "."):
                continue
            if state.get(d) == 1:
                cyc = stack[stack.index(d):] + [d]
                if not all(x.startswith(cyc[0] + ".") or x == cyc[0] for x in cyc[1:]):
                    raise AssertionError("import cycle: " + " -> ".join(cyc))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for folder in (ROOT / "lipdeq", ROOT / "solvers")
            for p in folder.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_public_paths_stay():
    from lipdeq import ProjectedStep, constrain, load_checkpoint  # noqa: F401
    from lipdeq.conditions import CONDITIONS
    from lipdeq.fixed_point import ConvergenceError, FixedPointResult, solve  # noqa: F401
    from lipdeq.geometry import mu_inf  # noqa: F401
    from lipdeq.lipschitz import empirical_lipschitz, l2_bound, linf_bound  # noqa: F401
    from lipdeq.robustness import (certified_interval, certified_lipschitz, fgsm,  # noqa: F401
                                   interval_bounds, pgd)
    from lipdeq.solvers import SolverError, project_mu_inf, project_norm_inf  # noqa: F401
    assert "mu_inf" in CONDITIONS and lipdeq.ImplicitConvNetwork.__name__ == "ImplicitConvNetwork"


def test_models_and_operators_satisfy_the_protocols():
    from lipdeq.certify.embedded import EmbeddedOperator
    dense = lipdeq.ImplicitNetwork(6, 5, 3)
    conv = lipdeq.ImplicitConvNetwork(in_shape=(1, 6, 6), channels=2, out_features=3, input_kernel_size=3, pool=3)
    for model in (dense, conv):
        assert isinstance(model, ImplicitModel)
        assert isinstance(model.operator(), LinearOperator)
    op = dense.operator()
    assert isinstance(op, DenseCapable) and isinstance(EmbeddedOperator(op), LinearOperator)
    assert torch.allclose(dense.input_gain_inf(), dense.B.detach().abs().sum(1).max())


def test_source_checkout_without_install_finds_lipdeq_solvers(tmp_path):
    """A bare checkout on PYTHONPATH (no lipdeq/solvers folder) still imports lipdeq.solvers."""
    code = "import lipdeq.solvers as s, lipdeq.solvers.projection as p; print(s.__name__, s.__file__)"
    out = _run(code, cwd=tmp_path, env_extra={"PYTHONPATH": str(ROOT)})
    assert out.split()[0] == "lipdeq.solvers" and Path(out.split()[1]).parent == ROOT / "solvers"


def test_regular_install_has_one_top_level_name(tmp_path):
    """Build and install the distribution (not editable) into a folder; its file list holds only
    ``lipdeq``, and the installed copy imports lipdeq.solvers from inside the package."""
    import shutil
    src, target = tmp_path / "src", tmp_path / "site"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("lipdeq", "solvers"):  # a copy, so that the build leaves nothing in the checkout
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--quiet", "--target", str(target), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    dist = next(target.glob("lipdeq-*.dist-info"))
    record = (dist / "RECORD").read_text().splitlines()
    top = {line.split(",")[0].split("/")[0] for line in record}
    top = {t for t in top if not t.endswith(".dist-info") and t != "../../../bin" and not t.startswith("..")}
    assert top == {"lipdeq"}, top
    assert (dist / "top_level.txt").read_text().split() == ["lipdeq"] if (dist / "top_level.txt").exists() else True
    code = ("import lipdeq, lipdeq.solvers as s; print(lipdeq.__file__); print(s.__file__)")
    out = _run(code, cwd=tmp_path, env_extra={"PYTHONPATH": str(target)}).splitlines()
    assert all(Path(line).is_relative_to(target) for line in out), out


def test_every_docs_citation_points_at_an_existing_section():
    """Code and docs cite ``docs/math.md §k.m`` and ``docs/design.md §k``: each section exists."""
    import re
    headings = {}
    for doc in ("math", "design"):
        text = (ROOT / "docs" / f"{doc}.md").read_text()
        headings[doc] = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", text, flags=re.M))
        headings[doc] |= set(re.findall(r"^(\d+)\. ", text, flags=re.M)) if doc == "math" else set()
    missing = []
    for folder in ("lipdeq", "solvers", "experiments", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            for doc, num in re.findall(r"docs/(math|design)\.md §(\d+(?:\.\d+)?)", path.read_text()):
                if num not in headings[doc]:
                    missing.append(f"{path.relative_to(ROOT)}: docs/{doc}.md §{num}")
    assert not missing, missing
    assert not [p for p in (ROOT / "lipdeq").rglob("*.py") if "SPEC §" in p.read_text()]

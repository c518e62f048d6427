"""Make ``lipdeq.solvers`` importable from a bare source checkout.

The repository keeps the convex-optimization code in the top-level folder ``solvers/``; an install
maps that folder to the package ``lipdeq.solvers`` (``package_dir`` in setup.cfg), so an installed
lipdeq adds exactly one top-level import name. A checkout used without installing (``PYTHONPATH=.``,
``python -m lipdeq`` from the repository root) has no ``lipdeq/solvers`` folder: this finder serves
``lipdeq.solvers`` from ``../solvers`` in that case only, and does nothing in an installed copy.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_NAME = "lipdeq.solvers"


class SourceTreeSolversFinder(importlib.abc.MetaPathFinder):
    """Finds ``lipdeq.solvers`` (and its submodules) in the repository's ``solvers/`` folder."""

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if fullname == _NAME:
            return importlib.util.spec_from_file_location(
                fullname, self.root / "__init__.py", submodule_search_locations=[str(self.root)])
        return None  # submodules resolve through the package's __path__ set above


def install() -> None:
    """Register the finder when lipdeq runs from a checkout that has no ``lipdeq/solvers``."""
    package = Path(__file__).resolve().parent
    source = package.parent / "solvers"
    if (package / "solvers").is_dir() or not (source / "__init__.py").is_file():
        return  # installed copy (solvers copied in) or no checkout around: nothing to do
    if any(isinstance(f, SourceTreeSolversFinder) for f in sys.meta_path):
        return
    # First, not last: an editable install of another checkout maps lipdeq.solvers to *its*
    # solvers/ folder, which must not shadow the solvers/ next to this lipdeq.
    sys.meta_path.insert(0, SourceTreeSolversFinder(source))

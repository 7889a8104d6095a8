"""The build backend builds the wheel without writing into the checkout (`pip install .`)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

pytest.importorskip("setuptools", minversion="77")

ROOT = Path(__file__).resolve().parents[2]


def _backend():
    spec = importlib.util.spec_from_file_location("quantlens_build", ROOT / "tools" / "quantlens_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of what a clone holds for the build, as the working directory (pip runs the
    backend there)."""
    project = tmp_path / "checkout"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, project / name)
    for folder in ("core", "daemon", "tools"):
        shutil.copytree(ROOT / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(project)
    return project


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_wheel_holds_the_packages_and_the_checkout_is_left_as_it_was(checkout: Path, tmp_path: Path) -> None:
    backend = _backend()
    before = _tree(checkout)
    out = tmp_path / "wheels"
    out.mkdir()
    assert backend.get_requires_for_build_wheel() == []
    metadata = backend.prepare_metadata_for_build_wheel(str(tmp_path))
    name = backend.build_wheel(str(out), None, str(tmp_path / metadata))
    assert _tree(checkout) == before  # no build/, no quantlens.egg-info/
    assert Path.cwd() == checkout
    with zipfile.ZipFile(out / name) as wheel:
        files = set(wheel.namelist())
    sources = {f"quantlens/{p.relative_to(ROOT)}" for d in ("core", "daemon") for p in (ROOT / d).rglob("*.py")}
    assert sources <= files
    assert not any(f.startswith(("core/", "daemon/", "tools/")) for f in files)  # no generic top-level names
    assert "quantlens-0.1.0.dist-info/entry_points.txt" in files


def test_sdist_carries_the_backend_so_that_it_builds(checkout: Path, tmp_path: Path) -> None:
    backend = _backend()
    name = backend.build_sdist(str(tmp_path))
    with tarfile.open(tmp_path / name) as sdist:
        files = set(sdist.getnames())
    assert "quantlens-0.1.0/tools/quantlens_build.py" in files
    assert "quantlens-0.1.0/core/histogram.py" in files
    assert os.path.samefile(Path.cwd(), checkout)

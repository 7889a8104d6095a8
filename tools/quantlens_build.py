"""The build backend: setuptools, run on a temporary copy of what the wheel is built from.

setuptools builds in the project folder: `pip install .` would leave ``build/`` and
``quantlens.egg-info/`` in the user's checkout. Building the wheel and its metadata from a
copy of the sources (and answering pip's question of what the build needs, which setuptools
does by writing the egg-info) leaves the checkout as it was. An editable install (``pip
install -e .``, the Makefile's) must point at the checkout itself, and an sdist is made of
the checkout's files, so both run setuptools in place, unchanged.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from setuptools import build_meta
from setuptools.build_meta import (
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
)

__all__ = [
    "build_editable", "build_sdist", "build_wheel", "get_requires_for_build_editable",
    "get_requires_for_build_sdist", "get_requires_for_build_wheel",
    "prepare_metadata_for_build_editable", "prepare_metadata_for_build_wheel",
]

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    """What the wheel's build needs; setuptools finds it by running ``egg_info``."""
    with _copy_of_sources(Path.cwd()):
        return build_meta.get_requires_for_build_wheel(config_settings)


def build_wheel(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                metadata_directory: str | None = None) -> str:
    """The wheel, into ``wheel_directory``."""
    return _in_copy(build_meta.build_wheel, wheel_directory, config_settings,
                    None if metadata_directory is None else os.path.abspath(metadata_directory))


def prepare_metadata_for_build_wheel(metadata_directory: str,
                                     config_settings: dict[str, Any] | None = None) -> str:
    """The wheel's .dist-info, into ``metadata_directory``."""
    return _in_copy(build_meta.prepare_metadata_for_build_wheel, metadata_directory,
                    config_settings)


def _in_copy(hook: Callable[..., str], directory: str, *rest: Any) -> str:
    """Run ``hook`` in a copy of the sources; its output ``directory`` stays where pip asked."""
    directory = os.path.abspath(directory)
    with _copy_of_sources(Path.cwd()):
        return hook(directory, *rest)


@contextmanager
def _copy_of_sources(project: Path) -> Iterator[None]:
    """Work in a temporary copy of pyproject.toml, its readme and its package folders.

    The folders are those of the ``package-dir`` map; the copy is the working directory
    while it exists.
    """
    config = tomllib.loads((project / "pyproject.toml").read_text(encoding="utf-8"))
    folders = config["tool"]["setuptools"]["package-dir"].values()
    with tempfile.TemporaryDirectory(prefix="quantlens-build-") as tmp:
        copy = Path(tmp)
        for name in ("pyproject.toml", config["project"]["readme"]):
            shutil.copy2(project / name, copy / name)
        for folder in folders:
            shutil.copytree(project / folder, copy / folder,
                            ignore=shutil.ignore_patterns("__pycache__"))
        os.chdir(copy)
        try:
            yield
        finally:
            os.chdir(project)

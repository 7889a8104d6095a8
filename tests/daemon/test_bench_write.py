"""`--write BENCHMARKS.md` of the two benches: each replaces only its own part of the file.

bench/run.py owns the head (up to the first `## ` heading it did not write), bench/lsp.py the
"## Language server" section; the benches themselves are not run (they take long).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run() -> ModuleType:
    return _load("run")


@pytest.fixture(scope="module")
def lsp() -> ModuleType:
    return _load("lsp")


LSP_PART = "## Language server\n\nserver table\n| a | b |\n"
OTHER_PART = "## Something else\n\nkept as it is\n"


def test_the_head_is_replaced_and_every_other_section_kept(run: ModuleType) -> None:
    old = "# Benchmarks\n\nold table\n\n" + LSP_PART + "\n" + OTHER_PART
    new = run.replace_head(old, "# Benchmarks\n\nnew table\n")
    assert new == "# Benchmarks\n\nnew table\n\n" + LSP_PART + "\n" + OTHER_PART


def test_a_file_without_other_sections_is_the_head_alone(run: ModuleType) -> None:
    assert run.replace_head("# Benchmarks\n\nold\n", "# Benchmarks\n\nnew\n\n\n") == "# Benchmarks\n\nnew\n"
    assert run.replace_head("", "# Benchmarks\n") == "# Benchmarks\n"


def test_a_section_the_head_writes_itself_is_replaced_not_kept(run: ModuleType) -> None:
    old = "# Benchmarks\n\nold\n\n## Memory\n\nold memory\n\n" + LSP_PART
    new = run.replace_head(old, "# Benchmarks\n\nnew\n\n## Memory\n\nnew memory\n")
    assert new == "# Benchmarks\n\nnew\n\n## Memory\n\nnew memory\n\n" + LSP_PART
    assert "old" not in new


def test_the_real_file_keeps_the_language_server_section(run: ModuleType) -> None:
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    server = text[text.index("## Language server"):]
    new = run.replace_head(text, "# Benchmarks\n\nrerun\n")
    assert new == "# Benchmarks\n\nrerun\n\n" + server


def test_the_two_writers_leave_each_other_alone(run: ModuleType, lsp: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(run.replace_head("", "# Benchmarks\n\nfirst\n"), encoding="utf-8")
    lsp.write_section(path, "## Language server\n\nserver, first\n")
    path.write_text(run.replace_head(path.read_text(encoding="utf-8"), "# Benchmarks\n\nsecond\n"), encoding="utf-8")
    lsp.write_section(path, "## Language server\n\nserver, second\n")
    assert path.read_text(encoding="utf-8") == "# Benchmarks\n\nsecond\n\n## Language server\n\nserver, second\n"
    path.write_text(path.read_text(encoding="utf-8") + "\n" + OTHER_PART, encoding="utf-8")
    lsp.write_section(path, "## Language server\n\nserver, third\n")
    assert path.read_text(encoding="utf-8") == ("# Benchmarks\n\nsecond\n\n## Language server\n\nserver, third\n\n"
                                                + OTHER_PART)

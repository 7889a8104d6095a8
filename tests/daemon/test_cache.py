"""The daemon's content-addressed cache: which files a project reads, when its key changes
(and when it must not), and entries that survive crashes, corruption and a size bound."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest

import quantlens.core
from quantlens.core.config import load_config
from quantlens.daemon.cache import (
    SCHEMA,
    STALE_TEMP_SECONDS,
    TEMP_PREFIX,
    Cache,
    file_digest,
    project_inputs,
)

KEY_A = "a" * 64
KEY_B = "b" * 64

# A project whose model imports a helper module, a package (relative imports inside), a
# namespace package and a file that does not parse; the data and validation functions import
# helpers of their own.
PROJECT_FILES = {
    "model.py": (
        "import math\nimport os\nimport torch\nfrom torch import nn\nimport blocks\n"
        "from pkg import layers\nimport ns.deep\n\ndef build_model():\n    return nn.Identity()\n"
    ),
    "blocks.py": "from pkg.util import act\nfrom broken import thing\n",
    "broken.py": "import hidden\ndef oops(:\n",
    "hidden.py": "VALUE = 1\n",
    "unused.py": "VALUE = 2\n",
    "os.py": "# shadows the standard library: never what the analysis runs\n",
    "pkg/__init__.py": "from . import util\n",
    "pkg/util.py": "import numpy as np\n\ndef act(x):\n    return x\n",
    "pkg/layers.py": "from .base import Base\n",
    "pkg/base.py": "class Base:\n    pass\n",
    "ns/deep.py": "DEEP = 1\n",
    "data.py": (
        "import math\nfrom datagen import make\n\ndef batches():\n    yield make()\n\n"
        "def other_batches():\n    yield make()\n"
    ),
    "datagen.py": "def make():\n    return 0\n",
    "val/check.py": "import valhelp\n\ndef val_batches():\n    yield valhelp.pair()\n",
    "val/valhelp.py": "def pair():\n    return 0, 0\n",
}
READ = {
    "quantlens.toml", "model.py", "blocks.py", "broken.py", "pkg/__init__.py", "pkg/util.py",
    "pkg/layers.py", "pkg/base.py", "ns/deep.py", "data.py", "datagen.py", "val/check.py",
    "val/valhelp.py", "weights.pt",
}
BASE_SETTINGS = {
    "data_function": "batches",
    "device": '"cpu"',
    "batches": "4",
    "z_threshold": "8.0",
    "activation_n_bits": "8",
    "weights_n_bits": "8",
    "method": '"MSE"',
    "ignore": "[]",
    "override_bits": "16",
    "zscore_rule": "5.0",
    "concat_ratio": "16.0",
}


def _config_text(**changes: str) -> str:
    s = {**BASE_SETTINGS, **changes}
    return (
        "[quantlens]\n"
        'model = "model.py:build_model"\n'
        f'data = "data.py:{s["data_function"]}"\n'
        'validation = "val/check.py:val_batches"\n'
        'weights = "weights.pt"\n'
        f'device = {s["device"]}\n'
        f'num_calibration_batches = {s["batches"]}\n'
        f'z_threshold = {s["z_threshold"]}\n'
        f'activation_n_bits = {s["activation_n_bits"]}\n'
        f'weights_n_bits = {s["weights_n_bits"]}\n'
        f'activation_error_method = {s["method"]}\n'
        f'ignore = {s["ignore"]}\n\n'
        "[quantlens.overrides.fc]\n"
        f'activation_n_bits = {s["override_bits"]}\n\n'
        "[quantlens.diagnosis]\n"
        f'threshold_zscore_outlier_removal = {s["zscore_rule"]}\n'
        f'threshold_ratio_unbalanced_concatenation = {s["concat_ratio"]}\n'
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    for name, text in PROJECT_FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    (root / "weights.pt").write_bytes(bytes(range(256)) * 8)
    (root / "quantlens.toml").write_text(_config_text(), encoding="utf-8")
    return root


def _key(root: Path) -> str:
    return project_inputs(load_config(root)).key


def _append(name: str, text: str = "\n# edited\n") -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        with open(root / name, "a", encoding="utf-8") as f:
            f.write(text)
    return edit


def _reconfigure(**changes: str) -> Callable[[Path], None]:
    def edit(root: Path) -> None:
        (root / "quantlens.toml").write_text(_config_text(**changes), encoding="utf-8")
    return edit


# --- inputs -----------------------------------------------------------------------------


def test_files_are_the_local_modules_each_function_imports_and_nothing_else(project: Path) -> None:
    files = project_inputs(load_config(project)).files
    assert {p.relative_to(project).as_posix() for p in files} == READ
    assert all(p.is_absolute() for p in files)
    assert list(files) == sorted(files)


def test_installed_packages_and_quantlens_itself_are_never_inputs(tmp_path: Path) -> None:
    site = tmp_path / "env" / "lib" / "site-packages"
    site.mkdir(parents=True)
    (site / "model.py").write_text("import six\nfrom core import settings\n\ndef build():\n    pass\n")
    (site / "six.py").write_text("X = 1\n")
    root = tmp_path / "proj"
    root.mkdir()
    (root / "core").symlink_to(Path(quantlens.core.__file__).resolve().parent)
    (root / "data.py").write_text("from core import config\n\ndef batches():\n    yield 0\n")
    (root / "quantlens.toml").write_text(
        '[quantlens]\nmodel = "../env/lib/site-packages/model.py:build"\ndata = "data.py:batches"\n')
    files = set(project_inputs(load_config(root)).files)
    # The configured model file is read, so it is watched; what it imports from there is not.
    assert files == {site / "model.py", root / "data.py", root / "quantlens.toml"}


def test_key_is_stable_across_processes_and_the_module_never_imports_torch(project: Path) -> None:
    script = (
        "import sys\nfrom pathlib import Path\nfrom quantlens.core.config import load_config\n"
        "from quantlens.daemon.cache import project_inputs\n"
        f"print(project_inputs(load_config(Path({str(project)!r}))).key)\nprint('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    key, torch_loaded = out.split()
    assert key == _key(project) == _key(project)
    assert len(key) == 64 and int(key, 16) >= 0
    assert torch_loaded == "False"


@pytest.mark.parametrize("edit", [
    pytest.param(_append("model.py"), id="model file"),
    pytest.param(_append("blocks.py"), id="imported helper"),
    pytest.param(_append("pkg/base.py"), id="helper of a helper (relative import)"),
    pytest.param(_append("broken.py"), id="file that does not parse"),
    pytest.param(_append("ns/deep.py"), id="namespace package module"),
    pytest.param(_append("data.py"), id="data file"),
    pytest.param(_append("datagen.py"), id="data helper"),
    pytest.param(_append("val/valhelp.py"), id="validation helper"),
    pytest.param(lambda root: (root / "weights.pt").write_bytes(b"\x01" * 2048), id="weights"),
    pytest.param(lambda root: (root / "datagen.py").unlink(), id="helper deleted"),
    pytest.param(_reconfigure(batches="5"), id="num_calibration_batches"),
    pytest.param(_reconfigure(device='"cuda"'), id="device"),
    pytest.param(_reconfigure(data_function="other_batches"), id="data function name"),
])
def test_key_changes_with_what_the_forward_pass_reads(project: Path, edit: Callable[[Path], None]) -> None:
    before = _key(project)
    edit(project)
    assert _key(project) != before


@pytest.mark.parametrize("edit", [
    pytest.param(_reconfigure(z_threshold="3.0"), id="z_threshold"),
    pytest.param(_reconfigure(activation_n_bits="4"), id="activation_n_bits"),
    pytest.param(_reconfigure(weights_n_bits="6"), id="weights_n_bits"),
    pytest.param(_reconfigure(method='"KL"'), id="error method"),
    pytest.param(_reconfigure(override_bits="4"), id="overrides"),
    pytest.param(_reconfigure(zscore_rule="3.0", concat_ratio="8.0"), id="diagnosis settings"),
    pytest.param(_reconfigure(ignore='["outliers-iqr"]'), id="ignore"),
    pytest.param(_append("quantlens.toml", "# a comment\n"), id="config comment"),
    pytest.param(_append("unused.py"), id="file nobody imports"),
    pytest.param(_append("hidden.py"), id="import of a file that does not parse"),
    pytest.param(lambda root: os.utime(root / "blocks.py", (1e9, 1e9)), id="mtime alone"),
])
def test_key_ignores_what_is_rederived_from_statistics(project: Path, edit: Callable[[Path], None]) -> None:
    before = project_inputs(load_config(project))
    edit(project)
    after = project_inputs(load_config(project))
    assert after.key == before.key
    assert after.files == before.files


def test_digest_streams_a_large_file(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(3 * (1 << 20) + 5)
    path = tmp_path / "weights.pt"
    path.write_bytes(data)
    assert file_digest(path) == hashlib.sha256(data).hexdigest()
    assert file_digest(tmp_path / "absent.pt") == "missing"


def test_digest_memo_trusts_mtime_and_size(project: Path) -> None:
    """Known limit (dmypy's): a same-size rewrite whose mtime is forced back is not seen."""
    helper = project / "blocks.py"
    before_key, before_digest = _key(project), file_digest(helper)
    stat = helper.stat()
    text = helper.read_text()
    helper.write_text(text.replace("act", "ACT"))
    os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert helper.stat().st_size == stat.st_size
    assert file_digest(helper) == before_digest
    assert _key(project) == before_key
    os.utime(helper, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert file_digest(helper) == hashlib.sha256(text.replace("act", "ACT").encode()).hexdigest()
    assert _key(project) != before_key


# --- entries ----------------------------------------------------------------------------


def _entries(cache: Cache) -> list[Path]:
    return sorted(p for p in cache.folder.iterdir() if p.name != ".gitignore")


def _store_and_find(cache: Cache, key: str, payload: bytes) -> Path:
    existing = set(_entries(cache)) if cache.folder.exists() else set()
    cache.store(key, payload)
    (path,) = set(_entries(cache)) - existing
    return path


def _entry_bytes(**fields: object) -> bytes:
    payload = b"statistics"
    entry = {"schema": SCHEMA, "key": KEY_A, "payload": payload, "digest": hashlib.sha256(payload).hexdigest()}
    return msgpack.packb({**entry, **fields}, use_bin_type=True)


def test_round_trip(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    payload = random.Random(1).randbytes(100_000)
    assert cache.load(KEY_A) is None and cache.last_discarded is None
    path = _store_and_find(cache, KEY_A, payload)
    cache.store(KEY_B, b"")
    assert cache.load(KEY_A) == payload
    assert cache.load(KEY_B) == b""
    assert cache.last_discarded is None
    assert path.parent == tmp_path / ".quantlens" / "cache"
    assert (path.parent / ".gitignore").read_text() == "*\n"
    assert msgpack.unpackb(path.read_bytes()) == {
        "schema": SCHEMA, "key": KEY_A, "payload": payload, "digest": hashlib.sha256(payload).hexdigest(),
    }


def test_store_writes_a_temp_file_then_replaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(tmp_path)
    cache.store(KEY_A, b"old")
    seen: list[tuple[Path, Path, bytes, bytes]] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append((Path(src), Path(dst), Path(src).read_bytes(), Path(dst).read_bytes()))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    cache.store(KEY_A, b"new")
    ((src, dst, src_bytes, dst_bytes),) = seen
    assert src.parent == dst.parent == cache.folder and src.name.startswith(TEMP_PREFIX) and src != dst
    assert msgpack.unpackb(src_bytes)["payload"] == b"new"  # complete before it is renamed
    assert msgpack.unpackb(dst_bytes)["payload"] == b"old"  # readers saw the whole old entry
    assert [p.name for p in _entries(cache)] == [dst.name]
    assert cache.load(KEY_A) == b"new"


def test_failed_store_leaves_no_temp_file_and_the_old_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(tmp_path)
    cache.store(KEY_A, b"old")

    def full(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError):
        cache.store(KEY_A, b"new")
    monkeypatch.undo()
    assert len(_entries(cache)) == 1
    assert cache.load(KEY_A) == b"old"


def test_eviction_drops_least_recently_used_entries_beyond_the_bound(tmp_path: Path) -> None:
    payload = bytes(1000)
    size = _store_and_find(Cache(tmp_path / "scratch"), KEY_A, payload).stat().st_size
    cache = Cache(tmp_path, max_bytes=3 * size + size // 2)
    keys = [f"{i:064x}" for i in range(5)]
    paths = {key: _store_and_find(cache, key, payload) for key in keys[:3]}
    for age, key in enumerate(keys[:3]):
        os.utime(paths[key], (1000 + age, 1000 + age))
    assert cache.load(keys[0]) == payload  # now the most recently used
    paths[keys[3]] = _store_and_find(cache, keys[3], payload)
    assert set(_entries(cache)) == {paths[keys[0]], paths[keys[2]], paths[keys[3]]}
    os.utime(paths[keys[3]], (5000, 5000))
    os.utime(paths[keys[0]], (4000, 4000))
    paths[keys[4]] = _store_and_find(cache, keys[4], payload)
    assert set(_entries(cache)) == {paths[keys[0]], paths[keys[3]], paths[keys[4]]}
    assert sum(p.stat().st_size for p in _entries(cache)) <= cache.max_bytes


def test_the_entry_just_written_is_never_evicted(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_bytes=1)
    cache.store(KEY_A, b"first")
    cache.store(KEY_B, b"second")
    assert len(_entries(cache)) == 1
    assert cache.load(KEY_B) == b"second"
    assert cache.load(KEY_A) is None


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    cache.store(KEY_A, b"x")
    stale, fresh = cache.folder / f"{TEMP_PREFIX}dead.part", cache.folder / f"{TEMP_PREFIX}busy.part"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    old = stale.stat().st_mtime - STALE_TEMP_SECONDS - 10
    os.utime(stale, (old, old))
    cache.store(KEY_B, b"y")
    assert not stale.exists() and fresh.exists()


def _truncations() -> list[object]:
    whole = _entry_bytes()
    offsets = (0, 1, 2, 30, len(whole) // 2, len(whole) - 1)
    return [pytest.param(whole[:n], "not msgpack", id=f"truncated at {n}") for n in offsets]


def _foreign() -> list[object]:
    digest = hashlib.sha256(b"statistics").hexdigest()
    flipped = bytearray(_entry_bytes())
    at = flipped.find(b"statistics") + 4
    flipped[at] ^= 0x01
    return [
        pytest.param(msgpack.packb([1, 2, 3]), "not a cache entry", id="a list"),
        pytest.param(msgpack.packb(7), "not a cache entry", id="an int"),
        pytest.param(msgpack.packb({"schema": SCHEMA}), "not a cache entry", id="missing fields"),
        pytest.param(_entry_bytes(extra=1), "not a cache entry", id="extra field"),
        pytest.param(_entry_bytes(payload="statistics", digest=digest), "not a cache entry", id="payload not bin"),
        pytest.param(_entry_bytes(schema=SCHEMA + 1), "schema", id="other schema"),
        pytest.param(_entry_bytes(key=KEY_B), "key mismatch", id="other key"),
        pytest.param(bytes(flipped), "digest mismatch", id="flipped payload byte"),
        *[pytest.param(random.Random(seed).randbytes(16 + seed * 37), "", id=f"random bytes {seed}")
          for seed in range(12)],
    ]


@pytest.mark.parametrize(("content", "reason"), [*_truncations(), *_foreign()])
def test_a_bad_entry_is_deleted_and_reported(tmp_path: Path, content: bytes, reason: str) -> None:
    cache = Cache(tmp_path)
    path = _store_and_find(cache, KEY_A, b"statistics")
    path.write_bytes(content)
    assert cache.load(KEY_A) is None
    assert not path.exists()
    assert cache.last_discarded is not None and reason in cache.last_discarded
    cache.store(KEY_A, b"statistics")
    assert cache.load(KEY_A) == b"statistics" and cache.last_discarded is None


def test_a_directory_in_place_of_an_entry_is_removed(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    path = _store_and_find(cache, KEY_A, b"statistics")
    path.unlink()
    path.mkdir()
    (path / "inside").write_bytes(b"x")
    assert cache.load(KEY_A) is None
    assert not path.exists() and cache.last_discarded is not None and "unreadable" in cache.last_discarded
    cache.store(KEY_A, b"again")
    assert cache.load(KEY_A) == b"again"


def test_an_unreadable_entry_is_a_miss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = Cache(tmp_path)
    path = _store_and_find(cache, KEY_A, b"statistics")

    def denied(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert cache.load(KEY_A) is None
    monkeypatch.undo()
    assert not path.exists() and cache.last_discarded is not None and "Permission denied" in cache.last_discarded


def test_load_refreshes_the_entry_mtime(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    path = _store_and_find(cache, KEY_A, b"statistics")
    os.utime(path, (1000, 1000))
    assert cache.load(KEY_A) == b"statistics"
    assert path.stat().st_mtime > 1000

"""Content-addressed cache of what a forward pass produced, for the daemon.

Calibration is the slow part of an analysis (a torch forward pass over the whole dataset);
thresholds, predictions and findings are re-derived from its statistics with numpy in
milliseconds. So the key names everything the forward pass reads (the model factory's file
and the local modules it imports, the data function's file and its imports, the
validation / evaluate / metrics files, the checkpoint, and the settings that change what is
collected), and deliberately not the quantization or diagnosis settings: editing
``z_threshold`` must hit the cache. ``Inputs.files`` is also the list the watcher watches, so
it must be complete.

Import following is static (``ast``): a module loaded with ``importlib.import_module`` or
``__import__`` by a computed name is not seen.

Entries are msgpack (never pickle), written atomically, checked on every load (schema, key,
payload digest) and bounded in total size. This module never imports torch: the language
server imports it.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TypeVar

import msgpack

import quantlens.core
from quantlens.core.config import FuncRef, ProjectConfig

SCHEMA = 1
"""Version of the key recipe and of the entry format; bump it when either changes."""

CHUNK_BYTES = 1 << 20
ENTRY_SUFFIX = ".qlc"
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 3600.0
"""A temp file this old was left by a writer that died; eviction removes it."""

_ENTRY_FIELDS = frozenset({"schema", "key", "payload", "digest"})
_FOREIGN_PARTS = frozenset({"site-packages", "dist-packages"})
_OWN_PACKAGES = (Path(quantlens.core.__file__).resolve().parent, Path(__file__).resolve().parent)

_Stamp = tuple[int, int]
_T = TypeVar("_T")

# Per-process memos, one slot per path: (st_mtime_ns, st_size) -> value (dmypy's trick), so an
# unchanged file is neither re-read nor re-parsed. Known limit: a rewrite that keeps the size
# and whose mtime is forced back (os.utime) keeps the old digest.
_DIGESTS: dict[Path, tuple[_Stamp, str]] = {}
_IMPORTS: dict[Path, tuple[_Stamp, tuple[_Import, ...]]] = {}


@dataclass(frozen=True)
class Inputs:
    """What one analysis reads: the cache key and the files to watch."""

    key: str
    files: tuple[Path, ...]


@dataclass(frozen=True)
class _Import:
    """One import statement, reduced to what resolution needs."""

    level: int
    """0 for an absolute import, else the number of leading dots."""
    module: tuple[str, ...]
    """The dotted module name (empty for ``from . import x``)."""
    names: tuple[str, ...]
    """Names of ``from module import a, b`` (each may be a submodule); empty for ``import``."""


def project_inputs(config: ProjectConfig) -> Inputs:
    """Every file the analysis of ``config`` reads, and the key of its calibration statistics."""
    roots = tuple(config.roots)
    refs = _function_refs(config)
    files: set[Path] = set()
    for _, ref in refs:
        files |= _local_closure(ref.path.resolve(), roots)
    files.update(p.resolve() for p in (config.weights, config.config_file) if p is not None)
    ordered = tuple(sorted(files))
    return Inputs(_key(config, ordered, refs), ordered)


def file_digest(path: Path) -> str:
    """sha256 of the file's content, read in 1 MiB chunks (checkpoints can be large) and
    memoised on (mtime, size); ``"missing"`` when it cannot be read."""
    digest = _memoised(_DIGESTS, path, _hash_file)
    return "missing" if digest is None else digest


class Cache:
    """Entries ``key -> payload`` under ``root/.quantlens/cache``, at most ``max_bytes`` in all.

    ``load`` never raises: an entry that is unreadable, truncated, foreign or tampered with is
    deleted and reported in ``last_discarded`` (None when the latest ``load`` discarded
    nothing), so the server logs it and recomputes. ``store`` raises OSError when the entry
    cannot be written (disk full, read-only folder); an older entry is then left intact.
    """

    def __init__(self, root: Path, max_bytes: int = 512 << 20) -> None:
        self.folder = Path(root) / ".quantlens" / "cache"
        self.max_bytes = max_bytes
        self.last_discarded: str | None = None

    def store(self, key: str, payload: bytes) -> None:
        """Write the entry atomically (a reader sees the old entry or the new one, never part
        of one), then evict the least recently used entries beyond ``max_bytes``."""
        self._prepare_folder()
        target = self._entry_path(key)
        entry = {"schema": SCHEMA, "key": key, "payload": payload, "digest": _sha256(payload)}
        _write_atomically(target, msgpack.packb(entry, use_bin_type=True))
        self._evict(keep=target.name)

    def load(self, key: str) -> bytes | None:
        """The payload stored under ``key``, or None; a hit refreshes the entry's mtime (LRU)."""
        self.last_discarded = None
        path = self._entry_path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            return self._discard(path, f"unreadable ({exc.strerror or exc})")
        payload, reason = _open_entry(blob, key)
        if payload is None:
            return self._discard(path, reason)
        with contextlib.suppress(OSError):
            os.utime(path)
        return payload

    def _entry_path(self, key: str) -> Path:
        # Named by a hash of the key, so no key can name a path outside the folder.
        return self.folder / (hashlib.sha256(key.encode()).hexdigest() + ENTRY_SUFFIX)

    def _prepare_folder(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        ignore = self.folder / ".gitignore"
        with contextlib.suppress(FileExistsError), open(ignore, "x", encoding="utf-8") as f:
            f.write("*\n")

    def _discard(self, path: Path, reason: str) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        self.last_discarded = f"{path.name}: {reason}"

    def _evict(self, keep: str) -> None:
        entries: list[tuple[int, str, int]] = []
        now = time.time()
        for item in os.scandir(self.folder):
            try:
                stat = item.stat(follow_symlinks=False)
            except OSError:
                continue
            if item.name.startswith(TEMP_PREFIX):
                if now - stat.st_mtime > STALE_TEMP_SECONDS:
                    _remove_quietly(item.path)
            elif item.name.endswith(ENTRY_SUFFIX) and item.is_file(follow_symlinks=False):
                entries.append((stat.st_mtime_ns, item.name, stat.st_size))
        total = sum(size for _, _, size in entries)
        for _, name, size in sorted(entries):
            if total <= self.max_bytes:
                break
            if name != keep and _remove_quietly(self.folder / name):
                total -= size


def _open_entry(blob: bytes, key: str) -> tuple[bytes | None, str]:
    """The payload of a well-formed entry for ``key``, else None and why."""
    try:
        entry = msgpack.unpackb(blob, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        return None, f"not msgpack ({type(exc).__name__})"
    if not isinstance(entry, dict) or set(entry) != _ENTRY_FIELDS:
        return None, "not a cache entry"
    if entry["schema"] != SCHEMA:
        return None, f"schema {entry['schema']!r}, expected {SCHEMA}"
    if entry["key"] != key:
        return None, "key mismatch"
    payload = entry["payload"]
    if not isinstance(payload, bytes):
        return None, "not a cache entry (payload is not binary)"
    if entry["digest"] != _sha256(payload):
        return None, "digest mismatch"
    return payload, ""


def _write_atomically(target: Path, blob: bytes) -> None:
    """Temp file in the same folder (same file system), fsync, then ``os.replace``."""
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        _remove_quietly(temp)
        raise


def _remove_quietly(path: str | Path) -> bool:
    """Unlink; False when it could not be removed (another process may hold the folder too)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _key(config: ProjectConfig, files: tuple[Path, ...], refs: list[tuple[str, FuncRef]]) -> str:
    """sha256 of a canonical JSON record of everything that changes the statistics.

    The config file is watched but not hashed: its quantization and diagnosis settings do not
    change the statistics, and the parts that do are hashed as the parsed values below.
    """
    root = config.root
    hashed = (p for p in files if config.config_file is None or p != config.config_file.resolve())
    record = {
        "schema": SCHEMA,
        "quantlens": _quantlens_version(),
        "files": sorted([_relative(p, root), file_digest(p)] for p in hashed),
        "functions": [[role, _relative(ref.path, root), ref.function] for role, ref in refs],
        "weights": _relative(config.weights, root) if config.weights is not None else None,
        "device": config.device,
        "num_calibration_batches": config.num_calibration_batches,
        "num_simulation_batches": config.num_simulation_batches,  # the measurements stored beside
    }
    return _sha256(json.dumps(record, sort_keys=True, separators=(",", ":")).encode())


@cache
def _quantlens_version() -> str:
    try:
        return importlib.metadata.version("quantlens")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _relative(path: Path, root: Path) -> str:
    """Relative to the project root, so moving the whole project keeps its keys."""
    try:
        return Path(os.path.relpath(path, root)).as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def _function_refs(config: ProjectConfig) -> list[tuple[str, FuncRef]]:
    refs = [("model", config.model), ("data", config.data)]
    optional = (("validation", config.validation), ("evaluate", config.evaluate))
    refs += [(role, ref) for role, ref in optional if ref is not None]
    refs += [("metrics", ref) for ref in config.metrics]
    return refs


def _local_closure(entry: Path, roots: tuple[Path, ...]) -> set[Path]:
    """``entry`` and the local files it imports, recursively.

    Absolute imports resolve against the entry's folder, then the roots: the ``sys.path``
    that ``loading.import_file`` sets up while the entry (and so all it imports) runs.
    """
    search = tuple(dict.fromkeys([entry.parent, *roots]))
    seen = {entry}
    todo = [entry]
    while todo:
        current = todo.pop()
        for statement in _memoised(_IMPORTS, current, _parse_imports) or ():
            for found in _resolve(statement, current, search):
                if found not in seen:
                    seen.add(found)
                    todo.append(found)
    return seen


def _parse_imports(path: Path) -> tuple[_Import, ...]:
    """Every import statement anywhere in the file; none when it does not parse."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, RecursionError):
        return ()
    statements: list[_Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            statements += [_Import(0, tuple(alias.name.split(".")), ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = tuple(node.module.split(".")) if node.module else ()
            names = tuple(alias.name for alias in node.names if alias.name != "*")
            statements.append(_Import(node.level, module, names))
    return tuple(statements)


def _resolve(statement: _Import, current: Path, search: tuple[Path, ...]) -> list[Path]:
    """The local files an import statement executes: each package's ``__init__.py`` on the
    way down, the module, and the submodules among the from-imported names."""
    if statement.level:
        if statement.level > len(current.parents):
            return []
        base = current.parents[statement.level - 1]
        files: list[Path] = [base / "__init__.py"]
        folders: list[Path] = [base]
    else:
        if not statement.module or statement.module[0] in sys.stdlib_module_names:
            return []
        files, folders = [], list(search)
    for part in statement.module:
        found, folders = _find_module(part, folders)
        files += [found] if found else []
    for name in statement.names:
        files += [found for found in [_find_module(name, folders)[0]] if found]
    resolved = (f.resolve() for f in files if f.is_file())
    return [f for f in resolved if _is_local(f, search)]


def _find_module(name: str, folders: Iterable[Path]) -> tuple[Path | None, list[Path]]:
    """Python's path-finder order: the first folder holding a package or a module wins; a bare
    folder is a namespace portion, used only when no folder holds a regular one. Returns the
    file that runs (if any) and the folders that submodules are looked up in."""
    portions: list[Path] = []
    for folder in folders:
        package = folder / name
        if (package / "__init__.py").is_file():
            return package / "__init__.py", [package]
        if (folder / f"{name}.py").is_file():
            return folder / f"{name}.py", []
        if package.is_dir():
            portions.append(package)
    return None, portions


def _is_local(path: Path, search: tuple[Path, ...]) -> bool:
    """Under a project root, and neither an installed package nor quantlens itself."""
    if _FOREIGN_PARTS.intersection(path.parts) or any(path.is_relative_to(p) for p in _OWN_PACKAGES):
        return False
    return any(path.is_relative_to(folder) for folder in search)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _memoised(table: dict[Path, tuple[_Stamp, _T]], path: Path, compute: Callable[[Path], _T]) -> _T | None:
    """``compute(path)``, reused while the file's (mtime, size) stays; None when it cannot be
    read (not memoised, so a file that becomes readable is picked up)."""
    try:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        hit = table.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        value = compute(path)
    except OSError:
        return None
    table[path] = (stamp, value)
    return value

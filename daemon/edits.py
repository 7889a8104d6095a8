"""Text edits behind the quick fixes: set a key in the quantlens config, ignore a rule on a line.

A quick fix must change one value and keep everything else of the user's file byte for byte
(comments, spacing, key order, CRLF line endings), so the config is never re-serialised: a small
TOML scanner finds where each key and table is written and the change is spliced into the text.
The result is parsed back with ``tomllib`` before an edit is offered, so a file layout the
scanner does not foresee gives no edit (``ValueError``) rather than a broken config.

Pure text: positions are 0-based lines and Python string indices; the language server converts
them to LSP positions.
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from quantlens.core.diagnosis import _IGNORE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KeyPath = tuple[str, ...]
"""A key path: ``("tool", "quantlens", "overrides", "blocks.1.mlp.fc2")``."""

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:[^\s,\]}#]*|[^\s,\]}#]+")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
_MISSING = object()
_WORD = re.compile(r"[\w.+-]")


@dataclass(frozen=True)
class TextEdit:
    """Replace the text from (start_line, start_char) to (end_line, end_char) with new_text."""

    start_line: int
    start_char: int
    end_line: int
    end_char: int
    new_text: str


# --- public API ---------------------------------------------------------------------------------


def set_config_value(text: str, table: str, key: str, value: Any) -> list[TextEdit]:
    """Edits that make ``key = value`` hold in the quantlens table of a config file.

    ``table`` is ``"quantlens"`` (quantlens.toml) or ``"tool.quantlens"`` (pyproject.toml);
    ``key`` is a key of ``Recommendation.config``, dotted for sub-tables
    (``overrides."blocks.1.mlp.fc2"``). An empty list when the file already has the value.
    Raises ValueError when the file is not valid TOML or the key cannot be set in it.
    """
    return set_config_values(text, table, {key: value})


def set_config_values(text: str, table: str, changes: Mapping[str, Any]) -> list[TextEdit]:
    """Edits for several keys at once (one recommendation may change several): the keys are
    set one after the other, and the edits are the difference to the original text, so they
    never overlap even when two keys go to the same place."""
    data = _parse(text)
    base = _base(data, table)
    new = text
    for key, value in changes.items():
        path = base + parse_key(key)
        if not _contains(_lookup(_parse(new), path), value):
            new = _set(new, base, path, value)
    check = _parse(new)
    for key, value in changes.items():
        if not _contains(_lookup(check, base + parse_key(key)), value):
            raise ValueError(f"could not set {key} in the {table} table")
    return _diff(text, new)


def config_has(text: str, table: str, key: str, value: Any) -> bool:
    """Whether the config already says ``key = value`` (for a table value: every entry of it)."""
    data = _parse(text)
    return _contains(_lookup(data, _base(data, table) + parse_key(key)), value)


def add_ignore_comment(line_text: str, line: int, rule: str) -> TextEdit | None:
    """The edit that makes ``# quantlens: ignore[...]`` on this line name ``rule``.

    An existing ignore comment gets the rule added to its list; otherwise the comment is
    appended to the line (after any other comment: the suppression reader searches the whole
    line). None when the line already ignores the rule (a bare ``# quantlens: ignore`` ignores
    every rule) or ends in a backslash continuation, where no comment can go.
    """
    content = line_text.rstrip("\r\n")
    match = _IGNORE.search(content)
    if match is not None:
        names = match.group(1)
        if names is None or rule in {name.strip() for name in names.split(",")}:
            return None
        if names.strip():
            return TextEdit(line, match.end(1), line, match.end(1), f", {rule}")
        return TextEdit(line, match.start(1), line, match.end(1), rule)
    code = content.rstrip()
    if code.endswith("\\"):
        return None
    comment = f"# quantlens: ignore[{rule}]"
    if not code:
        return TextEdit(line, len(content), line, len(content), comment)
    return TextEdit(line, len(code), line, len(content), f"  {comment}")


def apply(text: str, edits: Sequence[TextEdit]) -> str:
    """The text after the edits, all positioned on the original text (LSP semantics: edits
    must not overlap; inserts at one position keep their order)."""
    starts = [0] + [i + 1 for i, char in enumerate(text) if char == "\n"]
    spans = sorted(
        ((_offset(text, starts, e.start_line, e.start_char), _offset(text, starts, e.end_line, e.end_char), n, e)
         for n, e in enumerate(edits)),
        key=lambda span: (span[0], span[2]),
    )
    out: list[str] = []
    done = 0
    for start, end, _, edit in spans:
        if start < done or end < start:
            raise ValueError(f"overlapping or reversed edit {edit}")
        out.append(text[done:start])
        out.append(edit.new_text)
        done = end
    out.append(text[done:])
    return "".join(out)


def parse_key(key: str) -> KeyPath:
    """``overrides."blocks.1.mlp.fc2"`` -> ``("overrides", "blocks.1.mlp.fc2")``."""
    parts, end = _key(key, 0)
    if end != len(key):
        raise ValueError(f"not a TOML key: {key!r}")
    return parts


def render_value(value: Any) -> str:
    """A Python value as TOML: ``true``, ``9.0``, ``inf``, ``"MSE"``, ``{activation_n_bits = 16}``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{render_key((str(k),))} = {render_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def render_key(parts: KeyPath) -> str:
    """A key path as TOML, quoting the parts that are not bare keys (``overrides."blocks.1"``)."""
    return ".".join(part if _BARE.fullmatch(part) else _quote(part) for part in parts)


# --- reading values -----------------------------------------------------------------------------


def _parse(text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"invalid TOML: {exc}") from None


def _base(data: dict[str, Any], table: str) -> KeyPath:
    """The quantlens table's path; ``()`` for a quantlens.toml with its keys at the top level
    (the config reader accepts that when there is no ``quantlens`` table)."""
    if table == "quantlens" and "quantlens" not in data:
        return ()
    return tuple(table.split("."))


def _lookup(data: Any, path: KeyPath) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _contains(current: Any, value: Any) -> bool:
    """Whether ``current`` already says ``value``: equal, or for tables every entry equal."""
    if isinstance(value, Mapping):
        return isinstance(current, dict) and all(_contains(current.get(k, _MISSING), v) for k, v in value.items())
    if current is _MISSING or isinstance(current, bool) != isinstance(value, bool):
        return False
    return bool(current == value)


# --- scanning TOML ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    path: KeyPath
    array: bool
    start: int
    """Offset of the header line's start."""
    end: int
    """Offset after the header line's newline."""


@dataclass(frozen=True)
class _Entry:
    path: KeyPath
    """Absolute: the section's path plus the (possibly dotted) key."""
    section: KeyPath
    in_array: bool
    """Written under an ``[[array]]`` header: never the quantlens table."""
    value_start: int
    value_end: int
    line_end: int
    """Offset after the statement's newline (after a trailing comment)."""
    indent: str


@dataclass(frozen=True)
class _Document:
    headers: tuple[_Header, ...]
    entries: tuple[_Entry, ...]

    def live(self) -> list[_Entry]:
        return [e for e in self.entries if not e.in_array]

    def header(self, path: KeyPath) -> _Header | None:
        return next((h for h in self.headers if h.path == path), None)

    def header_touches(self, prefix: KeyPath) -> bool:
        return any(h.path[: len(prefix)] == prefix for h in self.headers)

    def dotted_section(self, prefix: KeyPath) -> KeyPath | None:
        """The section whose dotted keys define the table ``prefix``, if any."""
        for e in self.live():
            if len(e.section) < len(prefix) < len(e.path) and e.path[: len(prefix)] == prefix:
                return e.section
        return None

    def defines_table(self, path: KeyPath) -> bool:
        return self.header_touches(path) or any(
            len(e.path) > len(path) and e.path[: len(path)] == path for e in self.live())


def _scan(text: str) -> _Document:
    """Headers and key/value statements with their offsets (the text is valid TOML)."""
    headers: list[_Header] = []
    entries: list[_Entry] = []
    section: KeyPath = ()
    in_array = False
    i = _skip_trivia(text, 0)
    while i < len(text):
        line_start = text.rfind("\n", 0, i) + 1
        if text[i] == "[":
            in_array = text.startswith("[[", i)
            close = "]]" if in_array else "]"
            section, j = _key(text, i + len(close))
            if not text.startswith(close, j):
                raise ValueError(f"unexpected text at offset {j}")
            end = _line_end(text, j + len(close))
            headers.append(_Header(section, in_array, line_start, end))
        else:
            parts, j = _key(text, i)
            if not text.startswith("=", j):
                raise ValueError(f"expected '=' at offset {j}")
            start = _skip_ws(text, j + 1)
            value_end = _value_end(text, start)
            end = _line_end(text, value_end)
            entries.append(_Entry(section + parts, section, in_array, start, value_end, end, text[line_start:i]))
        i = _skip_trivia(text, end)
    return _Document(tuple(headers), tuple(entries))


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _skip_trivia(text: str, i: int) -> int:
    """Past whitespace, newlines and comments."""
    while True:
        i = _skip_ws(text, i)
        if i < len(text) and text[i] == "#":
            newline = text.find("\n", i)
            i = len(text) if newline < 0 else newline
        elif i < len(text) and text[i] in "\r\n":
            i += 1
        else:
            return i


def _line_end(text: str, i: int) -> int:
    """After a statement: past its trailing comment and newline."""
    i = _skip_ws(text, i)
    if i < len(text) and text[i] == "#":
        newline = text.find("\n", i)
        return len(text) if newline < 0 else newline + 1
    if text.startswith("\r\n", i):
        return i + 2
    if i < len(text) and text[i] != "\n":
        raise ValueError(f"unexpected text at offset {i}")
    return min(i + 1, len(text))


def _key(text: str, i: int) -> tuple[KeyPath, int]:
    """A dotted key starting at ``i`` (after optional spaces): its parts and the offset after it."""
    parts: list[str] = []
    while True:
        i = _skip_ws(text, i)
        if text.startswith('"', i):
            end = _basic_string_end(text, i)
            parts.append(tomllib.loads(f"k = {text[i:end]}")["k"])
        elif text.startswith("'", i):
            end = text.index("'", i + 1) + 1
            parts.append(text[i + 1 : end - 1])
        else:
            match = _BARE.match(text, i)
            if match is None:
                raise ValueError(f"expected a key at offset {i}")
            parts.append(match.group())
            end = match.end()
        i = _skip_ws(text, end)
        if not text.startswith(".", i):
            return tuple(parts), i
        i += 1


def _basic_string_end(text: str, i: int) -> int:
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == '"':
            return j + 1
        else:
            j += 1
    raise ValueError(f"unterminated string at offset {i}")


def _multiline_end(text: str, i: int, quote: str) -> int:
    """End of a ``\"\"\"`` or ``'''`` string (up to two quotes may precede the closing three)."""
    j = i + 3
    while True:
        if quote == '"' and text.startswith("\\", j):
            j += 2
            continue
        if text.startswith(quote * 3, j):
            k = j + 3
            while k < len(text) and k < j + 5 and text[k] == quote:
                k += 1
            return k
        if j >= len(text):
            raise ValueError(f"unterminated string at offset {i}")
        j += 1


def _value_end(text: str, i: int) -> int:
    """Offset just after the value that starts at ``i``."""
    if text.startswith('"""', i) or text.startswith("'''", i):
        return _multiline_end(text, i, text[i])
    if text.startswith('"', i):
        return _basic_string_end(text, i)
    if text.startswith("'", i):
        return text.index("'", i + 1) + 1
    if text.startswith("[", i):
        j = _skip_trivia(text, i + 1)
        while not text.startswith("]", j):
            j = _skip_trivia(text, _value_end(text, j))
            if text.startswith(",", j):
                j = _skip_trivia(text, j + 1)
        return j + 1
    if text.startswith("{", i):
        return _inline(text, i)[1] + 1
    match = _SCALAR.match(text, i)
    if match is None:
        raise ValueError(f"expected a value at offset {i}")
    return match.end()


def _inline(text: str, brace: int) -> tuple[list[tuple[KeyPath, int, int]], int]:
    """The entries of the inline table at ``brace`` (key parts, value start, value end) and the
    offset of its closing brace."""
    entries: list[tuple[KeyPath, int, int]] = []
    j = _skip_trivia(text, brace + 1)
    while not text.startswith("}", j):
        parts, j = _key(text, j)
        if not text.startswith("=", j):
            raise ValueError(f"expected '=' at offset {j}")
        start = _skip_ws(text, j + 1)
        end = _value_end(text, start)
        entries.append((parts, start, end))
        j = _skip_trivia(text, end)
        if text.startswith(",", j):
            j = _skip_trivia(text, j + 1)
        elif not text.startswith("}", j):
            raise ValueError(f"expected ',' or '}}' at offset {j}")
    return entries, j


# --- changing the text --------------------------------------------------------------------------


def _set(text: str, base: KeyPath, path: KeyPath, value: Any) -> str:
    """The text with ``path = value``: the value replaced where it is written (merged into an
    inline table), else the key added to the table that holds its neighbours."""
    doc = _scan(text)
    for entry in doc.live():
        if entry.path == path:
            return _replace_value(text, entry.value_start, entry.value_end, value)
        if len(entry.path) < len(path) and path[: len(entry.path)] == entry.path:
            if not text.startswith("{", entry.value_start):
                raise ValueError(f"{render_key(entry.path)} is not a table")
            return _set_inline(text, entry.value_start, path[len(entry.path) :], value)
    if doc.defines_table(path):
        if not isinstance(value, Mapping):
            raise ValueError(f"{render_key(path)} is a table")
        for key, item in value.items():
            text = _set(text, base, path + (str(key),), item)
        return text
    return _insert(text, doc, base, path, value)


def _replace_value(text: str, start: int, end: int, value: Any) -> str:
    if isinstance(value, Mapping) and text.startswith("{", start):
        for key, item in value.items():
            text = _set_inline(text, start, (str(key),), item)
        return text
    return text[:start] + render_value(value) + text[end:]


def _set_inline(text: str, brace: int, rel: KeyPath, value: Any) -> str:
    """``rel = value`` inside the inline table at ``brace`` (edits only ever follow ``brace``)."""
    entries, close = _inline(text, brace)
    for parts, start, end in entries:
        if parts == rel:
            return _replace_value(text, start, end, value)
        if len(parts) < len(rel) and rel[: len(parts)] == parts:
            if not text.startswith("{", start):
                raise ValueError(f"{render_key(parts)} is not a table")
            return _set_inline(text, start, rel[len(parts) :], value)
    if any(len(parts) > len(rel) and parts[: len(rel)] == rel for parts, _, _ in entries):
        if not isinstance(value, Mapping):
            raise ValueError(f"{render_key(rel)} is a table")
        for key, item in value.items():
            text = _set_inline(text, brace, rel + (str(key),), item)
        return text
    item = f"{render_key(rel)} = {render_value(value)}"
    if not entries:
        return text[:brace] + "{" + item + "}" + text[close + 1 :]
    end = entries[-1][2]
    return text[:end] + ", " + item + text[end:]


def _insert(text: str, doc: _Document, base: KeyPath, path: KeyPath, value: Any) -> str:
    """Add ``path = value`` (absent so far) to the deepest table of ``path`` that exists: the
    section whose dotted keys define it, its own ``[header]``, or a new header for it."""
    newline = "\r\n" if "\r\n" in text else "\n"
    for depth in range(len(path) - 1, len(base) - 1, -1):
        prefix = path[:depth]
        if not prefix:
            return _insert_in_section(text, doc, (), prefix, path, value, newline)
        section = doc.dotted_section(prefix)
        if section is not None:
            return _insert_in_section(text, doc, section, prefix, path, value, newline)
        if doc.header_touches(prefix):
            header = doc.header(prefix)
            if header is None:
                return _new_table(text, doc, prefix, path, value, newline)
            if header.array:
                raise ValueError(f"{render_key(prefix)} is an array of tables")
            return _insert_in_section(text, doc, prefix, prefix, path, value, newline)
    return _new_table(text, doc, base, path, value, newline)


def _insert_in_section(text: str, doc: _Document, section: KeyPath, prefix: KeyPath, path: KeyPath, value: Any,
                       newline: str) -> str:
    """A new line after the last key of ``section`` under ``prefix`` (so a new override lands
    next to the other overrides), else after the section's last key, else after its header."""
    line = f"{render_key(path[len(section):])} = {render_value(value)}"
    entries = [e for e in doc.live() if e.section == section]
    near = [e for e in entries if e.path[: len(prefix)] == prefix] or entries
    if near:
        return _insert_line(text, near[-1].line_end, near[-1].indent + line, newline)
    header = doc.header(section) if section else None
    if header is not None:
        return _insert_line(text, header.end, line, newline)
    if doc.headers:
        at = _comments_above(text, doc.headers[0].start)
        return text[:at] + line + newline + text[at:]
    return _insert_line(text, len(text), line, newline)


def _insert_line(text: str, at: int, line: str, newline: str) -> str:
    if at > 0 and text[at - 1] != "\n":
        return text[:at] + newline + line + text[at:]
    return text[:at] + line + newline + text[at:]


def _new_table(text: str, doc: _Document, table: KeyPath, path: KeyPath, value: Any, newline: str) -> str:
    """A ``[table]`` header with the key: before the first of its sub-tables (and the comments
    above it) when it has some, else at the end of the file after a blank line."""
    block = f"[{render_key(table)}]{newline}{render_key(path[len(table):])} = {render_value(value)}{newline}"
    first = next((h for h in doc.headers if h.path[: len(table)] == table), None)
    if first is not None:
        at = _comments_above(text, first.start)
        return text[:at] + block + newline + text[at:]
    if not text:
        return block
    if not text.endswith("\n"):
        text += newline
    if text.strip() and not text.endswith(newline * 2):
        text += newline
    return text + block


def _comments_above(text: str, at: int) -> int:
    """Start of the comment lines directly above the line at ``at`` (they describe it)."""
    while at > 0:
        previous = text.rfind("\n", 0, at - 1) + 1
        if not text[previous:at].strip().startswith("#"):
            break
        at = previous
    return at


def _quote(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# --- edits from texts ---------------------------------------------------------------------------


def _diff(old: str, new: str) -> list[TextEdit]:
    """The smallest line-wise edits from ``old`` to ``new``, each trimmed to the characters that
    change (a replaced value is an edit of the value alone)."""
    a, b = _lines(old), _lines(new)
    offsets = [0]
    for line in a:
        offsets.append(offsets[-1] + len(line))
    edits = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        start, end, replacement = _trim(old, offsets[i1], offsets[i2], "".join(b[j1:j2]))
        edits.append(TextEdit(*_position(old, start), *_position(old, end), replacement))
    return edits


def _lines(text: str) -> list[str]:
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def _trim(old: str, start: int, end: int, replacement: str) -> tuple[int, int, str]:
    """Drop the common start and end of the replaced text and its replacement, never splitting
    a CRLF (an LSP position cannot point between the two)."""
    replaced = old[start:end]
    head = 0
    while head < min(len(replaced), len(replacement)) and replaced[head] == replacement[head]:
        head += 1
    while head and (replaced[head - 1] == "\r" or _splits_word(replaced, replacement, head)):
        head -= 1
    tail = 0
    while (tail < min(len(replaced), len(replacement)) - head
           and replaced[len(replaced) - 1 - tail] == replacement[len(replacement) - 1 - tail]):
        tail += 1
    while tail and (replaced[len(replaced) - tail - 1] == "\r"
                    or _splits_word(replaced, replacement, len(replaced) - tail, len(replacement) - tail)):
        tail -= 1
    return start + head, end - tail, replacement[head : len(replacement) - tail]


def _splits_word(a: str, b: str, at_a: int, at_b: int | None = None) -> bool:
    """Whether a cut at ``at_a`` in ``a`` (``at_b`` in ``b``) falls inside a word or number, so
    ``false`` -> ``true`` is one edit of the value, not ``fals`` -> ``tru``."""
    cuts = ((a, at_a), (b, at_a if at_b is None else at_b))
    before = "".join(text[at - 1] for text, at in cuts if 0 < at <= len(text))
    after = "".join(text[at] for text, at in cuts if 0 <= at < len(text))
    return bool(_WORD.search(before)) and bool(_WORD.search(after))


def _position(text: str, offset: int) -> tuple[int, int]:
    return text.count("\n", 0, offset), offset - (text.rfind("\n", 0, offset) + 1)


def _offset(text: str, starts: list[int], line: int, char: int) -> int:
    if not 0 <= line < len(starts):
        raise ValueError(f"line {line} is outside the text")
    line_end = starts[line + 1] - 1 if line + 1 < len(starts) else len(text)
    if not 0 <= char <= line_end - starts[line]:
        raise ValueError(f"character {char} is outside line {line}")
    return starts[line] + char

"""Quick-fix edits: every config layout the reader accepts gets exactly the one change, read back
by the real config reader; ignore comments are checked by the real suppression reader; code
actions are built from real findings (hand-made and from an analysis of fixtures/deit_tiny)."""

from __future__ import annotations

import linecache
import math
import shutil
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from lsprotocol import types
from pygls.uris import from_fs_path

from quantlens.core.config import CONFIG_FILE, ProjectConfig, find_config, load_config
from quantlens.core.diagnosis import suppressed
from quantlens.core.diagnosis.rules_error import keep_wide
from quantlens.core.errors import Location
from quantlens.core.findings import Finding, Recommendation, Severity
from quantlens.core.result import AnalysisResult
from quantlens.core.settings import PointOverride
from quantlens.core.thresholds import ErrorMethod
from quantlens.daemon.edits import (
    TextEdit,
    add_ignore_comment,
    apply,
    config_has,
    parse_key,
    render_value,
    set_config_value,
    set_config_values,
)
from quantlens.daemon.lsp.code_actions import code_actions

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
PYPROJECT = "pyproject.toml"
FC2 = 'overrides."blocks.1.mlp.fc2"'
WIDE = {"activation_n_bits": 16, "weights_n_bits": 16}
WIDE_TOML = "{activation_n_bits = 16, weights_n_bits = 16}"
OVERRIDES = "\n[quantlens.overrides]\n"
TWO_KEYS = '[quantlens]\nmodel = "model.py:build"\ndata = "data.py:batches"'


def _text(body: str) -> str:
    return textwrap.dedent(body).lstrip("\n")


def _table(file_name: str) -> str:
    return "quantlens" if file_name == CONFIG_FILE else "tool.quantlens"


def _load(folder: Path, file_name: str, text: str) -> ProjectConfig:
    """The project as the real reader sees it (it only checks that model.py and data.py exist)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text("def build():\n    return None\n")
    (folder / "data.py").write_text("def batches():\n    return []\n")
    (folder / file_name).write_bytes(text.encode("utf-8"))
    return load_config(folder)


def _assert_reads(config: ProjectConfig, key: str, value: Any) -> None:
    """The reader's value for a Recommendation.config key is exactly ``value``."""
    path = parse_key(key)
    if path[0] == "overrides":
        assert config.settings.overrides[path[1]] == PointOverride(**value)
    elif key == "num_calibration_batches":
        assert config.num_calibration_batches == value
    elif key.endswith("error_method"):
        assert getattr(config.settings, key) is ErrorMethod(value)
    else:
        read = getattr(config.settings, key)
        assert read == value and type(read) is type(value)


# --- every layout -------------------------------------------------------------------------------

QL = _text('''
    # quantlens settings for the demo
    [quantlens]
    model = "model.py:build"   # the factory
    data = "data.py:batches"
    activation_n_bits = 8

    # diagnosis thresholds
    [quantlens.diagnosis]
    top_n = 3
''')

PY = _text('''
    [project]
    name = "demo"
    description = """
    [tool.quantlens]
    z_threshold = 1
    """

    [tool.quantlens]
    model = "model.py:build"
    data = "data.py:batches"
    metrics = [
        "data.py:batches",  # reuses the data
    ]
    # more settings below

    [tool.ruff]
    line-length = 100
''')

CASES = [
    pytest.param(CONFIG_FILE, QL, "z_threshold", 9.0,
                 QL.replace("activation_n_bits = 8\n", "activation_n_bits = 8\nz_threshold = 9.0\n"),
                 id="quantlens.toml, key absent"),
    pytest.param(CONFIG_FILE, QL.replace("= 8\n", "= 8\nz_threshold = 3.0  # tuned by hand\n"), "z_threshold", 9.0,
                 QL.replace("= 8\n", "= 8\nz_threshold = 9.0  # tuned by hand\n"),
                 id="quantlens.toml, key present"),
    pytest.param(CONFIG_FILE, QL.replace("= 8\n", "= 8\nshift_negative_activation_correction = false\n"),
                 "shift_negative_activation_correction", True,
                 QL.replace("= 8\n", "= 8\nshift_negative_activation_correction = true\n"),
                 id="quantlens.toml, bool present"),
    pytest.param(CONFIG_FILE, QL, "activation_n_bits", 16, QL.replace("= 8\n", "= 16\n"),
                 id="quantlens.toml, int present"),
    pytest.param(CONFIG_FILE, TWO_KEYS + "  # end", "z_threshold", 9.0, TWO_KEYS + "  # end\nz_threshold = 9.0",
                 id="quantlens.toml, no newline at the end"),
    pytest.param(CONFIG_FILE, 'model = "model.py:build"\ndata = "data.py:batches"\n\n[diagnosis]\ntop_n = 3\n',
                 "z_threshold", 9.0,
                 'model = "model.py:build"\ndata = "data.py:batches"\nz_threshold = 9.0\n\n[diagnosis]\ntop_n = 3\n',
                 id="quantlens.toml, keys at the top level"),
    pytest.param(PYPROJECT, PY, "z_threshold", 9.0, PY.replace("]\n# more", "]\nz_threshold = 9.0\n# more"),
                 id="pyproject, key absent after a multi-line array"),
    pytest.param(PYPROJECT, PY.replace("metrics", "z_threshold = 3\nmetrics"), "z_threshold", 9.0,
                 PY.replace("metrics", "z_threshold = 9.0\nmetrics"),
                 id="pyproject, key present"),
    pytest.param(PYPROJECT, '[tool]\nquantlens = { model = "model.py:build", data = "data.py:batches" }\n',
                 "z_threshold", 9.0,
                 '[tool]\nquantlens = { model = "model.py:build", data = "data.py:batches", z_threshold = 9.0 }\n',
                 id="pyproject, table is an inline table"),
    pytest.param(PYPROJECT, '[tool]\nquantlens.model = "model.py:build"\nquantlens.data = "data.py:batches"\n\n'
                 '[tool.ruff]\nline-length = 100\n', "z_threshold", 9.0,
                 '[tool]\nquantlens.model = "model.py:build"\nquantlens.data = "data.py:batches"\n'
                 'quantlens.z_threshold = 9.0\n\n[tool.ruff]\nline-length = 100\n',
                 id="pyproject, table made of dotted keys"),
    pytest.param(CONFIG_FILE, QL, FC2, WIDE,
                 QL.replace("= 8\n", f'= 8\noverrides."blocks.1.mlp.fc2" = {WIDE_TOML}\n'),
                 id="overrides absent"),
    pytest.param(CONFIG_FILE, QL + OVERRIDES + 'Linear = { weights_n_bits = 4 }\n'
                 '"blocks.0.attn" = { quantize = false }\n\n# the end\n', FC2, WIDE,
                 QL + OVERRIDES + 'Linear = { weights_n_bits = 4 }\n"blocks.0.attn" = { quantize = false }\n'
                 f'"blocks.1.mlp.fc2" = {WIDE_TOML}\n\n# the end\n',
                 id="overrides sub-table exists"),
    pytest.param(CONFIG_FILE, QL + OVERRIDES + '"blocks.1.mlp.fc2" = { activation_n_bits = 8 }  # tried 8\n',
                 FC2, WIDE,
                 QL + OVERRIDES + '"blocks.1.mlp.fc2" = { activation_n_bits = 16, weights_n_bits = 16 }  # tried 8\n',
                 id="override entry exists, merged"),
    pytest.param(CONFIG_FILE, QL + OVERRIDES + '"blocks.1.mlp.fc2" = {activation_n_bits = 8, weights_n_bits = 8}\n',
                 FC2, WIDE, QL + OVERRIDES + f'"blocks.1.mlp.fc2" = {WIDE_TOML}\n',
                 id="override entry exists, replaced in place"),
    pytest.param(PYPROJECT, PY.replace("metrics", 'overrides = { "blocks.0.attn" = { quantize = false } }\nmetrics'),
                 FC2, WIDE,
                 PY.replace("metrics", 'overrides = { "blocks.0.attn" = { quantize = false }, '
                                       f'"blocks.1.mlp.fc2" = {WIDE_TOML} }}\nmetrics'),
                 id="overrides inline table"),
    pytest.param(PYPROJECT, PY.replace("metrics", 'overrides = { "blocks.1.mlp.fc2" = { weights_n_bits = 8 } }\n'
                                                  'metrics'), FC2, WIDE,
                 PY.replace("metrics", 'overrides = { "blocks.1.mlp.fc2" = '
                                       '{ weights_n_bits = 16, activation_n_bits = 16 } }\nmetrics'),
                 id="override entry in an inline table, merged"),
    pytest.param(CONFIG_FILE, QL.replace("= 8\n", '= 8\n  overrides."blocks.1.mlp.fc2".activation_n_bits = 8\n'
                                                  'weights_n_bits = 8\n'), FC2, WIDE,
                 QL.replace("= 8\n", '= 8\n  overrides."blocks.1.mlp.fc2".activation_n_bits = 16\n'
                                     '  overrides."blocks.1.mlp.fc2".weights_n_bits = 16\nweights_n_bits = 8\n'),
                 id="override entry as dotted keys"),
    pytest.param(CONFIG_FILE, QL + '\n[quantlens.overrides."blocks.1.mlp.fc2"]\nactivation_n_bits = 8\n', FC2, WIDE,
                 QL + '\n[quantlens.overrides."blocks.1.mlp.fc2"]\nactivation_n_bits = 16\nweights_n_bits = 16\n',
                 id="override entry as its own table"),
    pytest.param(CONFIG_FILE, QL + '\n# not quantized\n[quantlens.overrides."blocks.0.attn"]\nquantize = false\n',
                 FC2, WIDE,
                 QL + OVERRIDES + f'"blocks.1.mlp.fc2" = {WIDE_TOML}\n'
                 '\n# not quantized\n[quantlens.overrides."blocks.0.attn"]\nquantize = false\n',
                 id="overrides only as sub-tables of points"),
]


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("file_name,before,key,value,after", CASES)
def test_config_fix_changes_only_its_value(tmp_path: Path, newline: str, file_name: str, before: str, key: str,
                                           value: Any, after: str) -> None:
    before, after = before.replace("\n", newline), after.replace("\n", newline)
    table = _table(file_name)
    edits = set_config_value(before, table, key, value)
    fixed = apply(before, edits)
    assert fixed == after  # every other line (and byte) as it was, line endings included
    tomllib.loads(fixed)
    _assert_reads(_load(tmp_path / "project", file_name, fixed), key, value)
    assert config_has(fixed, table, key, value) and not config_has(before, table, key, value)
    assert set_config_value(fixed, table, key, value) == []


def test_a_replaced_value_is_one_edit_of_the_value() -> None:
    text = QL.replace("= 8\n", "= 8\nshift_negative_activation_correction = false  # off\n")
    edits = set_config_value(text, "quantlens", "shift_negative_activation_correction", True)
    assert edits == [TextEdit(5, 39, 5, 44, "true")]
    assert set_config_value(QL, "quantlens", "activation_n_bits", 16) == [TextEdit(4, 20, 4, 21, "16")]
    text = "[quantlens]\nz_threshold = 3.0\n"
    assert set_config_value(text, "quantlens", "z_threshold", 3.5) == [TextEdit(1, 14, 1, 17, "3.5")]


def test_override_merge_keeps_the_entrys_other_settings(tmp_path: Path) -> None:
    text = QL + '\n[quantlens.overrides]\n"blocks.1.mlp.fc2" = { quantize = true, weights_n_bits = 4 }\n'
    fixed = apply(text, set_config_value(text, "quantlens", FC2, {"activation_n_bits": 12}))
    assert fixed.endswith('"blocks.1.mlp.fc2" = { quantize = true, weights_n_bits = 4, activation_n_bits = 12 }\n')
    config = _load(tmp_path, CONFIG_FILE, fixed)
    assert config.settings.overrides["blocks.1.mlp.fc2"] == PointOverride(12, 4, True)


def test_a_missing_table_is_created_with_every_key(tmp_path: Path) -> None:
    text = '[project]\nname = "demo"'
    changes = {"model": "model.py:build", "data": "data.py:batches", "z_threshold": 9.0, FC2: WIDE}
    fixed = apply(text, set_config_values(text, "tool.quantlens", changes))
    assert fixed == ('[project]\nname = "demo"\n\n[tool.quantlens]\nmodel = "model.py:build"\n'
                     f'data = "data.py:batches"\nz_threshold = 9.0\noverrides."blocks.1.mlp.fc2" = {WIDE_TOML}\n')
    config = _load(tmp_path, PYPROJECT, fixed)
    assert find_config(tmp_path) == (tmp_path / PYPROJECT, "tool.quantlens")
    assert config.settings.z_threshold == 9.0
    assert config.settings.overrides == {"blocks.1.mlp.fc2": PointOverride(16, 16)}


def test_a_table_made_only_by_sub_tables_gets_its_header_before_them(tmp_path: Path) -> None:
    text = '[tool.quantlens.overrides]\nLinear = { weights_n_bits = 4 }\n'
    changes = {"model": "model.py:build", "data": "data.py:batches"}
    fixed = apply(text, set_config_values(text, "tool.quantlens", changes))
    assert fixed == ('[tool.quantlens]\nmodel = "model.py:build"\ndata = "data.py:batches"\n\n'
                     '[tool.quantlens.overrides]\nLinear = { weights_n_bits = 4 }\n')
    assert _load(tmp_path, PYPROJECT, fixed).settings.overrides == {"Linear": PointOverride(weights_n_bits=4)}


@pytest.mark.parametrize("key,value,line", [
    ("z_threshold", math.inf, "z_threshold = inf"),
    ("z_threshold", 12.5, "z_threshold = 12.5"),
    ("l_p_value", 1e-05, "l_p_value = 1e-05"),
    ("activation_error_method", "KL", 'activation_error_method = "KL"'),
    ("num_calibration_batches", 8, "num_calibration_batches = 8"),
    ("weights_per_channel_threshold", False, "weights_per_channel_threshold = false"),
])
def test_values_are_written_as_toml_the_reader_accepts(tmp_path: Path, key: str, value: Any, line: str) -> None:
    fixed = apply(QL, set_config_value(QL, "quantlens", key, value))
    assert fixed == QL.replace("= 8\n", f"= 8\n{line}\n")
    _assert_reads(_load(tmp_path, CONFIG_FILE, fixed), key, value)


@pytest.mark.parametrize("text", ['plain', 'quo"te', "back\\slash", "new\nline\ttab", "bell\x07del\x7f",
                                  "ünïcødé 😀", "'single'", "\U0001f600"])
def test_strings_round_trip_through_tomllib(text: str) -> None:
    assert tomllib.loads(f"v = {render_value(text)}")["v"] == text


def test_render_value() -> None:
    assert [render_value(v) for v in (True, False, 3, 9.0, -math.inf, "MSE")] == \
        ["true", "false", "3", "9.0", "-inf", '"MSE"']
    assert render_value({"a b": {"c": [1, 2]}}) == '{"a b" = {c = [1, 2]}}'
    assert parse_key(FC2) == ("overrides", "blocks.1.mlp.fc2")
    assert parse_key("a . 'b.c' . \"d\\u0041\"") == ("a", "b.c", "dA")


def test_keys_inside_strings_and_comments_are_not_mistaken_for_keys() -> None:
    text = _text('''
        [quantlens]
        model = "model.py:build # z_threshold = 1"
        note = \'\'\'
        z_threshold = 2
        [quantlens]
        \'\'\'
        data = "data.py:batches"  # z_threshold = 3
    ''')
    fixed = apply(text, set_config_value(text, "quantlens", "z_threshold", 9.0))
    assert fixed == text + "z_threshold = 9.0\n"


def test_files_that_cannot_take_the_change_raise_value_error() -> None:
    with pytest.raises(ValueError, match="invalid TOML"):
        set_config_value("[quantlens\n", "quantlens", "z_threshold", 9.0)
    with pytest.raises(ValueError, match="overrides is not a table"):
        set_config_value("[quantlens]\noverrides = 3\n", "quantlens", FC2, WIDE)
    with pytest.raises(ValueError, match="not a TOML key"):
        parse_key("a b")


def test_apply_follows_lsp_rules() -> None:
    text = "ab\ncd\n"
    assert apply(text, [TextEdit(1, 0, 1, 0, "1"), TextEdit(0, 1, 1, 0, "X"), TextEdit(1, 1, 1, 1, "2")]) == "aX1c2d\n"
    assert apply(text, [TextEdit(0, 0, 0, 0, "x"), TextEdit(0, 0, 0, 0, "y")]) == "xyab\ncd\n"
    with pytest.raises(ValueError, match="overlapping"):
        apply(text, [TextEdit(0, 0, 0, 2, ""), TextEdit(0, 1, 1, 0, "")])
    with pytest.raises(ValueError, match="outside line 0"):
        apply(text, [TextEdit(0, 3, 0, 3, "")])


# --- ignore comments ----------------------------------------------------------------------------


def _is_suppressed(path: Path, lines: list[str], line: int, rule: str) -> bool:
    """The real suppression check for a finding shown on ``line`` (0-based) of the file."""
    path.write_text("\n".join(lines) + "\n")
    linecache.checkcache(str(path))
    finding = Finding(rule, Severity.WARNING, "msg", ("fc2",), (Location(str(path), line + 1),))
    return suppressed(finding)


@pytest.mark.parametrize("line,after", [
    ("        self.fc2 = nn.Linear(d, d)", "        self.fc2 = nn.Linear(d, d)  # quantlens: ignore[outliers-zscore]"),
    ("x = 1  # note", "x = 1  # note  # quantlens: ignore[outliers-zscore]"),
    ("x = 1   ", "x = 1  # quantlens: ignore[outliers-zscore]"),
    ("x = 1  # quantlens: ignore[degraded-layer]", "x = 1  # quantlens: ignore[degraded-layer, outliers-zscore]"),
    ("x = 1  #quantlens:ignore[a,b] more", "x = 1  #quantlens:ignore[a,b, outliers-zscore] more"),
    ("x = 1  # quantlens: ignore[]", "x = 1  # quantlens: ignore[outliers-zscore]"),
    ("x = f(  # see below", "x = f(  # see below  # quantlens: ignore[outliers-zscore]"),
])
def test_ignore_comment_suppresses_the_rule_and_keeps_the_others(tmp_path: Path, line: str, after: str) -> None:
    path = tmp_path / "model.py"
    lines = ["import torch", line, "y = 2"]
    assert not _is_suppressed(path, lines, 1, "outliers-zscore")
    edit = add_ignore_comment(line, 1, "outliers-zscore")
    assert edit is not None and edit.start_line == edit.end_line == 1
    fixed = apply("\n".join(lines) + "\n", [edit]).split("\n")
    assert fixed[:3] == [lines[0], after, lines[2]]
    assert _is_suppressed(path, fixed, 1, "outliers-zscore")
    assert not _is_suppressed(path, fixed, 1, "shift-negative")
    assert add_ignore_comment(after, 1, "outliers-zscore") is None


def test_ignore_keeps_crlf_and_skips_lines_that_already_ignore_or_continue() -> None:
    edit = add_ignore_comment("x = 1\r\n", 4, "r")
    assert edit == TextEdit(4, 5, 4, 5, "  # quantlens: ignore[r]")
    assert add_ignore_comment("x = 1  # quantlens: ignore", 0, "r") is None
    assert add_ignore_comment("x = 1  # quantlens: ignore[a, r]", 0, "r") is None
    assert add_ignore_comment("x = a + \\", 0, "r") is None


# --- code actions -------------------------------------------------------------------------------


def _diagnostic(findings: list[Finding], line: int) -> types.Diagnostic:
    """A diagnostic as the server publishes it: the line's findings in ``data``."""
    return types.Diagnostic(
        range=types.Range(start=types.Position(line=line - 1, character=0), end=types.Position(line=line, character=0)),
        message=findings[0].message,
        source="quantlens",
        data={"findings": [f.to_json() for f in findings], "points": [p for f in findings for p in f.points]},
    )


def _apply_lsp(text: str, lsp_edits: list[types.TextEdit]) -> str:
    """Apply LSP edits, whose characters are UTF-16 code units, to a Python string."""
    lines = text.split("\n")

    def index(position: types.Position) -> int:
        units = lines[position.line].encode("utf-16-le")[: 2 * position.character]
        return len(units.decode("utf-16-le"))

    return apply(text, [TextEdit(e.range.start.line, index(e.range.start), e.range.end.line, index(e.range.end),
                                 e.new_text) for e in lsp_edits])


def _reader(path: str) -> list[str] | None:
    return Path(path).read_text().split("\n")


@pytest.fixture
def hand_made(tmp_path: Path) -> tuple[Path, Path, list[types.Diagnostic]]:
    """A project with a config and a model file, and two diagnostics made from real findings."""
    config = tmp_path / CONFIG_FILE
    _load(tmp_path, CONFIG_FILE, QL)
    model = tmp_path / "model.py"
    model.write_text('import torch\n\nlabel = "😀"\nfc2 = torch.nn.Linear(4, 4)\n')
    at = (Location(str(model), 4),)
    z = Finding("outliers-zscore", Severity.WARNING, "fc2 has outliers", ("blocks.1.mlp.fc2",), at,
                recommendation=Recommendation("remove outliers", {"z_threshold": 9.0}))
    wide = Finding("degraded-layer", Severity.WARNING, "fc2 is degraded", ("blocks.1.mlp.fc2",), at,
                   recommendation=Recommendation("keep it wide", keep_wide(["blocks.1.mlp.fc2"])))
    shift = Finding("shift-negative", Severity.INFO, "negative", ("blocks.1.mlp.fc1",), (Location(str(model), 3),),
                    recommendation=Recommendation("shift", {"shift_negative_activation_correction": True}))
    return config, model, [_diagnostic([z, wide], 4), _diagnostic([shift], 3)]


def test_code_actions_offer_each_config_fix_then_each_ignore(tmp_path: Path, hand_made) -> None:
    config, model, diagnostics = hand_made
    actions = code_actions(diagnostics, config_path=config, config_text=QL, config_table="quantlens",
                           read_source=_reader)
    assert [a.title for a in actions] == [
        "quantlens: set z_threshold = 9",
        "quantlens: keep blocks.1.mlp.fc2 at 16 bits",
        "quantlens: turn on shift_negative_activation_correction",
        "quantlens: ignore outliers-zscore on this line",
        "quantlens: ignore degraded-layer on this line",
        "quantlens: ignore shift-negative on this line",
    ]
    assert [a.is_preferred for a in actions] == [True, None, None, None, None, None]
    assert all(a.kind == types.CodeActionKind.QuickFix for a in actions)
    assert [a.diagnostics for a in actions] == [[diagnostics[i]] for i in (0, 0, 1, 0, 0, 1)]
    config_uri, model_uri = from_fs_path(str(config)), from_fs_path(str(model))
    for action, (key, value) in zip(actions[:3], [("z_threshold", 9.0), (FC2, WIDE),
                                                  ("shift_negative_activation_correction", True)]):
        assert list(action.edit.changes) == [config_uri]
        fixed = _apply_lsp(QL, action.edit.changes[config_uri])
        _assert_reads(_load(tmp_path / key.replace('"', ""), CONFIG_FILE, fixed), key, value)
    lines = _reader(str(model))
    for action, rule, line in zip(actions[3:], ["outliers-zscore", "degraded-layer", "shift-negative"], [3, 3, 2]):
        assert list(action.edit.changes) == [model_uri]
        fixed = _apply_lsp("\n".join(lines), action.edit.changes[model_uri]).split("\n")
        assert [n for n, (a, b) in enumerate(zip(lines, fixed)) if a != b] == [line]
        assert _is_suppressed(tmp_path / f"check_{rule}.py", fixed, line, rule)


def test_ignore_edit_counts_utf16_code_units(hand_made) -> None:
    config, model, diagnostics = hand_made
    (action,) = code_actions([diagnostics[1]], config_path=None, config_text=None, config_table=None,
                             read_source=_reader)
    (edit,) = action.edit.changes[from_fs_path(str(model))]
    assert edit.range.start == edit.range.end == types.Position(line=2, character=len('label = "😀"') + 1)


def test_without_config_only_ignores_and_a_fix_already_made_is_not_offered(hand_made) -> None:
    config, _, diagnostics = hand_made
    no_config = code_actions(diagnostics, config_path=None, config_text=None, config_table=None,
                             read_source=_reader)
    assert [a.title for a in no_config] == [
        "quantlens: ignore outliers-zscore on this line",
        "quantlens: ignore degraded-layer on this line",
        "quantlens: ignore shift-negative on this line",
    ]
    assert all(a.is_preferred is None for a in no_config)
    done = QL.replace("= 8\n", "= 8\nz_threshold = 9\nshift_negative_activation_correction = true\n")
    actions = code_actions(diagnostics, config_path=config, config_text=done, config_table="quantlens",
                           read_source=_reader)
    assert [a.title for a in actions][:2] == ["quantlens: keep blocks.1.mlp.fc2 at 16 bits",
                                              "quantlens: ignore outliers-zscore on this line"]
    assert actions[0].is_preferred is True


def test_identical_actions_are_offered_once_for_every_diagnostic(hand_made) -> None:
    config, _, diagnostics = hand_made
    twice = [diagnostics[0], _diagnostic([Finding.from_json(f) for f in diagnostics[0].data["findings"]][:1], 4)]
    actions = code_actions(twice, config_path=config, config_text=QL, config_table="quantlens", read_source=_reader)
    assert [a.title for a in actions] == ["quantlens: set z_threshold = 9",
                                          "quantlens: keep blocks.1.mlp.fc2 at 16 bits",
                                          "quantlens: ignore outliers-zscore on this line",
                                          "quantlens: ignore degraded-layer on this line"]
    assert actions[0].diagnostics == twice and actions[2].diagnostics == twice
    assert actions[1].diagnostics == [twice[0]]


def test_ignore_follows_a_diagnostic_moved_by_unsaved_edits(tmp_path: Path, hand_made) -> None:
    _, model, diagnostics = hand_made
    lines = ["# a line typed above, not yet saved", *_reader(str(model))]
    moved = diagnostics[1].data["findings"]
    (action,) = code_actions([_diagnostic([Finding.from_json(f) for f in moved], 4)], config_path=None,
                             config_text=None, config_table=None, read_source=lambda path: lines)
    (edit,) = action.edit.changes[from_fs_path(str(model))]
    assert edit.range.start.line == 3
    fixed = _apply_lsp("\n".join(lines), [edit]).split("\n")
    assert fixed[3] == 'label = "😀"  # quantlens: ignore[shift-negative]'
    assert _is_suppressed(tmp_path / "saved.py", fixed, 3, "shift-negative")


def test_other_diagnostics_and_unreadable_files_give_nothing(hand_made) -> None:
    config, _, diagnostics = hand_made
    foreign = types.Diagnostic(range=diagnostics[0].range, message="E501", source="ruff", data=None)
    assert code_actions([foreign], config_path=config, config_text=QL, config_table="quantlens",
                        read_source=_reader) == []
    actions = code_actions(diagnostics, config_path=config, config_text="[quantlens\n", config_table="quantlens",
                           read_source=lambda path: None)
    assert actions == []


# --- a real analysis ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def deit(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AnalysisResult]:
    """fixtures/deit_tiny analysed from a copy (the ignore and config fixes edit the copy)."""
    from quantlens.core.torch_engine.pipeline import analyze_project

    folder = tmp_path_factory.mktemp("deit") / "deit_tiny"
    shutil.copytree(FIXTURES / "deit_tiny", folder)
    return folder, analyze_project(load_config(folder))


def test_fixes_for_a_real_analysis_give_configs_the_reader_accepts(deit: tuple[Path, AnalysisResult]) -> None:
    folder, result = deit
    by_line: dict[int, list[Finding]] = {}
    for finding in result.findings:
        if finding.location is not None:
            by_line.setdefault(finding.location.line, []).append(finding)
    diagnostics = [_diagnostic(findings, line) for line, findings in sorted(by_line.items())]
    found = find_config(folder)
    assert found is not None
    config_path, table = found
    text = config_path.read_text()
    actions = code_actions(diagnostics, config_path=config_path, config_text=text, config_table=table,
                           read_source=_reader)
    titles = [a.title for a in actions]
    assert "quantlens: keep blocks.1.mlp.fc2 at 16 bits" in titles
    assert "quantlens: turn on shift_negative_activation_correction" not in titles  # not re-simulated: no fix
    expected = {_fix_title(k, v): (k, v) for f in result.findings if f.recommendation
                for k, v in f.recommendation.config.items()}
    config_actions = [a for a in actions if not a.title.startswith("quantlens: ignore")]
    assert sorted(a.title for a in config_actions) == sorted(expected)
    for action in config_actions:
        config_path.write_text(_apply_lsp(text, action.edit.changes[from_fs_path(str(config_path))]))
        try:
            _assert_reads(load_config(folder), *expected[action.title])
        finally:
            config_path.write_text(text)
    ignores = [a for a in actions if a.title.startswith("quantlens: ignore")]
    assert len(ignores) == len({(f.location.line, f.rule) for f in result.findings if f.location})
    model = folder / "model.py"
    source = model.read_text()
    for action in ignores:
        (edit,) = action.edit.changes[from_fs_path(str(model))]
        rule = action.title.split()[2]
        shown = [f for f in result.findings if f.rule == rule and f.location.line == edit.range.start.line + 1]
        assert shown and not any(suppressed(f) for f in shown)
        model.write_text(_apply_lsp(source, [edit]))
        linecache.checkcache(str(model))
        try:
            assert all(suppressed(f) for f in shown)
        finally:
            model.write_text(source)
            linecache.checkcache(str(model))


def _fix_title(key: str, value: Any) -> str:
    """The title the brief asks for, written out independently of code_actions."""
    path = parse_key(key)
    if path[0] == "overrides":
        return f"quantlens: keep {path[1]} at {value['activation_n_bits']} bits"
    if value is True:
        return f"quantlens: turn on {key}"
    return f"quantlens: set {key} = {value:g}"

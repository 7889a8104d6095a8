"""Configuration: every bad value, unknown key and missing file is reported at its line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from quantlens.core.config import COMMAND_LINE, load_config, parse_set_argument
from quantlens.core.errors import Location, QuantlensError
from quantlens.core.thresholds import ErrorMethod


def _project(tmp_path: Path, body: str, name: str = "quantlens.toml") -> Path:
    (tmp_path / "net.py").write_text("def build():\n    pass\n\ndef data():\n    return []\n")
    (tmp_path / name).write_text(body)
    return tmp_path


def _problems(tmp_path: Path, **kwargs) -> list:
    with pytest.raises(QuantlensError) as info:
        load_config(tmp_path, **kwargs)
    return info.value.problems


BASE = '[quantlens]\nmodel = "net.py:build"\ndata = "net.py:data"\n'


def test_defaults_are_mcts(tmp_path):
    config = load_config(_project(tmp_path, BASE))
    s = config.settings
    assert (s.activation_n_bits, s.weights_n_bits) == (8, 8)
    assert s.activation_error_method is ErrorMethod.MSE and s.weights_error_method is ErrorMethod.MSE
    assert s.l_p_value == 2.0 and math.isinf(s.z_threshold)
    assert s.weights_per_channel_threshold and s.power_of_two_thresholds
    assert not s.shift_negative_activation_correction and s.weights_bias_correction
    assert config.model.path == (tmp_path / "net.py").resolve() and config.model.function == "build"
    assert config.locations["model"].line == 2


def test_pyproject_tool_table(tmp_path):
    body = '[project]\nname = "x"\n\n[tool.quantlens]\nmodel = "net.py:build"\ndata = "net.py:data"\nz_threshold = 9\n'
    config = load_config(_project(tmp_path, body, "pyproject.toml"))
    assert config.settings.z_threshold == 9.0
    assert config.locations["z_threshold"].line == 7


@pytest.mark.parametrize("line,message", [
    ("activation_n_bits = 1", "activation_n_bits must be a whole number of bits from 2 to 16"),
    ("weights_n_bits = 8.5", "weights_n_bits must be a whole number"),
    ('activation_error_method = "median"', "activation_error_method must be one of NOCLIPPING, MSE, MAE, KL, LP"),
    ("z_threshold = -1", "z_threshold must be positive"),
    ('z_threshold = "lots"', "z_threshold must be a number"),
    ("l_p_value = 0", "l_p_value must be a positive number"),
    ('power_of_two_thresholds = "yes"', "power_of_two_thresholds must be true or false"),
    ("num_calibration_batches = 0", "num_calibration_batches must be a positive whole number"),
    ('device = "tpu"', "device must be"),
    ("zthreshold = 3", "unknown key 'zthreshold'"),
    ('weights = "missing.pt"', "weights file 'missing.pt' not found"),
    ("overrides = { fc = { activation_n_bits = 99 } }", "overrides.fc: activation_n_bits must be"),
    ("overrides = { fc = { colour = 1 } }", "unknown override key 'colour'"),
])
def test_bad_values_are_reported_at_their_line(tmp_path, line, message):
    problems = _problems(_project(tmp_path, BASE + line + "\n"))
    assert len(problems) == 1
    assert message in problems[0].message
    assert problems[0].location.file == str(tmp_path / "quantlens.toml")
    assert problems[0].location.line == 4


def test_unknown_key_suggests_the_close_name(tmp_path):
    problem = _problems(_project(tmp_path, BASE + "z_treshold = 3\n"))[0]
    assert problem.hint == "did you mean 'z_threshold'?"


def test_every_problem_is_reported_at_once(tmp_path):
    problems = _problems(_project(tmp_path, BASE + "activation_n_bits = 99\nfoo = 1\n"))
    assert [p.location.line for p in problems] == [4, 5]


@pytest.mark.parametrize("body,message,line", [
    ('[quantlens]\nmodel = "nope.py:build"\ndata = "net.py:data"\n', "model: file 'nope.py' not found", 2),
    ('[quantlens]\nmodel = "net.py"\ndata = "net.py:data"\n', 'model must look like "path/to/file.py:function"', 2),
    ('[quantlens]\nmodel = "net.py:build"\n', "no data configured", 0),
    ('[quantlens]\nmodel = "net.py:build"\ndata = "net.py:1x"\n', "is not a function name", 3),
])
def test_model_and_data_references(tmp_path, body, message, line):
    problem = _problems(_project(tmp_path, body))[0]
    assert message in problem.message
    assert problem.location.line == line


def test_toml_syntax_error_has_line_and_column(tmp_path):
    problem = _problems(_project(tmp_path, BASE + "z_threshold = = 3\n"))[0]
    assert "invalid TOML" in problem.message
    assert problem.location.line == 4


def test_diagnosis_settings_are_checked(tmp_path):
    body = BASE + "\n[quantlens.diagnosis]\nthreshold_ratio_unbalanced_concatenation = -2\nthreshold_quantize_error = {sqnr = 0.3}\n"
    problems = _problems(_project(tmp_path, body))
    assert len(problems) == 1 and "threshold_ratio_unbalanced_concatenation must be a positive number" in problems[0].message
    assert problems[0].location.line == 6
    ok = load_config(_project(tmp_path, BASE + "\n[quantlens.diagnosis]\nthreshold_quantize_error = {sqnr = 0.3}\n"))
    assert ok.diagnosis.threshold_quantize_error == {"mse": 0.1, "cs": 0.1, "sqnr": 0.3}


def test_command_line_overrides_win_and_are_checked(tmp_path):
    project = _project(tmp_path, BASE + "z_threshold = 9\n")
    key, value = parse_set_argument("z_threshold=12")
    config = load_config(project, overrides={key: value})
    assert config.settings.z_threshold == 12.0
    assert parse_set_argument("activation_error_method=KL") == ("activation_error_method", "KL")
    assert parse_set_argument("z_threshold=inf")[1] == math.inf
    problems = _problems(project, overrides={"activation_n_bits": 40}, override_text={"activation_n_bits": "--set activation_n_bits=40"})
    assert problems[0].location.file == f"{COMMAND_LINE} (--set activation_n_bits=40)"


def test_no_config_file_needs_model_and_data_from_the_command_line(tmp_path):
    (tmp_path / "net.py").write_text("def build():\n    pass\n")
    problems = _problems(tmp_path)
    assert {p.message for p in problems} == {"no model configured", "no data configured"}
    config = load_config(tmp_path, overrides={"model": f"{tmp_path}/net.py:build", "data": f"{tmp_path}/net.py:build"})
    assert config.config_file is None and config.root == tmp_path.resolve()


def test_override_lookup_prefers_the_most_specific_name() -> None:
    from quantlens.core.settings import PointOverride, QuantSettings

    settings = QuantSettings(overrides={
        "blocks": PointOverride(activation_n_bits=4),
        "blocks.1": PointOverride(activation_n_bits=6),
        "blocks.1.fc2": PointOverride(activation_n_bits=16),
        "Linear": PointOverride(weights_n_bits=4),
    })
    assert settings.override_key(["blocks.1.fc2"], ["Linear"]) == "blocks.1.fc2"
    assert settings.override_key(["blocks.1.fc1"], ["Linear"]) == "blocks.1"
    assert settings.override_key(["blocks.0.fc1"], ["Linear"]) == "blocks"
    assert settings.override_key(["head"], ["Linear"]) == "Linear"
    assert settings.override_key(["head"], ["Conv2d"]) is None
    assert settings.for_point(["blocks.1.fc1"], ["Linear"]).activation_n_bits == 6


def test_function_definition_is_found_without_running_the_file(tmp_path: Path) -> None:
    from quantlens.core.config import FuncRef

    source = tmp_path / "data.py"
    source.write_text("raise RuntimeError('never run')\n\n\n@staticmethod\ndef batches():\n    return []\n")
    assert FuncRef(source, "batches").definition() == Location(str(source), 5, 1)
    assert FuncRef(source, "missing").definition() is None
    source.write_text("def broken(:\n")
    assert FuncRef(source, "broken").definition() is None

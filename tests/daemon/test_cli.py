"""The CLI end to end: a model given only by --model/--data, the JSON contract, exit codes,
and every bad input reported as file:line with exit code 2, never a traceback."""

from __future__ import annotations

import html
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from quantlens.daemon import cli
from quantlens.daemon.cli import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, build_parser, main

MODELS = Path(__file__).resolve().parents[1] / "core" / "models"
LOW_BIT = Path(__file__).resolve().parents[2] / "fixtures" / "low_bit"
SAMPLE = MODELS / "sample_net.py"
FAST = ["--no-progress", "--set", "num_calibration_batches=2"]


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One full check of the sample model with no config file: the JSON it writes."""
    out = tmp_path_factory.mktemp("cli") / "result.json"
    code = main(["check", str(MODELS), "--model", f"{SAMPLE}:build", "--data", f"{SAMPLE}:batches",
                 "--json", str(out), *FAST])
    assert code == EXIT_OK
    return json.loads(out.read_text())


def test_model_and_data_alone_give_the_documented_json(sample_run: dict) -> None:
    payload = sample_run
    assert payload["format"] == "quantlens.result/1"
    assert payload["config_file"] is None
    assert payload["calibration"]["num_batches"] == 2
    assert payload["settings"]["activation_error_method"] == "MSE"
    assert payload["settings"]["activation_n_bits"] == 8
    names = [p["name"] for p in payload["points"]]
    assert len(names) == len(set(names)) > 10
    for p in payload["points"]:
        assert p["kind"] in ("input", "module", "function")
        assert Path(p["source"]["file"]) == SAMPLE and p["source"]["line"] > 0  # the model and the data function (the input's line) live there
        act = p["activation"]
        for key in ("threshold", "signed", "n_bits", "error_method", "z_threshold", "min", "max", "mean", "std",
                    "method_thresholds"):
            assert key in act, key
        assert set(act["method_thresholds"]) == {"NOCLIPPING", "MSE", "MAE", "KL", "LP"}
        if act["quantize"]:
            # power-of-two threshold, and NOCLIPPING is the smallest power of two covering the range
            assert math.log2(act["threshold"]) == round(math.log2(act["threshold"]))
            peak = max(abs(act["min"]), abs(act["max"]))
            t = act["method_thresholds"]["NOCLIPPING"]
            assert t >= peak and (t / 2 < peak or peak == 0)
        for kind in ("isolated", "cumulative"):
            m = p["metrics"][kind]
            assert set(m) >= {"mse", "cosine", "sqnr_db"}
    with_weights = [p for p in payload["points"] if p["weights"]]
    assert with_weights and all(p["weights"]["sqnr_db"] != "inf" for p in with_weights)
    assert payload["output"]["top1_agreement"] is not None
    # the dataset rules point at the data function's def line
    dataset = [f for f in payload["findings"] if f["rule"] == "dataset-size"]
    assert dataset and all(f["locations"][0]["line"] == _line_of(SAMPLE, "def batches") for f in dataset)


def _line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


def test_fail_on_turns_findings_into_exit_code_1(capsys: pytest.CaptureFixture[str], sample_run: dict) -> None:
    severities = {f["severity"] for f in sample_run["findings"]}
    assert "warning" in severities  # 16 samples: dataset-size
    args = ["check", str(MODELS), "--model", f"{SAMPLE}:build", "--data", f"{SAMPLE}:batches", *FAST]
    code, out, _ = _run([*args, "--fail-on", "warning", "--format", "github"], capsys)
    assert code == EXIT_FINDINGS
    assert "::warning file=sample_net.py" in out


def test_check_and_watch_fail_on_errors_by_default() -> None:
    parser = build_parser()
    assert parser.parse_args(["check"]).fail_on == "error"
    assert parser.parse_args(["watch", "--once"]).fail_on == "error"
    assert parser.parse_args(["check", "--fail-on", "never"]).fail_on == "never"


def test_an_error_level_finding_exits_1_unless_told_never(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """fixtures/low_bit (3 bits nearly everywhere) has a global-degradation error: exit 1 with no
    --fail-on, as ruff exits on violations; --fail-on never keeps exit 0 with the error still reported."""
    code, out, _ = _run(["check", str(LOW_BIT), "--no-progress"], capsys)
    assert code == EXIT_FINDINGS
    assert "error[global-degradation]" in out
    saved = tmp_path / "result.json"
    code, _, _ = _run(["check", str(LOW_BIT), "--no-progress", "--fail-on", "never", "--json", str(saved)], capsys)
    assert code == EXIT_OK
    assert "global-degradation" in {f["rule"] for f in json.loads(saved.read_text())["findings"]
                                    if f["severity"] == "error"}


def test_report_renders_a_saved_json_without_running(sample_run: dict, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def no_run(*_: object) -> None:
        raise AssertionError("report --from-json must not run the analysis")

    monkeypatch.setattr(cli, "analyze_in_worker", no_run)
    saved = tmp_path / "result.json"
    saved.write_text(json.dumps(sample_run))
    out = tmp_path / "page"
    code, stdout, err = _run(["report", "--from-json", str(saved), "--out", str(out)], capsys)
    assert code == EXIT_OK, err
    assert stdout == f"wrote {out / 'index.html'}\n"
    page = (out / "index.html").read_text(encoding="utf-8")
    assert sample_run["findings"] and all(html.escape(f["message"]) in page for f in sample_run["findings"])
    order = [p["name"] for p in sample_run["points"]]
    pictured = {order.index(entry["point"]) for entry in sample_run["report"]["pictures"]}
    written = {png.name for png in out.glob("*.png")}
    assert pictured and {f"p{i:03d}-histogram.png" for i in pictured} | {"iqr-boxplots.png"} <= written
    assert len(sample_run["report"]["boxes"]) == len(order)


@pytest.mark.parametrize(("text", "extra", "where", "needle"), [
    ("{\n  \"format\": oops\n}", [], ":2:", "is not JSON"),
    ('{"format": "quantlens.result/1", "points": []}', [], ":", "with a report section"),
    ('{"format": "quantlens.baseline/1"}', [], ":", "not a quantlens.result/1 document"),
    (None, [], ":", "cannot read"),
    ("{}", ["--model", "net.py:build"], "<command line>:", "runs nothing: drop --model"),
], ids=["syntax", "no-report-section", "baseline-file", "missing", "with-run-options"])
def test_report_from_a_bad_json_exits_2_at_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     text: str | None, extra: list[str], where: str,
                                                     needle: str) -> None:
    saved = tmp_path / "result.json"
    if text is not None:
        saved.write_text(text)
    code, out, err = _run(["report", "--from-json", str(saved), "--out", str(tmp_path / "page"), *extra], capsys)
    assert code == EXIT_USAGE
    assert err.startswith("<command line>:" if where.startswith("<") else f"{saved}{where}"), err
    assert needle in err and "Traceback" not in err + out
    assert not (tmp_path / "page").exists()


def _project(tmp_path: Path, config: str, model: str | None = None) -> Path:
    (tmp_path / "net.py").write_text(model if model is not None else SAMPLE.read_text())
    (tmp_path / "quantlens.toml").write_text(config)
    return tmp_path


GOOD = '[quantlens]\nmodel = "net.py:build"\ndata = "net.py:batches"\n'


@pytest.mark.parametrize(("config", "line", "needle"), [
    (GOOD + "activation_n_bits = 0\n", 4, "activation_n_bits"),
    (GOOD + 'activation_error_method = "MEDIAN"\n', 4, "activation_error_method"),
    (GOOD + "z_thresold = 3\n", 4, "z_threshold"),  # did you mean
    ('[quantlens]\nmodel = "missing.py:build"\ndata = "net.py:batches"\n', 2, "missing.py"),
    ('[quantlens]\nmodel = "net.py:nope"\ndata = "net.py:batches"\n', 2, "nope"),
    ('[quantlens]\nmodel = "net.py:build"\ndata = "net.py:batches\n', 3, ""),  # TOML syntax error
])
def test_config_errors_exit_2_at_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: str, line: int,
                                          needle: str) -> None:
    project = _project(tmp_path, config)
    code, out, err = _run(["check", str(project), "--no-progress"], capsys)
    assert code == EXIT_USAGE
    assert f"quantlens.toml:{line}:" in err
    assert needle in err
    assert "Traceback" not in err + out


def test_bad_set_value_is_reported_at_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _project(tmp_path, GOOD)
    code, _, err = _run(["check", str(project), "--no-progress", "--set", "weights_n_bits=eight"], capsys)
    assert code == EXIT_USAGE
    assert "<command line>" in err and "weights_n_bits" in err


BROKEN_FORWARD = SAMPLE.read_text().replace(
    "        x = self.stem(x)\n", "        x = self.stem(x)\n        x = x[:, :, :, :, 0]  # @boom\n")


def test_exception_in_forward_points_at_the_users_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project = _project(tmp_path, GOOD, BROKEN_FORWARD)
    code, out, err = _run(["check", str(project), "--no-progress"], capsys)
    assert code == EXIT_USAGE
    assert f"net.py:{_line_of(project / 'net.py', '@boom')}:" in err
    assert "IndexError" in err
    assert "Traceback" not in err + out


def test_nan_in_the_data_is_reported_not_crashed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = SAMPLE.read_text() + (
        "\n\ndef nan_batches():\n"
        "    data = batches(2)\n"
        "    data[1][0, 0, 0, 0] = float('nan')  # @nan\n"
        "    return data\n")
    project = _project(tmp_path, '[quantlens]\nmodel = "net.py:build"\ndata = "net.py:nan_batches"\n', source)
    code, out, err = _run(["check", str(project), "--no-progress"], capsys)
    assert code == EXIT_USAGE
    assert "quantlens.toml:3:" in err and "NaN" in err
    assert "Traceback" not in err + out


def test_empty_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = SAMPLE.read_text() + "\n\ndef nothing():\n    return []\n"
    project = _project(tmp_path, '[quantlens]\nmodel = "net.py:build"\ndata = "net.py:nothing"\n', source)
    code, _, err = _run(["check", str(project), "--no-progress"], capsys)
    assert code == EXIT_USAGE
    assert "quantlens.toml:3:" in err and "no batches" in err


def test_console_script_without_config_says_what_is_missing(tmp_path: Path) -> None:
    """The installed entry point, in a fresh process: exit 2 and a message, no traceback."""
    env = {**os.environ, "QUANTLENS_DEBUG": ""}
    proc = subprocess.run([sys.executable, "-m", "quantlens.daemon.cli", "check", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == EXIT_USAGE
    assert "no model configured" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_baseline_gate_fails_only_on_a_regression(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["check", str(MODELS), "--model", f"{SAMPLE}:build", "--data", f"{SAMPLE}:batches", *FAST]
    baseline = tmp_path / "baseline.json"
    code, _, _ = _run([*args, "--write-baseline", str(baseline)], capsys)
    assert code == EXIT_OK and json.loads(baseline.read_text())["format"] == "quantlens.baseline/1"
    code, _, _ = _run([*args, "--baseline", str(baseline)], capsys)
    assert code == EXIT_OK  # the same run is no regression
    out = tmp_path / "after.json"
    code, _, _ = _run([*args, "--set", "activation_n_bits=4", "--baseline", str(baseline), "--json", str(out)], capsys)
    assert code == EXIT_FINDINGS
    payload = json.loads(out.read_text())  # strict JSON: no Infinity/NaN tokens
    assert payload["baseline"]["ok"] is False
    assert payload["baseline"]["settings_changed"] == ["activation_n_bits"]
    regressions = [f for f in payload["findings"] if f["rule"] == "baseline-regression"]
    assert regressions and all(f["severity"] == "error" for f in regressions)
    assert all(f["evidence"]["drop_db"] > 1.0 for f in regressions if "drop_db" in f["evidence"])


def test_an_override_that_matches_nothing_is_reported_at_its_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    project = _project(tmp_path, GOOD + "num_calibration_batches = 2\n\n[quantlens.overrides.stemm]\nquantize = false\n")
    code, _, err = _run(["check", str(project), "--no-progress"], capsys)
    assert code == EXIT_OK  # the analysis itself is valid
    assert "quantlens.toml:6:" in err and "'stemm' matches no quantization point" in err


LAYERS = '''import torch
from torch import nn


def conv_gelu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GELU())  # @helper
'''

NET = '''import torch
from torch import nn

from layers import conv_gelu


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*[conv_gelu(3 if i == 0 else 8, 8) for i in range(3)])  # @loop
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.blocks(x).mean(dim=(2, 3)))


def build():
    torch.manual_seed(0)
    net = Net()
    for block in net.blocks:
        nn.init.normal_(block[0].weight, std=0.25)  # keep every block's range wide
    return net.eval()


def batches():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 3, 8, 8, generator=g) for _ in range(2)]
'''


def test_layers_made_by_a_helper_in_another_file_land_on_its_line(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "layers.py").write_text(LAYERS)
    (tmp_path / "net.py").write_text(NET)
    out = tmp_path / "result.json"
    code, _, _ = _run(["check", str(tmp_path), "--model", f"{tmp_path / 'net.py'}:build",
                       "--data", f"{tmp_path / 'net.py'}:batches", "--json", str(out), "--no-progress"], capsys)
    assert code == EXIT_OK
    payload = json.loads(out.read_text())
    helper = (str(tmp_path / "layers.py"), _line_of(tmp_path / "layers.py", "@helper"))
    loop = (str(tmp_path / "net.py"), _line_of(tmp_path / "net.py", "@loop"))
    blocks = [p for p in payload["points"] if p["name"].startswith("blocks.")]
    assert [p["name"] for p in blocks] == ["blocks.0.0", "blocks.1.0", "blocks.2.0"]
    for p in blocks:
        assert p["op"] == "Conv2d+GELU"
        assert (p["source"]["file"], p["source"]["line"]) == helper
        assert loop in [(s["file"], s["line"]) for s in p["source_stack"]]
    shift = [f for f in payload["findings"] if f["rule"] == "shift-negative"]
    assert len(shift) == 1, "one finding per creating line"
    assert set(shift[0]["points"]) == {"blocks.0.0", "blocks.1.0", "blocks.2.0"}
    assert shift[0]["message"].endswith("(3 of 3 points created at this line)")
    assert (shift[0]["locations"][0]["file"], shift[0]["locations"][0]["line"]) == helper


# --- faults in user code: exit 2, the user's file:line, no traceback ------------------------

USER_MODEL = '''import os
import sys

import torch
from torch import nn

WIDTH = 4  # @top


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(WIDTH, 3)

    def forward(self, x):
        return self.fc(x)  # @forward


def build():  # @build
    torch.manual_seed(0)
    return Net()  # @factory
'''

USER_DATA = '''import sys

import torch


def batches():  # @batches
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 4, generator=g) for _ in range(2)]  # @data
'''

USER_CONFIG = '[quantlens]\nmodel = "model.py:build"\ndata = "data.py:batches"\n'


def _user_project(tmp_path: Path, file: str, marker: str, replacement: str) -> Path:
    """model.py, data.py and quantlens.toml; in ``file``, the line marked ``# @marker`` becomes
    ``replacement`` (its indentation and marker kept, so the marker still finds the line)."""
    texts = {"model.py": USER_MODEL, "data.py": USER_DATA}
    lines = texts[file].splitlines()
    index = next(i for i, line in enumerate(lines) if line.endswith(f"# @{marker}"))
    indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
    lines[index] = f"{indent}{replacement}  # @{marker}"
    texts[file] = "\n".join(lines) + "\n"
    for name, text in texts.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "quantlens.toml").write_text(USER_CONFIG)
    return tmp_path


def _marked(path: Path, marker: str) -> str:
    return f"{path}:{_line_of(path, f'# @{marker}')}:"


USER_FAULTS = [
    # id, file, marker, replacement, where the error is (file, marker) or the config line, message, related def
    ("environ", "model.py", "factory", 'return Net(os.environ["NOPE"])', ("model.py", "factory"),
     "model factory build() raised KeyError: 'NOPE'", ("model.py", "build")),
    ("unprintable", "model.py", "factory", "raise type('Bad', (Exception,), {'__str__': lambda s: 1 / 0})()",
     ("model.py", "factory"), "model factory build() raised Bad: Bad()", ("model.py", "build")),
    ("exit-at-import", "model.py", "top", "sys.exit(3)", ("model.py", "top"),
     "importing model.py called sys.exit(3)", None),
    ("exit-in-factory", "model.py", "factory", "sys.exit(3)", ("model.py", "factory"),
     "model factory build() called sys.exit(3)", ("model.py", "build")),
    ("exit-in-data", "data.py", "data", "sys.exit(3)", ("data.py", "data"),
     "data function batches() called sys.exit(3)", ("data.py", "batches")),
    ("exit-in-forward", "model.py", "forward", "sys.exit(3)", ("model.py", "forward"),
     "Net.forward() on batch 0 of shape (2, 4) called sys.exit(3)", ("data.py", "batches")),
    ("factory-needs-arguments", "model.py", "build", "def build(width, depth):", 2,
     "model factory build() needs arguments (width, depth); it must be callable with none", ("model.py", "build")),
    ("factory-returns-no-module", "model.py", "factory", "return [Net()]", 2,
     "model factory build() returned list, not a torch.nn.Module", ("model.py", "build")),
    ("no-batches", "data.py", "data", "return []", 3,
     "data function batches() produced no batches", ("data.py", "batches")),
    ("string-batches", "data.py", "data", "return ['a', 'b']", 3,
     "data function batches(): batch 0 holds a str and no tensor", ("data.py", "batches")),
]


@pytest.mark.parametrize(("file", "marker", "replacement", "where", "message", "related"),
                         [case[1:] for case in USER_FAULTS], ids=[case[0] for case in USER_FAULTS])
def test_a_fault_in_user_code_is_reported_at_the_users_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, file: str, marker: str,
        replacement: str, where: tuple[str, str] | int, message: str, related: tuple[str, str] | None) -> None:
    """Run from inside the project (as users do): a ``<frozen os>`` frame then resolves under
    the root, which once put a KeyError from ``os.environ`` at ``<frozen os>:679``."""
    project = _user_project(tmp_path, file, marker, replacement).resolve()
    monkeypatch.chdir(project)
    code, out, err = _run(["check", ".", "--no-progress"], capsys)
    assert code == EXIT_USAGE, err
    first = err.splitlines()[0]
    if isinstance(where, int):
        assert first.startswith(f"{project / 'quantlens.toml'}:{where}:"), err
    else:
        assert first.startswith(_marked(project / where[0], where[1])), err
    assert first.endswith(message)
    if related is not None:
        assert f"  see: {project / related[0]}:{_line_of(project / related[0], f'# @{related[1]}')}" in err
    assert "<frozen" not in err and "Traceback" not in err + out


def test_sys_exit_in_user_code_exits_2_from_the_console_script(tmp_path: Path) -> None:
    """The installed entry point in a fresh process: sys.exit(3) in forward is a located
    problem with exit code 2, not a silent exit 3."""
    project = _user_project(tmp_path, "model.py", "forward", "sys.exit(3)").resolve()
    script = Path(sys.executable).parent / "quantlens"
    env = {**os.environ, "QUANTLENS_DEBUG": ""}
    proc = subprocess.run([str(script), "check", str(project), "--no-progress"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == EXIT_USAGE, proc.stderr
    assert proc.stderr.startswith(_marked(project / "model.py", "forward"))
    assert "called sys.exit(3)" in proc.stderr and "Traceback" not in proc.stderr


def test_the_summary_says_how_many_batches_the_errors_come_from(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "result.json"
    code, out, _ = _run(["check", str(MODELS), "--model", f"{SAMPLE}:build", "--data", f"{SAMPLE}:batches",
                         "--no-progress", "--set", "num_calibration_batches=3", "--set", "num_simulation_batches=1",
                         "--fail-on", "never", "--json", str(saved)], capsys)
    assert code == EXIT_OK
    assert "model output (errors measured on the first 1 of 3 batches): SQNR " in out
    payload = json.loads(saved.read_text())
    assert payload["calibration"]["num_batches"] == 3 and payload["calibration"]["simulation_batches"] == 1
    page = tmp_path / "page"
    assert main(["report", "--from-json", str(saved), "--out", str(page)]) == EXIT_OK
    assert "errors measured on the first 1 of 3 batches" in (page / "index.html").read_text()


def test_errors_from_every_batch_say_nothing_more(sample_run: dict) -> None:
    assert sample_run["calibration"]["simulation_batches"] == sample_run["calibration"]["num_batches"] == 2


def test_the_text_report_ends_with_the_top_recommendation_and_the_tally(capsys: pytest.CaptureFixture[str]) -> None:
    """After the findings, one line says what to change first (measured) and counts the
    findings by severity: on low_bit, the global bit width (an error-level finding)."""
    code, out, _ = _run(["check", str(LOW_BIT), "--no-progress", "--fail-on", "never", "--json", "-"], capsys)
    payload = json.loads(out)
    code, out, _ = _run(["check", str(LOW_BIT), "--no-progress", "--fail-on", "never"], capsys)
    assert code == EXIT_OK
    top = payload["top_recommendation"]
    carrier = next(f for f in payload["findings"] if f["rule"] == top["rule"]
                   and (f.get("recommendation") or {}).get("config") == top["change"])
    severities = [f["severity"] for f in payload["findings"]]
    tally = ", ".join(f"{severities.count(s)} {s}{'s' if s != 'info' and severities.count(s) != 1 else ''}"
                      for s in ("error", "warning", "info") if severities.count(s))
    where = f"{Path(carrier['locations'][0]['file']).name}:{carrier['locations'][0]['line']}"
    assert out.rstrip("\n").splitlines()[-1] == (
        f"top recommendation ({top['rule']} at {where}): {top['description']}, output SQNR "
        f"{top['output_sqnr_db']:.1f} -> {top['verified_sqnr_db']:.1f} dB, measured; {tally}")
    assert top["description"] == "activation_n_bits = 8; weights_n_bits = 8"


def test_a_top_measured_on_every_batch_says_so_in_the_closing_line() -> None:
    """mobilenet_like: the simulated batches disagree about z_threshold = 12 (one gains 1 dB,
    another not), so it is measured on all 8 batches, whose unchanged output is not the 2
    simulated batches' SQNR the report's header gives: the closing line names the batches."""
    from quantlens.daemon.text_report import format_verdict
    from tests.analyses import fixture_analysis

    result = fixture_analysis("mobilenet_like")
    top = result.top_recommendation
    assert top is not None and top["batches"] == 8 > result.simulation_batches == 2
    assert abs(top["output_sqnr_db"] - result.output.error.sqnr_db) > 0.1  # another set of batches
    assert (f"output SQNR {top['output_sqnr_db']:.1f} -> {top['verified_sqnr_db']:.1f} dB on all 8 batches, measured"
            in format_verdict(result, None))

"""Loading user files: every failure becomes a problem on the user's line, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantlens.core.config import FuncRef
from quantlens.core.errors import Location, QuantlensError
from quantlens.core.torch_engine.loading import build_model, iterate_batches, load_checkpoint

NET = """import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


def build():
    torch.manual_seed(0)
    return Net()
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _problem(fn, *args, **kwargs):
    with pytest.raises(QuantlensError) as info:
        result = fn(*args, **kwargs)
        if hasattr(result, "__next__"):
            list(result)
    assert len(info.value.problems) == 1
    return info.value.problems[0]


KEY = Location("quantlens.toml", 2)


def test_syntax_error_points_at_the_broken_line(tmp_path):
    path = _write(tmp_path, "net.py", NET.replace("return self.fc(x)", "return self.fc(x"))
    problem = _problem(build_model, FuncRef(path, "build", KEY), [tmp_path])
    assert problem.location.file == str(path.resolve()) and problem.location.line in (11, 12)
    assert problem.message.startswith("syntax error")


def test_import_error_in_user_file(tmp_path):
    path = _write(tmp_path, "net.py", "import not_a_module_anywhere\n" + NET)
    problem = _problem(build_model, FuncRef(path, "build", KEY), [tmp_path])
    assert problem.location.line == 1 and "ModuleNotFoundError" in problem.message


def test_missing_function_is_reported_at_the_config_key_with_the_names_there(tmp_path):
    path = _write(tmp_path, "net.py", NET)
    problem = _problem(build_model, FuncRef(path, "build_model", KEY), [tmp_path])
    assert problem.location == KEY
    assert "has no function 'build_model'" in problem.message and "build" in problem.hint


def test_factory_exception_lands_in_the_factory(tmp_path):
    path = _write(tmp_path, "net.py", NET.replace("    return Net()", "    raise RuntimeError('no GPU here')"))
    problem = _problem(build_model, FuncRef(path, "build", KEY), [tmp_path])
    assert problem.location.line == 16 and "RuntimeError: no GPU here" in problem.message


def test_factory_must_return_a_module(tmp_path):
    path = _write(tmp_path, "net.py", NET + "\n\ndef not_a_model():\n    return 3\n")
    problem = _problem(build_model, FuncRef(path, "not_a_model", KEY), [tmp_path])
    assert "returned int, not a torch.nn.Module" in problem.message and problem.location == KEY


def test_checkpoint_round_trip_and_mismatch(tmp_path):
    path = _write(tmp_path, "net.py", NET)
    model, _ = build_model(FuncRef(path, "build"), [tmp_path])
    ckpt = tmp_path / "ok.pt"
    with torch.no_grad():
        model.fc.weight.fill_(0.25)
    torch.save({"state_dict": model.state_dict()}, ckpt)
    loaded, _ = build_model(FuncRef(path, "build"), [tmp_path], ckpt, KEY)
    assert torch.equal(loaded.fc.weight, torch.full((3, 4), 0.25))
    wrong = tmp_path / "wrong.pt"
    torch.save({"fc.weight": torch.zeros(5, 4), "fc.bias": torch.zeros(5)}, wrong)
    problem = _problem(load_checkpoint, loaded, wrong, KEY)
    assert "does not fit the model" in problem.message and "size mismatch" in problem.message
    assert problem.location == KEY


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    path = _write(tmp_path, "net.py", NET)
    model, _ = build_model(FuncRef(path, "build"), [tmp_path])
    evil = tmp_path / "evil.pt"
    torch.save({"fc.weight": torch.zeros(3, 4), "fn": Path("x")}, evil)  # arbitrary object: needs pickle
    problem = _problem(load_checkpoint, model, evil, KEY)
    assert "cannot load checkpoint" in problem.message and "weights_only" in problem.hint


def test_garbage_checkpoint(tmp_path):
    path = _write(tmp_path, "net.py", NET)
    model, _ = build_model(FuncRef(path, "build"), [tmp_path])
    junk = _write(tmp_path, "junk.pt", "not a checkpoint")
    assert "cannot load checkpoint junk.pt" in _problem(load_checkpoint, model, junk, KEY).message


DATA = """import torch


def empty():
    return []


def with_nan():
    x = torch.ones(2, 4)
    x[0, 1] = float("nan")
    yield x


def fails_later():
    yield torch.ones(2, 4)
    raise OSError("disk gone")


def strings():
    yield "hello"


def pairs():
    yield (torch.ones(2, 4), torch.zeros(2, dtype=torch.long))


def numpy_batches():
    import numpy as np
    yield np.ones((2, 4), dtype=np.float32)
"""


@pytest.mark.parametrize("function,message,line", [
    ("empty", "produced no batches", 2),
    ("with_nan", "batch 0 contains 1 NaN/Inf input value(s)", 2),
    ("fails_later", "raised while producing batch 1 OSError: disk gone", 16),
    ("strings", "batch 0 holds a str", 2),
])
def test_bad_data(tmp_path, function, message, line):
    path = _write(tmp_path, "data.py", DATA)
    problem = _problem(iterate_batches, FuncRef(path, function, KEY), [tmp_path], torch.device("cpu"))
    assert message in problem.message
    assert problem.location.line == line


def test_batches_as_tuples_dicts_and_numpy(tmp_path):
    path = _write(tmp_path, "data.py", DATA)
    pair = next(iter(iterate_batches(FuncRef(path, "pairs"), [tmp_path], torch.device("cpu"), with_labels=True)))
    assert pair.labels.dtype == torch.long and pair.args[0].shape == (2, 4)
    arr = next(iter(iterate_batches(FuncRef(path, "numpy_batches"), [tmp_path], torch.device("cpu"))))
    assert isinstance(arr.args[0], torch.Tensor)

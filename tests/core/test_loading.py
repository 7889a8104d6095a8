"""Loading user files: every failure becomes a problem on the user's line, nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from quantlens.core.config import FuncRef
from quantlens.core.errors import Location, QuantlensError
from quantlens.core.torch_engine.calibrate import calibrate_batches
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
    text = NET + "\n\ndef not_a_model():\n    return 3\n"
    path = _write(tmp_path, "net.py", text)
    problem = _problem(build_model, FuncRef(path, "not_a_model", KEY), [tmp_path])
    assert "model factory not_a_model() returned int, not a torch.nn.Module" in problem.message
    assert problem.location == KEY
    assert [(r.file, r.line) for r in problem.related] == [(str(path), _line(text, "def not_a_model"))]


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


def _line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("function,message,line", [
    ("empty", "data function empty() produced no batches", 2),
    ("with_nan", "data function with_nan(): batch 0 contains 1 NaN/Inf input value(s)", 2),
    ("fails_later", "data function fails_later() while producing batch 1 raised OSError: disk gone", 16),
    ("strings", "data function strings(): batch 0 holds a str", 2),
])
def test_bad_data(tmp_path, function, message, line):
    """Each message names the function and the batch; the def line is always related."""
    path = _write(tmp_path, "data.py", DATA)
    problem = _problem(iterate_batches, FuncRef(path, function, KEY), [tmp_path], torch.device("cpu"))
    assert message in problem.message
    assert problem.location.line == line
    assert [(r.file, r.line) for r in problem.related] == [(str(path), _line(DATA, f"def {function}()"))]


def test_batches_as_tuples_dicts_and_numpy(tmp_path):
    path = _write(tmp_path, "data.py", DATA)
    pair = next(iter(iterate_batches(FuncRef(path, "pairs"), [tmp_path], torch.device("cpu"), with_labels=True)))
    assert pair.labels.dtype == torch.long and pair.args[0].shape == (2, 4)
    arr = next(iter(iterate_batches(FuncRef(path, "numpy_batches"), [tmp_path], torch.device("cpu"))))
    assert isinstance(arr.args[0], torch.Tensor)


# --- which file is the user's -------------------------------------------------------------


def test_workspace_takes_only_real_user_files(tmp_path, monkeypatch):
    import os
    import sysconfig

    import quantlens.core
    from quantlens.core.workspace import Workspace

    monkeypatch.chdir(tmp_path)  # "<frozen os>" resolves under the root from here: the bug it was
    workspace = Workspace([tmp_path])
    assert workspace.contains(str(tmp_path / "model.py"))
    assert workspace.contains(str(tmp_path / "pkg" / "layers.py"))
    for pseudo in ("<frozen os>", "<string>", "<stdin>", ""):
        assert not workspace.contains(pseudo), pseudo
    for installed in ("site-packages", "dist-packages"):
        assert not workspace.contains(str(tmp_path / ".venv" / "lib" / installed / "torch" / "nn" / "functional.py"))
    assert not workspace.contains("/elsewhere/model.py")

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    assert Path(os.__file__).resolve().is_relative_to(stdlib.resolve())
    assert not Workspace([stdlib.parent]).contains(os.__file__)  # a root above the stdlib

    repo = Path(quantlens.core.__file__).resolve().parents[1]  # holds core/ (quantlens itself) and tests/
    assert not Workspace([repo]).contains(str(Path(quantlens.core.__file__).parent / "errors.py"))
    assert Workspace([repo]).contains(str(repo / "tests" / "core" / "models" / "sample_net.py"))


def test_a_library_error_lands_on_the_user_line_that_called_the_library(tmp_path, monkeypatch):
    """``os.environ["NOPE"]`` raises inside ``<frozen os>``; the user's subscript is the line."""
    text = NET.replace("    return Net()", '    os.environ["NOPE"]  # @env\n    return Net()')
    path = _write(tmp_path, "net.py", "import os\n" + text)
    monkeypatch.chdir(tmp_path)
    problem = _problem(build_model, FuncRef(path, "build", KEY), [tmp_path])
    assert problem.location == Location(str(path), _line(path.read_text(), "@env"))
    assert problem.message == "model factory build() raised KeyError: 'NOPE'"
    assert [r.line for r in problem.related] == [_line(path.read_text(), "def build")]


def test_the_def_line_is_not_repeated_when_it_is_the_failing_line(tmp_path):
    path = _write(tmp_path, "net.py", NET + "\n\ndef one_line(): raise ValueError('x')\n")
    problem = _problem(build_model, FuncRef(path, "one_line", KEY), [tmp_path])
    assert problem.location.line == _line(path.read_text(), "def one_line") and problem.related == ()


# --- functions that need arguments, exceptions that cannot be printed ----------------------


def test_a_factory_that_needs_arguments_is_reported_before_calling_it(tmp_path):
    path = _write(tmp_path, "net.py", NET.replace("def build():", "def build(x, y, z=1, *rest, **options):"))
    problem = _problem(build_model, FuncRef(path, "build", KEY), [tmp_path])
    assert problem.message == "model factory build() needs arguments (x, y); it must be callable with none"
    assert problem.location == KEY and problem.code == "load"
    assert [(r.file, r.line) for r in problem.related] == [(str(path), _line(NET, "def build"))]


def test_a_data_function_that_needs_arguments_or_returns_no_iterable(tmp_path):
    path = _write(tmp_path, "data.py", DATA + "\n\ndef needs(n):\n    return []\n\n\ndef number():\n    return 3\n")
    problem = _problem(iterate_batches, FuncRef(path, "needs", KEY), [tmp_path], torch.device("cpu"))
    assert problem.message == "data function needs() needs arguments (n); it must be callable with none"
    assert problem.location == KEY and [r.line for r in problem.related] == [_line(path.read_text(), "def needs")]
    problem = _problem(iterate_batches, FuncRef(path, "number", KEY), [tmp_path], torch.device("cpu"))
    assert problem.message == "data function number() returned int, not an iterable of batches"
    assert problem.location == KEY and [r.line for r in problem.related] == [_line(path.read_text(), "def number")]


UNPRINTABLE = '''

class Unprintable(Exception):
    def __str__(self):
        raise ValueError("no str")


class Hopeless(Unprintable):
    def __repr__(self):
        raise ValueError("no repr")


def bad_str():
    raise Unprintable(1)  # @str


def bad_both():
    raise Hopeless(1)  # @both
'''


@pytest.mark.parametrize("function,message,marker", [
    ("bad_str", "model factory bad_str() raised Unprintable: Unprintable(1)", "@str"),
    ("bad_both", "model factory bad_both() raised Hopeless: <unprintable Hopeless>", "@both"),
])
def test_an_exception_whose_str_raises_still_gives_a_message(tmp_path, function, message, marker):
    path = _write(tmp_path, "net.py", NET + UNPRINTABLE)
    problem = _problem(build_model, FuncRef(path, function, KEY), [tmp_path])
    assert problem.message == message
    assert problem.location == Location(str(path), _line(path.read_text(), marker))


# --- sys.exit is caught where user code runs; KeyboardInterrupt is not ----------------------


def test_sys_exit_at_import_in_the_factory_and_in_the_data(tmp_path):
    text = "import sys\n" + NET.replace("from torch import nn\n", "from torch import nn\nsys.exit(3)  # @exit\n")
    path = _write(tmp_path, "net.py", text)
    problem = _problem(build_model, FuncRef(path, "build", KEY), [tmp_path])
    assert problem.message == "importing net.py called sys.exit(3)" and problem.code == "user-code"
    assert problem.location == Location(str(path), _line(path.read_text(), "@exit"))

    path = _write(tmp_path, "net.py", "import sys\n" + NET.replace("    return Net()", "    sys.exit('bye')  # @exit"))
    problem = _problem(build_model, FuncRef(path, "build", KEY), [tmp_path])
    assert problem.message == "model factory build() called sys.exit('bye')"
    assert problem.location == Location(str(path), _line(path.read_text(), "@exit"))
    assert [r.line for r in problem.related] == [_line(path.read_text(), "def build")]

    text = "import sys\n" + DATA.replace('    raise OSError("disk gone")', "    sys.exit()  # @exit")
    data = _write(tmp_path, "data.py", text)
    problem = _problem(iterate_batches, FuncRef(data, "fails_later", KEY), [tmp_path], torch.device("cpu"))
    assert problem.message == "data function fails_later() while producing batch 1 called sys.exit()"
    assert problem.location == Location(str(data), _line(data.read_text(), "@exit"))


def test_sys_exit_in_forward_is_located_and_names_the_batch(tmp_path):
    exits = "        if x.sum() > 100:\n            sys.exit(3)  # @exit\n        return self.fc(x)"
    text = "import sys\n" + NET.replace("        return self.fc(x)", exits)
    path = _write(tmp_path, "net.py", text)
    model, sites = build_model(FuncRef(path, "build"), [tmp_path])
    batches = [torch.ones(2, 4), torch.full((2, 4), 20.0)]
    problem = _problem(calibrate_batches, model, batches, [tmp_path], sites)
    assert problem.message == "Net.forward() on batch 1 of shape (2, 4) called sys.exit(3)" and problem.code == "user-code"
    assert problem.location == Location(str(path), _line(text, "@exit"))


def test_keyboard_interrupt_is_not_swallowed(tmp_path):
    path = _write(tmp_path, "net.py", NET.replace("    return Net()", "    raise KeyboardInterrupt"))
    with pytest.raises(KeyboardInterrupt):
        build_model(FuncRef(path, "build", KEY), [tmp_path])


def test_workspace_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, quantlens.core.workspace, quantlens.core.errors; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr

"""Point discovery on tests/core/models/sample_net.py: fusion, names, creating lines, call sites."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from quantlens.core.torch_engine.calibrate import calibrate_batches

MODELS = Path(__file__).resolve().parent / "models"


def test_points_in_execution_order_with_deployment_fusion(calibration):
    ops = [(p.name, p.op) for p in calibration.points]
    assert ops == [
        ("input", "input"),  # the model input (MCT quantizes it)
        ("stem.0", "Conv2d+BatchNorm2d+ReLU6"),
        ("blocks.0.body.0", "Conv2d+BatchNorm2d+ReLU6"),
        ("blocks.0.add_0", "add"),
        ("blocks.1.body.0", "Conv2d+BatchNorm2d+ReLU6"),
        ("blocks.1.add_0", "add"),
        ("side", "Conv2d+relu"),  # functional F.relu fused with the conv
        ("cat_0", "cat"),
        ("lonely_bn", "BatchNorm2d"),  # no conv before it: not folded, its own point
        ("gelu", "GELU"),
        ("encoder.self_attn", "MultiheadAttention"),
        ("encoder.add_0", "add"),
        ("encoder.norm1", "LayerNorm"),
        ("encoder.linear1", "Linear+relu"),
        ("encoder.linear2", "Linear"),
        ("encoder.add_1", "add"),
        ("encoder.norm2", "LayerNorm"),
        ("fc", "Linear"),
    ]
    stem = calibration.point("stem.0")
    assert stem.modules == ["stem.0", "stem.1", "stem.2"]
    assert stem.folded_bn == "stem.1" and stem.weight_module == "stem.0"
    assert stem.activation == "relu6"
    assert calibration.point("side").output_function == "relu_0"  # F.relu at the top level of forward
    assert calibration.point("cat_0").num_inputs == 2


def test_sources_are_the_creating_lines(calibration, sample):
    file = str((MODELS / "sample_net.py").resolve())
    line = sample.line_of
    stem = calibration.point("stem.0")
    assert stem.source.file == file
    assert stem.source.line == line("helper-conv")  # made inside the helper
    assert stem.source_stack[0].line == line("stem")  # ... called from here
    block = calibration.point("blocks.1.body.0")
    assert [loc.line for loc in block.source_stack[:2]] == [line("block-body"), line("blocks")]
    assert calibration.point("fc").source.line == line("fc")
    assert calibration.point("lonely_bn").source.line == line("lonely-bn")
    # library code (TransformerEncoderLayer): the workspace line that built it
    assert calibration.point("encoder.linear1").source.line == line("library")
    assert calibration.point("encoder.add_0").source.line == line("encoder-call")
    # functional ops: their call site
    assert calibration.point("cat_0").source.line == line("cat")
    assert calibration.point("blocks.0.add_0").source.line == line("block-add")
    assert calibration.point("side").call_site.line == line("functional-relu")


def test_statistics_do_not_depend_on_hooks_order(built, sample):
    """Calibrating twice gives identical statistics (deterministic, no state left behind)."""
    model, sites = built
    a = calibrate_batches(model, sample.batches(2), [MODELS], sites)
    b = calibrate_batches(model, sample.batches(2), [MODELS], sites)
    for name, stats in a.stats.items():
        assert (stats.counts == b.stats[name].counts).all()
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_model_without_points_is_a_clear_error():
    from quantlens.core.errors import QuantlensError

    model = nn.Sequential(nn.Flatten(), nn.Dropout())
    with pytest.raises(QuantlensError, match="no quantization points"):
        calibrate_batches(model, [torch.ones(2, 3)], [MODELS])


def test_forward_exception_is_located_on_the_users_line(tmp_path):
    from quantlens.core.config import FuncRef
    from quantlens.core.errors import QuantlensError
    from quantlens.core.torch_engine.loading import build_model

    src = tmp_path / "bad.py"
    src.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Bad(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(4, 4)\n\n"
        "    def forward(self, x):\n        y = self.fc(x)\n        raise ValueError('boom')\n\n"
        "def build():\n    return Bad()\n"
    )
    model, sites = build_model(FuncRef(src, "build"), [tmp_path])
    with pytest.raises(QuantlensError) as info:
        calibrate_batches(model, [torch.ones(2, 4)], [tmp_path], sites)
    problem = info.value.problems[0]
    assert problem.location.file == str(src.resolve()) and problem.location.line == 11
    assert "ValueError: boom" in problem.message

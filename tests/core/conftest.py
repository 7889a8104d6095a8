"""Shared test inputs: the sample model (tests/core/models/sample_net.py), calibrated once."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from quantlens.core.config import FuncRef
from quantlens.core.settings import QuantSettings

MODELS = Path(__file__).resolve().parent / "models"


def load_sample() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sample_net_for_tests", MODELS / "sample_net.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sample_net_for_tests"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sample() -> ModuleType:
    return load_sample()


@pytest.fixture(scope="session")
def built(sample):
    """(model, construction sites) built through the real loader."""
    from quantlens.core.torch_engine.loading import build_model

    return build_model(FuncRef(MODELS / "sample_net.py", "build"), [MODELS])


@pytest.fixture(scope="session")
def calibration(built, sample):
    from quantlens.core.torch_engine.calibrate import calibrate_batches

    model, sites = built
    return calibrate_batches(model, sample.batches(), [MODELS], sites)


@pytest.fixture(scope="session")
def analysis(built, sample):
    from quantlens.core.torch_engine.pipeline import analyze_model

    model, sites = built
    return analyze_model(model, lambda: sample.batches(), QuantSettings(), [MODELS], sites=sites,
                         simulation_batches=None,  # errors over every batch, as the references compute them
                         sensitivity=True)

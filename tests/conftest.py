import pytest
import torch

from flowblending_accel import tiny_models
from flowblending_accel.targets import folders


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture
def wan_pair():
    return tiny_models.tiny_wan_pair()


@pytest.fixture
def wan_pipe(wan_pair):
    return tiny_models.tiny_wan_pipeline(wan_pair[0])


@pytest.fixture
def ltx_pair():
    return tiny_models.tiny_ltx_pair()


@pytest.fixture
def unet_pair():
    return tiny_models.tiny_unet_pair()


@pytest.fixture
def no_loading(monkeypatch):
    """Any folder pipeline built fails the test: the input must be refused before a model is loaded."""

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was refused")

    monkeypatch.setattr(folders, "folder_target", loaded)

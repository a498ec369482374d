import pytest
import torch

from flowblending_accel import tiny_models


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

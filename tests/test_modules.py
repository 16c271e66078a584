"""The ground floor's module utilities: where a model lives, a deep copy, and parametrizations turned back into
plain parameters without touching the model they were copied from (a masked copy is tested with the pass
framework, tests/passes/test_base.py)."""

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from compressor.modules import copy_model, model_device, unparametrize


class _Doubled(nn.Module):
    def forward(self, weight):
        return 2 * weight


def test_model_device_is_the_first_parameters_then_buffers_then_the_cpu():
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.BatchNorm1d(2, affine=False)) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")
    meta = nn.Linear(2, 2, device="meta")
    assert model_device(meta) == torch.device("meta")


def test_copy_model_of_a_plain_model_is_a_deep_copy():
    model = nn.Linear(4, 2)
    copied = copy_model(model)
    assert copied is not model and copied.weight is not model.weight
    assert torch.equal(copied.weight, model.weight)


def test_unparametrize_keeps_the_value_or_the_original_and_leaves_the_source_alone():
    torch.manual_seed(0)
    source = nn.Linear(3, 2)
    parametrize.register_parametrization(source, "weight", _Doubled())
    original = source.parametrizations.weight.original.detach().clone()

    kept, restored = copy_model(source), copy_model(source)
    unparametrize(kept)
    unparametrize(restored, keep_value=False)

    assert type(kept) is nn.Linear and isinstance(kept.weight, nn.Parameter)
    assert torch.equal(kept.weight, 2 * original)
    assert torch.equal(restored.weight, original)
    # The copies shared the source's generated class; the source is still parametrized.
    assert parametrize.is_parametrized(source, "weight") and torch.equal(source.weight, 2 * original)

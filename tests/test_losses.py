"""Task losses and optimizers of the training loop: the bipolar softplus of eq. 6 (seed 000), its gradient, the
softmax offset identity of its appendix A, and Adam with L2 or decoupled weight decay."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from compressor.errors import CompressorError
from compressor.losses import BipolarSoftplusLoss, bipolar_softplus, task_criterion
from compressor.training import TrainConfig, check_config, train, weights_optimizer


def eq6(outputs: torch.Tensor, targets: torch.Tensor, beta: float) -> float:
    """Eq. 6 written out element by element: 1/(βN) Σ log(1 + exp(−β·sgn(T)·Y))."""
    total = 0.0
    for y, t in zip(outputs.flatten().tolist(), targets.flatten().tolist()):
        sign = (t > 0) - (t < 0)
        total += math.log(1 + math.exp(-beta * sign * y))
    return total / (beta * outputs.numel())


@pytest.mark.parametrize("beta", [0.5, 1.0, 3.0])
def test_bipolar_softplus_is_equation_6(beta):
    generator = torch.Generator().manual_seed(0)
    outputs = torch.randn(7, 5, generator=generator, dtype=torch.float64) * 3
    targets = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    targets[0, :2] = 0
    assert bipolar_softplus(outputs, targets, beta).item() == pytest.approx(eq6(outputs, targets, beta), rel=1e-12)
    assert bipolar_softplus(outputs, targets, beta) >= 0


def test_at_beta_one_it_is_binary_cross_entropy_on_one_hot_targets():
    generator = torch.Generator().manual_seed(1)
    outputs = torch.randn(16, 10, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (16,), generator=generator)
    onehot = F.one_hot(labels, 10).to(torch.float64)
    expected = F.binary_cross_entropy_with_logits(outputs, onehot)
    assert BipolarSoftplusLoss()(outputs, labels).item() == pytest.approx(expected.item(), rel=1e-12)
    assert bipolar_softplus(outputs, 2 * onehot - 1).item() == pytest.approx(expected.item(), rel=1e-12)


def test_only_the_sign_of_a_target_counts():
    generator = torch.Generator().manual_seed(2)
    outputs = torch.randn(6, 4, generator=generator)
    targets = torch.randn(6, 4, generator=generator)
    for scale in (0.01, 7.0, 1e4):
        assert torch.equal(bipolar_softplus(outputs, scale * targets), bipolar_softplus(outputs, targets))


def test_the_gradient_is_the_analytic_one_and_zero_for_a_zero_target():
    beta = 2.0
    generator = torch.Generator().manual_seed(3)
    outputs = torch.randn(5, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    targets = torch.randn(5, 3, generator=generator, dtype=torch.float64)
    targets[1, 2] = 0
    bipolar_softplus(outputs, targets, beta).backward()
    signs = torch.sign(targets)
    analytic = -signs * torch.sigmoid(-beta * signs * outputs.detach()) / outputs.numel()
    assert torch.allclose(outputs.grad, analytic, rtol=1e-12, atol=0)
    assert outputs.grad[1, 2] == 0
    # A zero target contributes log 2 / β whatever the output.
    alone = bipolar_softplus(torch.tensor([[123.0]]), torch.tensor([[0.0]]), beta)
    assert alone.item() == pytest.approx(math.log(2) / beta)


def test_sum_classes_divides_by_the_batch_only():
    outputs, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    literal = BipolarSoftplusLoss()(outputs, labels)
    assert BipolarSoftplusLoss(sum_classes=True)(outputs, labels).item() == pytest.approx(10 * literal.item(), rel=1e-6)


def test_softmax_of_a_sum_of_offset_outputs_is_softmax_of_the_scaled_output():
    """Appendix A: with Y_m = Y_0 + β_m (scalar offsets), softmax(Σ_{m<M} Y_m) = softmax(M·Y_0)."""
    generator = torch.Generator().manual_seed(4)
    y0 = torch.randn(3, 10, generator=generator, dtype=torch.float64)
    offsets = torch.randn(6, generator=generator, dtype=torch.float64) * 5
    summed = sum(y0 + offset for offset in offsets)
    assert torch.allclose(torch.softmax(summed, dim=1), torch.softmax(len(offsets) * y0, dim=1), atol=1e-6)


def test_bad_loss_settings_are_refused():
    with pytest.raises(CompressorError, match="β > 0"):
        bipolar_softplus(torch.zeros(1, 2), torch.ones(1, 2), beta=0)
    with pytest.raises(CompressorError, match="label smoothing"):
        task_criterion("bsp", label_smoothing=0.1)
    with pytest.raises(CompressorError, match="unknown loss"):
        check_config(TrainConfig(loss="mse"))
    with pytest.raises(CompressorError, match="needs --optimizer adam"):
        check_config(TrainConfig(wd_mode="decoupled"))
    with pytest.raises(CompressorError, match="unknown optimizer"):
        check_config(TrainConfig(optimizer="rmsprop"))


def test_adam_takes_l2_weight_decay_in_the_gradient_and_adamw_decouples_it():
    parameter = nn.Parameter(torch.ones(3))
    l2 = weights_optimizer([{"params": [parameter]}], TrainConfig(optimizer="adam", lr=0.1, weight_decay=0.5))
    decoupled = weights_optimizer([{"params": [parameter]}], TrainConfig(optimizer="adam", lr=0.1, weight_decay=0.5,
                                                                        wd_mode="decoupled"))
    sgd = weights_optimizer([{"params": [parameter]}], TrainConfig())
    assert type(l2) is torch.optim.Adam and type(decoupled) is torch.optim.AdamW and type(sgd) is torch.optim.SGD
    assert l2.defaults["weight_decay"] == decoupled.defaults["weight_decay"] == 0.5
    assert sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    # With no task gradient, L2 inside Adam is normalised to a step of lr; AdamW shrinks by lr·wd only.
    for optimizer, expected in ((l2, 1 - 0.1), (decoupled, 1 - 0.1 * 0.5)):
        with torch.no_grad():
            parameter.fill_(1.0)
        parameter.grad = torch.zeros(3)
        optimizer.step()
        assert torch.allclose(parameter.detach(), torch.full((3,), expected), atol=1e-6)


def test_the_loop_trains_under_the_loss_it_is_given():
    """At learning rate 0 the epoch's mean task loss is the bipolar softplus of the model's outputs over the
    training set (a model without BatchNorm, so training mode computes what eval mode does)."""
    generator = torch.Generator().manual_seed(5)
    images, labels = torch.randn(40, 6, generator=generator), torch.randint(0, 4, (40,), generator=generator)
    loader = DataLoader(TensorDataset(images, labels), batch_size=16)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    for loss, criterion in (("bsp", BipolarSoftplusLoss()), ("ce", nn.CrossEntropyLoss())):
        result = train(model, loader, loader, TrainConfig(epochs=1, lr=0.0, loss=loss, optimizer="adam"),
                       progress=False)
        with torch.no_grad():
            expected = criterion(model(images), labels).item()
        assert result.history[0].train_loss == pytest.approx(expected, rel=1e-5)

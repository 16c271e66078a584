"""Budget-aware adaptive sparsity: trainable per-layer thresholds under a global parameter/FLOPs budget.

The seed paper is "Weight Pruning via Adaptive Sparsity Loss" (Retsinas, Elafrou, Goumas, Maragos). Each
prunable layer i gets one trainable scalar r_i; its pruning bound is b_i = r_i·σ_i (σ_i the standard deviation
of the layer's weights, a constant for the gradient), and the layer computes with W̃ = b·T(W/b), T the
hard-shrink at 1. The backward pass is straight-through for W, so pruned weights keep learning and can come
back, while r_i receives the paper's appendix gradient ∂L/∂b = Σ ((w̃ − w)/b)·∂L/∂w̃: only pruned weights
move a threshold through the task loss. Under a Gaussian assumption a layer's sparsity is s_i = erf(r_i/√2),
which makes the budget differentiable; the budget loss (squared by default, or hinge, avg, unconstrained)
pulls the weighted density towards the budget, and the task loss decides which layers pay for it.

The Gaussian estimate misses the budget by about half a point, so the run ends with an exact correction: all
learned bounds are scaled by one common factor (keeping the learned allocation) until the counted global
sparsity equals the target, the masks are frozen, and the last `finetune_fraction` of the epochs train with
them fixed.
`fixed-ga` and `fixed-bs` are the paper's fixed-allocation baselines (uniform per-layer sparsity, bound from
the Gaussian formula or from the exact weight count).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from compressor.counting import count_layer_macs, prunable_layers
from compressor.data import DataBundle
from compressor.errors import CompressorError
from compressor.methods.base import Method, register_method
from compressor.options import method_flag, parse_fraction
from compressor.training import TrainConfig

LOSSES = ("squared", "hinge", "avg", "unconstrained", "fixed-ga", "fixed-bs")
FIXED_LOSSES = ("fixed-ga", "fixed-bs")
# Bisection steps for the common scale of the final correction: far below one weight's share of any model.
CORRECTION_STEPS = 60
# Doublings allowed while looking for a scale that prunes enough; 2^64 times any learned bound covers every
# finite weight, so running out means the bounds themselves are unusable (zero or NaN).
CORRECTION_DOUBLINGS = 64
MIN_BOUND = 1e-12
# r is kept above zero: at r = 0 no weight is pruned and the threshold would get no task-loss signal.
MIN_RATIO = 1e-3


def _parse_loss(text: str) -> str:
    if text not in LOSSES:
        raise CompressorError(f"--budget-loss must be one of {', '.join(LOSSES)}, not {text!r}")
    return text


@dataclass
class BudgetConfig:
    """Hyper-parameters; the defaults are the paper's reference code's, except where a comment says why not."""

    loss: str = field(default="squared", metadata=method_flag(
        "--budget-loss", f"budget loss of method budget: {', '.join(LOSSES)} (default squared)", _parse_loss))
    flops_target: float | None = field(default=None, metadata=method_flag(
        "--flops-target", "method budget: also reach this MAC sparsity, as 70%% or 0.7",
        lambda text: parse_fraction(text, "--flops-target")))
    lambda_params: float = 10.0
    lambda_flops: float = 10.0
    min_weights: int = 1000
    # r starts where the predicted sparsity is this fraction of the target.
    init_fraction: float = 0.6
    # Thresholds train at this fraction of the weights' learning rate, without weight decay. The paper used
    # 1/100 over ~390 steps per epoch; on small data (digits: 23 steps per epoch) thresholds that slow never
    # reach the budget before the correction, so the default is 1/10 (the paper's ratio: threshold_lr_scale=0.01).
    threshold_lr_scale: float = 0.1
    # r is kept in [MIN_RATIO, max_ratio]; erf(4/√2) ≈ 99.994% sparsity.
    max_ratio: float = 4.0
    # Share of the epochs, at the end of the run, that train with the exactly corrected masks fixed; early
    # enough that the learning rate can still repair what the correction removed.
    finetune_fraction: float = 0.3


class _HardShrinkThreshold(torch.autograd.Function):
    """W̃ = b·T(W/b): zero below the bound; straight-through for W, the appendix gradient for b."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        # In place on the fresh |w| tensor: a float 0/1 mask without the slower bool compare-and-multiply.
        kept = weight.abs().ge_(bound)
        ctx.save_for_backward(weight, kept, bound)
        return weight * kept

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight, kept, bound = ctx.saved_tensors
        if not ctx.needs_input_grad[1]:
            return grad, None
        # (w̃ − w)/b is −w/b on pruned weights and 0 on kept ones: ∂L/∂b = −Σ_pruned w·∂L/∂w̃ / b. With b = 0
        # nothing is pruned and the sum is 0; the floor keeps 0/0 from turning r into NaN.
        grad_bound = -torch.dot((weight * grad).flatten(), (1 - kept).flatten()) / bound.clamp_min(MIN_BOUND)
        return grad, grad_bound.reshape(bound.shape)


class AdaptiveThreshold(nn.Module):
    """Parametrization of a layer's weight with a trainable threshold ratio r (bound = r·σ).

    Once `freeze` is called it multiplies by a fixed mask instead, which is what the masked fine-tune and
    the compiler's BakeMasks pass see.
    """

    def __init__(self, ratio: float, weight_shape: torch.Size, trainable: bool = True,
                 device: torch.device | str | None = None):
        super().__init__()
        # On the weight's device: the parametrization computes with the weight, and a frozen mask multiplies it.
        self.ratio = nn.Parameter(torch.tensor(float(ratio), device=device), requires_grad=trainable)
        self.register_buffer("mask", torch.ones(weight_shape, device=device))
        self.register_buffer("frozen", torch.tensor(False, device=device))
        # An exact bound set from outside (fixed-bs); NaN while the bound comes from r.
        self.register_buffer("exact_bound", torch.tensor(float("nan"), device=device))
        # The two buffers above as Python flags, which forward reads: reading a buffer's value there would make
        # the CPU wait for the GPU once per layer and step. Kept in step by freeze, set_exact_bound and loading.
        self._is_frozen = False
        self._has_exact_bound = False

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._is_frozen = bool(self.frozen)
        self._has_exact_bound = not bool(torch.isnan(self.exact_bound))

    def set_exact_bound(self, bound: float) -> None:
        self.exact_bound.fill_(bound)
        self._has_exact_bound = True

    def bound(self, weight: torch.Tensor) -> torch.Tensor:
        if self._has_exact_bound:
            return self.exact_bound
        # σ is a constant for the gradient (the paper's choice): only r learns the bound.
        return self.ratio * weight_std(weight.detach())

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self._is_frozen:
            return weight * self.mask
        return _HardShrinkThreshold.apply(weight, self.bound(weight))

    def freeze(self, mask: torch.Tensor) -> None:
        self.mask.copy_(mask)
        self.frozen.fill_(True)
        self._is_frozen = True
        # A frozen threshold learns nothing more; saying so lets data-parallel training leave it out.
        self.ratio.requires_grad_(False)


def weight_std(weight: torch.Tensor) -> torch.Tensor:
    """Population standard deviation of all entries (the σ of the Gaussian model)."""
    return weight.std(correction=0)


def erf_sparsity(ratio: torch.Tensor) -> torch.Tensor:
    """s = erf(r/√2): the fraction of a zero-mean Gaussian's mass within r standard deviations."""
    return torch.erf(ratio / math.sqrt(2))


def ratio_for_sparsity(sparsity: float) -> float:
    """The inverse: r = √2·erfinv(s)."""
    # A number, not a model tensor: computed on the CPU whatever the default device.
    return math.sqrt(2) * torch.erfinv(torch.tensor(sparsity, dtype=torch.float64, device="cpu")).item()


@register_method
class BudgetMethod(Method):
    """Adaptive per-layer thresholds trained under a global budget, then an exact correction."""

    name = "budget"
    Config = BudgetConfig
    patterns = ("unstructured",)
    # Thresholds learn while the weights train, so the run is longer and faster than a masked fine-tune; 0.1
    # (the paper's CIFAR rate) diverges on the BatchNorm-free LeNets, 0.05 trains every zoo family.
    default_epochs = 10
    default_lr = 0.05

    def __init__(self, target, pattern="unstructured", config=None, run=None):
        super().__init__(target, pattern, config, run)
        _parse_loss(self.config.loss)
        if target is None and self.config.loss != "unconstrained":
            raise CompressorError(f"method budget with loss {self.config.loss} needs --target")
        if self.config.flops_target is not None and self.config.loss not in ("squared", "hinge"):
            raise CompressorError("--flops-target works with the squared and hinge budget losses")
        if target is not None and self.config.loss == "unconstrained":
            raise CompressorError("the unconstrained budget loss finds its own sparsity: drop --target")
        c = self.config
        if (c.min_weights < 1 or not 0 < c.init_fraction <= 1 or not 0 <= c.finetune_fraction <= 1
                or c.threshold_lr_scale <= 0 or c.max_ratio <= 0 or c.lambda_params < 0 or c.lambda_flops < 0):
            raise CompressorError("method budget needs min_weights >= 1, 0 < init_fraction <= 1, "
                                  "0 <= finetune_fraction <= 1, threshold_lr_scale > 0, max_ratio > 0, lambdas >= 0")
        self.layers: dict[str, nn.Module] = {}
        self.param_shares = torch.zeros(0)
        self.mac_shares = torch.zeros(0)
        self.total_weights = 0
        self.lr = 0.0
        self.freeze_epoch = 0
        self.frozen = False
        self.predicted: dict[str, float] = {}

    # --- preparing the model ------------------------------------------------------------------------------

    def prepare(self, model: nn.Module, data: DataBundle) -> nn.Module:
        layers = prunable_layers(model)
        macs = count_layer_macs(model, tuple(model.input_shape))
        self.total_weights = sum(layer.weight.numel() for _, layer in layers)
        total_macs = sum(m.macs for m in macs.values())
        chosen = []
        for name, layer in layers:
            if layer.weight.numel() < self.config.min_weights:
                self.skipped[name] = f"{layer.weight.numel()} weights, fewer than min_weights={self.config.min_weights}"
            else:
                chosen.append((name, layer))
        if not chosen:
            raise CompressorError(f"no layer has at least min_weights={self.config.min_weights} weights to prune")
        # Shares are of *all* prunable weights/MACs, so 1 − Σ c_i·s_i is the whole model's density, the
        # quantity the budget and the report are about (skipped layers count as dense). They meet the
        # thresholds in the budget loss, so they live on the weights' device.
        device = chosen[0][1].weight.device
        self.param_shares = torch.tensor([layer.weight.numel() / self.total_weights for _, layer in chosen],
                                         device=device)
        self.mac_shares = torch.tensor([macs[name].macs / total_macs for name, _ in chosen], device=device)
        if self.target is not None and self.target >= float(self.param_shares.sum()):
            raise CompressorError(f"layers with at least min_weights={self.config.min_weights} weights hold "
                                  f"{float(self.param_shares.sum()):.1%} of the weights: {self.target:.1%} is out of reach")
        start_ratio = ratio_for_sparsity(self._initial_sparsity())
        trainable = self.config.loss not in FIXED_LOSSES
        for name, layer in chosen:
            parametrize.register_parametrization(
                layer, "weight", AdaptiveThreshold(start_ratio, layer.weight.shape, trainable, layer.weight.device))
            self.layers[name] = layer
        if self.config.loss == "fixed-bs":
            self._set_exact_bounds()
        return model

    def _initial_sparsity(self) -> float:
        if self.config.loss in FIXED_LOSSES:
            return self.uniform_sparsity()
        start = self.target if self.target is not None else 0.5
        return self.config.init_fraction * start

    def uniform_sparsity(self) -> float:
        """The one per-layer sparsity that makes the counted global sparsity equal the target."""
        return self.target / float(self.param_shares.sum())

    def thresholds(self) -> list[AdaptiveThreshold]:
        """The adaptive threshold of every pruned layer, in the order of `layers`."""
        return [layer.parametrizations.weight[0] for layer in self.layers.values()]

    # --- training hooks -----------------------------------------------------------------------------------

    def on_train_begin(self, model: nn.Module, config: TrainConfig) -> None:
        self.lr = config.lr
        # Half up (Python's round() goes to even): 0.3 of 5 epochs is 2 fine-tuning epochs, 0.5 of 1 is 1.
        self.freeze_epoch = config.epochs - math.floor(self.config.finetune_fraction * config.epochs + 0.5)
        if not self.frozen and self.freeze_epoch <= 0:
            # Too short to learn thresholds: correct the initial ones and spend every epoch fine-tuning.
            self._correct_and_freeze()

    def param_groups(self, model: nn.Module) -> list[dict] | None:
        ratios = [t.ratio for t in self.thresholds()]
        ratio_ids = {id(r) for r in ratios}
        weights = [p for p in model.parameters() if p.requires_grad and id(p) not in ratio_ids]
        groups = [{"params": weights}]
        if ratios[0].requires_grad:
            groups.append({"params": ratios, "lr": self.lr * self.config.threshold_lr_scale, "weight_decay": 0.0})
        return groups

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        if self.frozen or self.config.loss in FIXED_LOSSES:
            return None
        ratios = torch.stack([t.ratio for t in self.thresholds()])
        return self.budget_loss(erf_sparsity(ratios))

    def budget_loss(self, sparsity: torch.Tensor) -> torch.Tensor:
        """The paper's budget term for per-layer (predicted) sparsities `sparsity`."""
        c = self.config
        if c.loss == "unconstrained":
            return c.lambda_params * (1 - sparsity).mean()
        if c.loss == "avg":
            return c.lambda_params * ((1 - sparsity.mean()) - (1 - self.target)) ** 2
        param_density = 1 - (self.param_shares * sparsity).sum()
        terms = [(c.lambda_params, param_density, 1 - self.target)]
        if c.flops_target is not None:
            terms.append((c.lambda_flops, 1 - (self.mac_shares * sparsity).sum(), 1 - c.flops_target))
        if c.loss == "hinge":
            return sum(weight * torch.relu(density - budget) for weight, density, budget in terms)
        return sum(weight * (density - budget) ** 2 for weight, density, budget in terms)

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.frozen:
            return
        if self.config.loss == "fixed-bs":
            self._set_exact_bounds()
            return
        with torch.no_grad():
            for threshold in self.thresholds():
                threshold.ratio.clamp_(MIN_RATIO, self.config.max_ratio)

    def after_epoch(self, model: nn.Module, epoch: int) -> None:
        if not self.frozen and epoch == self.freeze_epoch:
            self._correct_and_freeze()

    def state_dict(self) -> dict:
        return {"frozen": self.frozen, "predicted": dict(self.predicted)}

    def load_state_dict(self, state: dict) -> None:
        self.frozen = bool(state["frozen"])
        self.predicted = dict(state["predicted"])
        if self.frozen:
            # The model's state restores the masks, not which parameters train.
            for threshold in self.thresholds():
                threshold.ratio.requires_grad_(False)

    # --- finishing ------------------------------------------------------------------------------------------

    def finalize(self, model: nn.Module) -> nn.Module:
        if not self.frozen:
            self._correct_and_freeze()
        return model

    def predicted_sparsity(self) -> dict[str, float]:
        return dict(self.predicted)

    def _set_exact_bounds(self) -> None:
        """fixed-bs: the bound that zeroes exactly the uniform share of each layer's weights.

        The paper finds it by binary search on b; the k-th smallest magnitude is that search's exact answer.
        """
        sparsity = self.uniform_sparsity()
        with torch.no_grad():
            for layer, threshold in zip(self.layers.values(), self.thresholds()):
                weight = layer.parametrizations.weight.original
                magnitudes = weight.abs().flatten()
                count = round(sparsity * magnitudes.numel())
                # |w| >= the (count+1)-th smallest magnitude prunes exactly `count` weights (fewer only where
                # magnitudes tie at the cut). The bound is used as it is: stored as a float32 ratio r = b/σ and
                # recomputed, it could cross a neighbouring magnitude.
                if count < magnitudes.numel():
                    bound = torch.kthvalue(magnitudes, count + 1).values
                else:
                    bound = magnitudes.max() * 2
                threshold.set_exact_bound(float(bound))
                threshold.ratio.fill_(float(bound / weight_std(weight)))

    def _correct_and_freeze(self) -> None:
        """Scale all learned bounds by one factor until the counted sparsity equals the target, then freeze."""
        with torch.no_grad():
            weights = [layer.parametrizations.weight.original.detach() for layer in self.layers.values()]
            thresholds = self.thresholds()
            bounds = [t.bound(w) for t, w in zip(thresholds, weights)]
            self.predicted = {name: float(erf_sparsity(t.ratio)) for name, t in zip(self.layers, thresholds)}
            scale = self._correction_scale(weights, bounds)
            for threshold, weight, bound in zip(thresholds, weights, bounds):
                threshold.freeze((weight.abs() >= scale * bound).to(weight.dtype))
        self.frozen = True

    def _correction_scale(self, weights: list[torch.Tensor], bounds: list[torch.Tensor]) -> float:
        def zeros(scale: float) -> int:
            return sum(int((w.abs() < scale * b).sum()) for w, b in zip(weights, bounds))

        if self.config.loss in ("unconstrained", "fixed-ga") or self.target is None:
            return 1.0  # no budget to meet (or, for fixed-ga, the paper's approximate baseline kept as it is)
        wanted = round(self.target * self.total_weights)
        if self.config.loss == "hinge" and zeros(1.0) >= wanted:
            return 1.0  # the hinge budget is a ceiling on density: sparser than asked is allowed
        low, high = 0.0, 1.0
        for _ in range(CORRECTION_DOUBLINGS):
            if zeros(high) >= wanted:
                break
            high *= 2
        else:
            raise CompressorError("the learned thresholds are unusable (zero or not a number): "
                                  "try a smaller learning rate or threshold_lr_scale")
        for _ in range(CORRECTION_STEPS):
            middle = (low + high) / 2
            low, high = (middle, high) if zeros(middle) < wanted else (low, middle)
        return high

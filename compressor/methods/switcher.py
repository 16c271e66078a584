"""Switcher networks (seed 001, "Explore the Knowledge contained in Network Weights to Obtain Sparse Neural
Networks"): a small network per fully-connected layer reads the layer's weights and switches its connections or
its input neurons off.

Every gated Linear k gets a switcher g_k, a U-Net-like convolutional network whose input image is the layer's
weight matrix (one row per input neuron, holding its outgoing weights, divided by the weights' standard deviation)
and whose last op is a ReLU, so its switches are ≥ 0 and unbounded: 0 prunes, below 1 weakens, above 1 strengthens.
In `connection` mode g_k(W) has W's shape and the layer computes with W ⊙ g_k(W); in `neuron` mode it gives one
switch z_j per input neuron and the layer computes with W·diag(z) (= W(x ⊙ z)), which zeroes whole columns. The
switcher is a parametrization of the layer's weight, so it never reaches the export.

Training alternates whole epochs on one loss, the task's, with no sparsity term: odd epochs (the paper's even
epochs 0, 2, …, counted from 0) train the switchers with the task network frozen, its BatchNorm statistics
included; even epochs train the task network with the switchers frozen. Each side has its own SGD and its own
cosine schedule over its own epochs. A frozen side is left out of the backward pass (`requires_grad` off), so no
momentum or weight decay moves it. Task epochs take the switches as constants (`detach_snn_input`). The user's
trained network is the starting point; `from_scratch=true` re-initialises it (Kaiming normal, zero biases) as the
paper trains.

Sparsity is emergent: whatever the switchers zero. With `--target` (the share of the gated layers' weights to
zero) a run short of it is topped up by the smallest |W ⊙ Z| (connection) or z_j·‖W[:, j]‖ (neuron), and one task
epoch with the switches frozen follows. Finalize writes the switches into the weights: connection switches become
unstructured weight masks; neuron switches are folded into the consumer's columns, and a producer channel whose
every column is zero in its only reader gets a channel gate of 0, which SliceChannels removes with the column.
`SwitcherSection` is the method's part of the report: each gated layer's switches and zeros.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from compressor.counting import NORM_TYPES, PRUNABLE_TYPES, prunable_layers
from compressor.data import DataBundle
from compressor.errors import CompressorError
from compressor.methods.base import Method, MethodOutcome, register_method
from compressor.methods.masks import attach_masks
from compressor.modules import unparametrize
from compressor.passes.analysis.groups import ChannelGroup, analyse_channels
from compressor.passes.gates import gate_group
from compressor.report import Report, ReportSection
from compressor.tables import markdown_table
from compressor.training import TrainConfig, TrainingHooks, TrainResult, train

logger = logging.getLogger(__name__)

MODES = ("connection", "neuron")
_DRAWS = 10  # random starts a switcher may take to switch enough on
_LEAST_ON = 0.4  # the share of switches a calibrated start must have on (half, short of ties at the median)


def _parse_mode(text: str) -> str:
    if text not in MODES:
        raise CompressorError(f"option mode of method switcher takes one of {', '.join(MODES)}, not {text!r}")
    return text


@dataclass
class SwitcherConfig:
    """Hyper-parameters: the paper's where it gives them (SGD, learning rate 0.1, Kaiming-normal initialisation),
    ours with the reason where it does not (the switcher's sizes, momentum, the schedules)."""

    mode: str = field(default="connection", metadata={"parse": _parse_mode})
    # Re-initialise the task network before training, as the paper does; by default the user's weights are kept.
    from_scratch: bool = False
    # The switchers' SGD. The paper's rate, 0.1, switches every connection off within the first epoch on digits
    # (all ReLU outputs 0, after which no gradient reaches the switcher), and 1e-3 within a few epochs; 1e-4 is
    # ours. Momentum 0.9 and no weight decay (a decayed switcher would drift to 0) are ours too.
    snn_lr: float = 1e-4
    snn_momentum: float = 0.9
    # Channels of the encoder's blocks and of the bottleneck (the paper does not give them).
    encoder_channels: str = "8,16"
    bottleneck_channels: int = 32
    # Calibrate each switcher's Kaiming-normal start (ours): its head's bias puts half the switches at 0, as the
    # paper's start intends, and a common factor makes the others average 1. Without it, on digits, the share at 0
    # ranged from 4% to 91% between draws (91%: the run ended at 17% accuracy), and the switches' scale, which
    # depends on the switcher's sizes, started the switched network near chance. False: the plain start.
    calibrated_start: bool = True
    # Task epochs take the switches as constants (the gradient of L(W ⊙ Z) with Z fixed). False differentiates
    # through g(W) as well, which the paper leaves open: on digits that gradient made the first task epoch diverge
    # (loss 1.7 → 5.3, or NaN, where with Z fixed it fell to 0.5).
    detach_snn_input: bool = True
    # Neuron mode: also switch the network's inputs (the pixels read by the first Linear), folded into its columns.
    gate_inputs: bool = False
    # The learning rate of the task epoch that follows a target's top-up (a fine-tune, like magnitude's).
    topup_lr: float = 0.01


def encoder_channels(text: str) -> list[int]:
    """The encoder's channels from "8,16"; every block halves the width, so at least one block is needed."""
    try:
        channels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        channels = []
    if not channels or min(channels) < 1:
        raise CompressorError(f"option encoder_channels of method switcher takes positive integers such as 8,16, "
                              f"not {text!r}")
    return channels


def _init(module: nn.Module) -> None:
    """The paper's initialisation of a switcher or a task network: Kaiming-normal Conv/Linear weights, zero
    biases, and BatchNorm at its initial state."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, NORM_TYPES):
            layer.reset_parameters()
            layer.reset_running_stats()


class SwitcherNet(nn.Module):
    """The switcher of one Linear layer of weight [n_out, n_in].

    Its image is X = Wᵀ/σ(W), one row per input neuron (n_in rows, n_out wide). The encoder's blocks are
    Conv 3×3 → ReLU → max-pool over the width only (the rows, one per input neuron, are never pooled), then a
    bottleneck Conv 3×3 → ReLU. Connection decoder, per level: upsample the width back to the level's, pass the
    level's encoder map through a row convolution (1×3), concatenate, Conv 3×3 → ReLU; a 1×1 head with a ReLU
    gives Zᵀ. Neuron decoder: the bottleneck and every encoder map are reduced to width 1 by a row convolution
    spanning their full width, concatenated level by level through Conv (3, 1) → ReLU, and a 1×1 head with a
    ReLU gives z. No BatchNorm or dropout: g(W) is the same in training and evaluation.
    """

    def __init__(self, n_out: int, n_in: int, mode: str, channels: list[int], bottleneck: int,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.mode = mode
        on = {"device": device, "dtype": dtype}
        widths = [n_out]
        for _ in channels:
            widths.append(math.ceil(widths[-1] / 2))
        inputs = [1] + channels
        self.encoder = nn.ModuleList(nn.Conv2d(inputs[i], channels[i], 3, padding=1, **on) for i in range(len(channels)))
        self.pool = nn.MaxPool2d((1, 2), ceil_mode=True)
        self.bottleneck = nn.Conv2d(channels[-1], bottleneck, 3, padding=1, **on)
        above = [*channels[1:], bottleneck]  # the channels arriving at each level from the one below it
        if mode == "connection":
            self.rows = nn.ModuleList(nn.Conv2d(c, c, (1, 3), padding=(0, 1), **on) for c in channels)
            self.decoder = nn.ModuleList(nn.Conv2d(a + c, c, 3, padding=1, **on) for a, c in zip(above, channels))
            self.bottleneck_row = None
        else:
            self.rows = nn.ModuleList(nn.Conv2d(c, c, (1, w), **on) for c, w in zip(channels, widths[:-1]))
            self.decoder = nn.ModuleList(nn.Conv2d(a + c, c, (3, 1), padding=(1, 0), **on)
                                         for a, c in zip(above, channels))
            self.bottleneck_row = nn.Conv2d(bottleneck, bottleneck, (1, widths[-1]), **on)
        self.head = nn.Conv2d(channels[0], 1, 1, **on)
        _init(self)

    def start(self, weight: torch.Tensor, calibrated: bool) -> None:
        """The Kaiming-normal start, drawn again while it switches all of `weight` off (a switcher whose ReLU outputs
        are all 0 gets no gradient and never switches anything on). `calibrated`: the head's bias is set so that half
        the switches start at 0, and the head is then scaled so that the others average 1; a draw whose head input is
        so often exactly 0 that fewer than `_LEAST_ON` of the switches can be on is drawn again too."""
        with torch.no_grad():
            for _ in range(_DRAWS):
                pre = self.pre_switches(weight)
                shift = pre.median() if calibrated else pre.new_zeros(())
                on = pre > shift
                if on.any() and (not calibrated or on.float().mean() >= _LEAST_ON):
                    break
                _init(self)
            else:
                raise CompressorError(f"a switcher for a {weight.shape[0]}x{weight.shape[1]} weight switched most "
                                      f"connections off in {_DRAWS} random starts; give it more channels")
            if calibrated:
                # ReLU(a·x) = a·ReLU(x) for a > 0: one factor on the head's weight and bias scales every switch.
                factor = (pre[on] - shift).mean()
                self.head.bias -= shift
                self.head.weight /= factor
                self.head.bias /= factor

    def pre_switches(self, weight: torch.Tensor) -> torch.Tensor:
        """The head's output before its ReLU."""
        # The scale is a normalisation, not something to learn through: a switch must not change by rescaling W.
        scale = weight.detach().std(correction=0).clamp_min(torch.finfo(weight.dtype).tiny)
        x = (weight.t() / scale)[None, None]
        skips = []
        for conv in self.encoder:
            x = F.relu(conv(x))
            skips.append(x)
            x = self.pool(x)
        x = F.relu(self.bottleneck(x))
        if self.bottleneck_row is not None:
            x = self.bottleneck_row(x)
        for skip, row, conv in zip(reversed(skips), reversed(self.rows), reversed(self.decoder)):
            if self.mode == "connection":
                x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = F.relu(conv(torch.cat([x, row(skip)], dim=1)))
        return self.head(x)[0, 0]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        switches = F.relu(self.pre_switches(weight))
        return switches.t() if self.mode == "connection" else switches[:, 0]


class SwitchedWeight(nn.Module):
    """The parametrization W ↦ W ⊙ g(W) (connection) or W·diag(g(W)) (neuron) of a gated Linear's weight.

    `fixed` holds switches frozen at given values (after a target's top-up); while it is set the switcher is not run.
    """

    def __init__(self, switcher: SwitcherNet, detach_input: bool) -> None:
        super().__init__()
        self.switcher = switcher
        self.detach_input = detach_input
        self.fixed: torch.Tensor | None = None

    def switches(self, weight: torch.Tensor) -> torch.Tensor:
        if self.fixed is not None:
            return self.fixed
        return self.switcher(weight.detach() if self.detach_input else weight)

    def apply(self, weight: torch.Tensor, switches: torch.Tensor) -> torch.Tensor:
        """The weight the layer computes with under `switches`."""
        return weight * switches if self.switcher.mode == "connection" else weight * switches[None, :]

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.apply(weight, self.switches(weight))


def switched_weight(layer: nn.Module) -> SwitchedWeight:
    """The switcher parametrization of a gated layer."""
    return layer.parametrizations.weight[0]


def layer_switches(layer: nn.Module) -> torch.Tensor:
    """The switches a gated layer computes with now (evaluated without a graph)."""
    with torch.no_grad():
        return switched_weight(layer).switches(layer.parametrizations.weight.original).detach()


def histogram(switches: torch.Tensor) -> dict[str, int]:
    """How many switches are exactly 0, strictly between 0 and 1, and 1 or more."""
    zero = int((switches == 0).sum())
    weak = int(((switches > 0) & (switches < 1)).sum())
    return {"zero": zero, "weak": weak, "strong": switches.numel() - zero - weak}


def phase_factor(step: int, steps_per_epoch: int, epochs: int, parity: int) -> float:
    """The cosine factor, in [0, 1], of the network that trains in the epochs of `parity` (1: the odd epochs,
    counted from 1; 0: the even ones) before its step that follows global step `step` (counted from 0): each
    network anneals over its own epochs only."""
    def own_steps(before_step: int) -> int:
        full, within = divmod(before_step, steps_per_epoch)  # epochs 1..full are done; epoch full + 1 is under way
        return (full + parity) // 2 * steps_per_epoch + (within if (full + 1) % 2 == parity else 0)

    total = own_steps(epochs * steps_per_epoch)
    return 0.5 * (1 + math.cos(math.pi * min(own_steps(step), total) / total)) if total else 1.0


@register_method
class SwitcherMethod(Method):
    """Switcher networks gating Linear connections (unstructured) or input neurons (structured), trained in
    alternation with the task network on the task loss alone."""

    name = "switcher"
    Config = SwitcherConfig
    patterns = ("unstructured", "structured")
    default_epochs = 30  # 15 per network
    # The task network starts trained, so its epochs fine-tune: the paper's 0.1 (from scratch) diverges on digits
    # once the switches, which reach 3 and more, scale its gradients.
    default_lr = 0.01

    def __init__(self, target, pattern="unstructured", config=None, run=None):
        config = config if config is not None else SwitcherConfig()
        if pattern == "2:4":
            raise CompressorError("method switcher has no 2:4 mode (its paper switches connections or neurons); "
                                  "drop --pattern 2:4")
        _parse_mode(config.mode)
        if pattern == "structured" and config.mode == "connection":
            raise CompressorError("switcher's connection mode prunes unstructured; --option mode=neuron removes neurons")
        # Neuron switches remove neurons, which the compiler slices away: that mode is a structured method.
        self.structured = config.mode == "neuron"
        super().__init__(target, pattern, config, run)
        c = self.config
        self.channels = encoder_channels(c.encoder_channels)
        if c.bottleneck_channels < 1 or c.topup_lr <= 0 or c.snn_lr < 0 or c.snn_momentum < 0:
            raise CompressorError("switcher's bottleneck_channels and topup_lr must be positive, snn_lr and "
                                  "snn_momentum not negative")
        self.gated: list[str] = []
        self.details: dict[str, Any] = {}
        self._switchers: list[nn.Parameter] = []
        self._task: list[nn.Parameter] = []
        self._norms: list[nn.Module] = []
        self._switcher_optimizer: torch.optim.Optimizer | None = None
        self._steps_per_epoch = 1
        self._epochs = 0

    # --- prepare -------------------------------------------------------------------------------------------

    def prepare(self, model: nn.Module, data: DataBundle) -> nn.Module:
        linears = [(name, layer) for name, layer in prunable_layers(model) if isinstance(layer, nn.Linear)]
        if not linears:
            raise CompressorError("method switcher gates Linear layers, and the model has none")
        for name, layer in prunable_layers(model):
            if not isinstance(layer, nn.Linear):
                self.skipped[name] = "the switcher gates Linear layers only (its paper's scope)"
        gated = linears
        if self.config.mode == "neuron" and not self.config.gate_inputs:
            hidden = self._reading_hidden(model)
            gated = [(name, layer) for name, layer in linears if name in hidden]
            for name, _ in linears:
                if name not in hidden:
                    self.skipped[name] = "reads the network's input (--option gate_inputs=true switches it)"
            if not gated:
                raise CompressorError("switcher's neuron mode found no Linear layer reading hidden neurons; "
                                      "--option gate_inputs=true switches the network's inputs")
        if self.config.from_scratch:
            _init(model)
        for name, layer in gated:
            n_out, n_in = layer.weight.shape
            switcher = SwitcherNet(n_out, n_in, self.config.mode, self.channels, self.config.bottleneck_channels,
                                   device=layer.weight.device, dtype=layer.weight.dtype)
            switcher.start(layer.weight, self.config.calibrated_start)
            parametrize.register_parametrization(layer, "weight", SwitchedWeight(switcher, self.config.detach_snn_input))
        self.gated = [name for name, _ in gated]
        self._switchers = [p for name in self.gated for p in switched_weight(model.get_submodule(name)).parameters()]
        switcher_ids = {id(p) for p in self._switchers}
        self._task = [p for p in model.parameters() if p.requires_grad and id(p) not in switcher_ids]
        self._norms = [m for m in model.modules() if isinstance(m, NORM_TYPES)]
        self.details = {"mode": self.config.mode, "layers": {name: {"name": name} for name in self.gated}}
        self._record(model, "start")
        return model

    def _reading_hidden(self, model: nn.Module) -> set[str]:
        """The Linear layers whose inputs are the outputs of another layer (neurons, not the network's inputs)."""
        shape = tuple(model.input_shape)
        return {member.name for group in self._groups(model, shape) for member in group.members
                if not member.produces and isinstance(member.module, nn.Linear)}

    @staticmethod
    def _groups(model: nn.Module, shape: tuple[int, ...]) -> list[ChannelGroup]:
        return analyse_channels(model, shape).groups

    def _record(self, model: nn.Module, when: str) -> None:
        """Per gated layer: the switch histogram and the weights the switches zero, at the start or the end."""
        for name in self.gated:
            layer = model.get_submodule(name)
            switches, original = layer_switches(layer), layer.parametrizations.weight.original
            with torch.no_grad():
                zeros = int((switched_weight(layer).apply(original, switches) == 0).sum())
            self.details["layers"][name].update({f"switches_{when}": histogram(switches), f"zeros_{when}": zeros,
                                                 "weights": original.numel()})

    # --- training hooks --------------------------------------------------------------------------------------

    def on_train_begin(self, model: nn.Module, config: TrainConfig) -> None:
        self._epochs = config.epochs

    def param_groups(self, model: nn.Module) -> list[dict] | None:
        return [{"params": self._task}]

    def method_optimizer(self, model: nn.Module) -> torch.optim.Optimizer | None:
        if not self._switchers:
            return None
        self._switcher_optimizer = torch.optim.SGD(self._switchers, lr=self.config.snn_lr,
                                                   momentum=self.config.snn_momentum, weight_decay=0.0)
        return self._switcher_optimizer

    def lr_schedule(self, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int):
        self._steps_per_epoch = steps_per_epoch
        epochs = total_steps // steps_per_epoch
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: phase_factor(step, steps_per_epoch, epochs, parity=0))

    def before_epoch(self, model: nn.Module, epoch: int) -> None:
        switchers_train = epoch % 2 == 1
        for p in self._switchers:
            p.requires_grad_(switchers_train)
        for p in self._task:
            p.requires_grad_(not switchers_train)
        if switchers_train:
            # The task network is fixed while the switchers learn, its running statistics included.
            for norm in self._norms:
                norm.eval()
        self._set_switcher_lr((epoch - 1) * self._steps_per_epoch)

    def after_step(self, model: nn.Module, step: int) -> None:
        self._set_switcher_lr(step)

    def _set_switcher_lr(self, step: int) -> None:
        if self._switcher_optimizer is None:
            return
        factor = phase_factor(step, self._steps_per_epoch, self._epochs, parity=1)
        for group in self._switcher_optimizer.param_groups:
            group["lr"] = self.config.snn_lr * factor

    def fingerprint(self) -> dict[str, Any]:
        # The switch counts in the outcome come from the switchers' random start; a resume must match the settings
        # only.
        return {**self.settings(), "gated": self.gated}

    @property
    def switchers(self) -> list[nn.Parameter]:
        """The switcher networks' parameters (the task network's are the model's others)."""
        return list(self._switchers)

    # --- fit, top-up and finalize ---------------------------------------------------------------------------

    def fit(self, model: nn.Module, data: DataBundle, config: TrainConfig, **loop: Any) -> TrainResult:
        result = super().fit(model, data, config, **loop)
        for p in self._task:
            p.requires_grad_(True)
        for p in self._switchers:
            p.requires_grad_(False)
        self._record(model, "end")
        layers = self.details["layers"].values()
        emergent = sum(layer["zeros_end"] for layer in layers) / sum(layer["weights"] for layer in layers)
        self.details.update({"emergent_sparsity": emergent, "accuracy_emergent": result.test_accuracy,
                             "topped_up": False})
        if self.target is not None and emergent < self.target:
            self._top_up(model)
            topup = dataclasses.replace(config, epochs=1, lr=self.config.topup_lr)
            result = train(model, data.train, data.test, topup, hooks=_TaskOnly(self._task),
                           progress=loop.get("progress", True), description="switcher top-up")
            self.details["topped_up"] = True
            with torch.no_grad():
                zeros = sum(int((model.get_submodule(name).weight == 0).sum()) for name in self.gated)
            self.details["final_sparsity"] = zeros / sum(layer["weights"] for layer in layers)
        else:
            self.details["final_sparsity"] = emergent
        return result

    def _top_up(self, model: nn.Module) -> None:
        """Freeze every gated layer's switches, with the smallest remaining |W ⊙ Z| (connection) or z_j·‖W[:, j]‖
        (neuron) across the gated layers switched off until the target share of their weights is zero."""
        scores, new_zeros, switches, total, zeros = {}, {}, {}, 0, 0
        with torch.no_grad():
            for name in self.gated:
                layer = model.get_submodule(name)
                switches[name] = layer_switches(layer)
                switched = switched_weight(layer).apply(layer.parametrizations.weight.original, switches[name])
                nonzero = (switched != 0).to(switched.dtype)
                if self.config.mode == "connection":
                    scores[name], new_zeros[name] = switched.abs().flatten(), nonzero.flatten()
                else:
                    scores[name], new_zeros[name] = switched.norm(dim=0), nonzero.sum(dim=0)  # z_j·‖W[:, j]‖
                total += switched.numel()
                zeros += switched.numel() - int(nonzero.sum())
            needed = math.ceil(self.target * total - 1e-9) - zeros
            flat_scores = torch.cat([scores[n] for n in self.gated])
            order = torch.argsort(flat_scores, stable=True)
            # Taken in order of score until enough weights are zero; an entry already zero adds none.
            added = torch.cat([new_zeros[n] for n in self.gated])[order].cumsum(0)
            count = int(torch.searchsorted(added, torch.tensor(float(needed), dtype=added.dtype, device=added.device))) + 1
            keep = torch.ones_like(flat_scores)
            keep[order[:count]] = 0
            for name, piece in zip(self.gated, keep.split([scores[n].numel() for n in self.gated])):
                switched_weight(model.get_submodule(name)).fixed = switches[name] * piece.view_as(switches[name])

    def finalize(self, model: nn.Module) -> nn.Module:
        shape = tuple(model.input_shape)
        folded: dict[str, torch.Tensor] = {}
        for name in self.gated:
            layer = model.get_submodule(name)
            switches = layer_switches(layer)
            unparametrize(layer)  # the weight now holds W ⊙ Z (connection) or W·diag(z) (neuron)
            folded[name] = switches
            info = self.details["layers"][name]
            info["zeros_final"] = int((layer.weight == 0).sum())
            if self.config.mode == "neuron":
                info["neurons"] = switches.numel()
                info["neurons_switched_off"] = int((switches == 0).sum())
        # A layer with every switch at 0 passes nothing on: the network then predicts from biases alone.
        self.details["cut_layers"] = [name for name, switches in folded.items() if not switches.any()]
        if self.details["cut_layers"]:
            logger.warning("switcher: every switch of %s is 0, so the network no longer reads its input; try a "
                           "smaller learning rate", ", ".join(self.details["cut_layers"]))
        if self.config.mode == "connection":
            attach_masks(model, {name: (model.get_submodule(name).weight != 0).float() for name in self.gated})
        else:
            self._gate_dead_neurons(model, shape, folded)
        return model

    def _gate_dead_neurons(self, model: nn.Module, shape: tuple[int, ...], switches: dict[str, torch.Tensor]) -> None:
        """Give a channel gate of 0 to every producer channel whose columns are all switched off in its only
        reader, so that SliceChannels removes it; channels read elsewhere keep their zero columns only."""
        for group in self._groups(model, shape):
            readers = [m for m in group.members if not m.produces and isinstance(m.module, PRUNABLE_TYPES)]
            if len(readers) != 1 or readers[0].name not in switches:
                continue
            reader = readers[0]
            z = switches[reader.name]
            alive = torch.zeros(group.size, dtype=torch.bool, device="cpu")
            columns = torch.as_tensor(reader.idxs, dtype=torch.long, device=z.device)
            roots = torch.as_tensor(reader.root_idxs, dtype=torch.long, device="cpu")
            alive.index_fill_(0, roots[(z[columns] != 0).cpu()], True)
            dead = group.whole_units(torch.nonzero(~alive).flatten().tolist())
            if dead:
                scale = torch.ones(group.size, device="cpu")
                scale[dead] = 0.0
                gate_group(group, scale)
                self.details["layers"][reader.name].setdefault("channels_removed", {})[group.root] = len(dead)

    def outcome(self) -> MethodOutcome:
        recorded = {**self.details, "layers": list(self.details.get("layers", {}).values())}
        # The section describes the trained switches: it exists once `fit` has recorded the shipped sparsity.
        sections = [SwitcherSection.from_dict(recorded)] if "final_sparsity" in self.details else []
        return dataclasses.replace(super().outcome(), details={"switcher": recorded}, sections=sections)


class _TaskOnly(TrainingHooks):
    """Hooks of the top-up epoch: only the task network's parameters train (the switches are frozen values)."""

    def __init__(self, task: list[nn.Parameter]) -> None:
        self.task = task

    def param_groups(self, model: nn.Module) -> list[dict] | None:
        return [{"params": self.task}]


# --- the report section -----------------------------------------------------------------------------------------------


@dataclass
class SwitchedLayer:
    """One Linear layer gated by a switcher: its switches (counts of exactly 0, in (0, 1) and ≥ 1) at the start and
    at the end of training, and its zero weights at the start, at the end (emergent) and in the shipped model
    (after a target's top-up); in neuron mode, its input neurons and those switched off, and the producer channels
    removed with them (by the producer's name)."""

    name: str
    weights: int
    switches_start: dict[str, int]
    switches_end: dict[str, int]
    zeros_start: int
    zeros_end: int
    zeros_final: int
    neurons: int | None = None
    neurons_switched_off: int | None = None
    channels_removed: dict[str, int] = field(default_factory=dict)


@dataclass
class SwitcherSection(ReportSection):
    """Switcher networks: the mode, the gated layers' emergent sparsity (what the switchers zeroed) and the shipped
    one, the test accuracy at the end of the alternating training, and whether a target's top-up ran."""

    key: ClassVar[str] = "switcher"

    mode: str
    emergent_sparsity: float
    final_sparsity: float
    accuracy_emergent: float
    topped_up: bool
    layers: list[SwitchedLayer]
    cut_layers: list[str] = field(default_factory=list)  # gated layers left with every switch at 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SwitcherSection:
        return cls(**{**data, "layers": [SwitchedLayer(**row) for row in data["layers"]]})

    def markdown(self, report: Report) -> list[str]:
        """Emergent and shipped sparsity of the gated layers, and each layer's switches at the start and the end."""
        sw = self

        def counts(c: dict[str, int]) -> str:
            return f"{c['zero']:,} / {c['weak']:,} / {c['strong']:,}"

        rows = [[f"`{l.name}`", f"{l.weights:,}", counts(l.switches_start), counts(l.switches_end),
                 f"{l.zeros_start / l.weights:.2%}", f"{l.zeros_end / l.weights:.2%}",
                 f"{l.zeros_final / l.weights:.2%}",
                 "-" if l.neurons is None else f"{l.neurons_switched_off:,} of {l.neurons:,}"] for l in sw.layers]
        what = "connection (W ⊙ Z)" if sw.mode == "connection" else "neuron (W·diag(z), one switch per input neuron)"
        cut = (f" **Every switch of {', '.join(f'`{name}`' for name in sw.cut_layers)} is 0: the network no longer "
               f"reads its input.**" if sw.cut_layers else "")
        topped = (f" A target's top-up then switched off the smallest remaining weights and trained the task network "
                  f"one epoch with the switches frozen: {sw.final_sparsity:.2%}." if sw.topped_up else "")
        return [
            "## Switcher",
            "",
            f"Mode {what}; switchers and task network trained in alternating epochs on the task loss alone. Emergent "
            f"sparsity of the gated layers (what the switchers zeroed): {sw.emergent_sparsity:.2%}, test accuracy "
            f"{sw.accuracy_emergent:.2%}.{topped}{cut} Switches are counted as 0 / (0, 1) / ≥ 1.",
            "",
            markdown_table(["layer", "weights", "switches at start", "switches at end", "zeros at start", "emergent",
                            "shipped", "neurons switched off"], rows),
            "",
        ]


# The name it had in compressor.report, kept for one release.
SwitcherStats = SwitcherSection

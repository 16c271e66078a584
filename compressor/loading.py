"""Reading and writing models: our checkpoints, bare state_dicts, TorchScript archives and trusted pickles.

Loading never runs code from a file unless the user says they trust it: checkpoints and state_dicts are read
with `torch.load(weights_only=True)`, TorchScript with `torch.jit.load` (its own restricted format), and a
whole pickled `nn.Module` only with `trust=True`, because unpickling executes whatever the file contains.
Every loaded model carries `input_shape` (C, H, W); zoo models also carry `arch`, `num_classes` and
`trained_with` (the task loss and optimizer its checkpoint records). A model
whose parameters or buffers hold a NaN or Inf is refused by the name of the layer that holds it. torch's own
message for a file that `torch.load(weights_only=True)` cannot read is never passed on: it advises loading with
`weights_only=False`, which for a file from anywhere means running its code.

A model from outside the zoo is written back as a pickled module: with pickle, or with cloudpickle when it
holds what pickle cannot write (a lambda, a class defined in a script). Pickled modules written by 0.1.0, when
the zoo, the passes and the runtime installed as the top-level packages `models`, `passes` and `runtime`, read
back with those names mapped to their places under `compressor`.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import os
import pickle
import pickletools
import warnings
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any, BinaryIO

import cloudpickle
import torch
import torch.nn as nn
from torch.serialization import DEFAULT_PROTOCOL

from compressor.counting import prunable_layers
from compressor.errors import CompressorError, first_line
from compressor.files import atomic_torch_save
from compressor.finite import first_non_finite
from compressor.modules import model_device
from compressor.models import create_model, list_models
from compressor.paths import cannot_read, is_file
from compressor.structure import apply_structure, describe_structure

CHECKPOINT_FORMAT = "compressor.checkpoint"
CHECKPOINT_VERSION = 2
# Version 1 had no structure record; its models always have their architecture's own shapes.
READABLE_VERSIONS = (1, 2)


# What a model that records nothing was trained with.
DEFAULT_TRAINING = {"loss": "ce", "optimizer": "sgd"}


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """'3,32,32' → (3, 32, 32)."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise CompressorError(f"--input-shape must be three positive integers C,H,W (e.g. 3,32,32), not {text!r}")
    return shape


def save_checkpoint(model: nn.Module, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write `model` so that `load_model` rebuilds it without trusting code.

    Zoo models are stored as (arch, num_classes, input shape, state_dict, extra facts). A model from outside the
    zoo (loaded from a trusted pickle) has no architecture to rebuild from, so it is stored as a pickled module
    again (see `module_pickler`) and reading it back needs the same trust it needed the first time.
    """
    if getattr(model, "arch", None) is None:
        return atomic_torch_save(model, path, pickle_module=module_pickler(model))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": model.arch,
        "num_classes": model.num_classes,
        "input_shape": list(model.input_shape),
        "structure": describe_structure(model),
        # Stored from the CPU, so the checkpoint reads back the same on a machine without the training GPU.
        "state_dict": {name: tensor.cpu() for name, tensor in model.state_dict().items()},
        "extra": {**(extra or {}), "trained_with": trained_with(model)},
    }
    return atomic_torch_save(payload, path)


def trained_with(model: nn.Module) -> dict[str, str]:
    """The task loss and optimizer `model` was trained with (a checkpoint records them, so that fine-tuning and
    evaluation keep them): what the model carries, else cross-entropy under SGD."""
    return {**DEFAULT_TRAINING, **getattr(model, "trained_with", {})}


def module_pickler(model: nn.Module) -> ModuleType | None:
    """The pickle module that `save_checkpoint` writes `model` with: None for a zoo model (stored as a state_dict),
    pickle where it can, cloudpickle where only it can; a CompressorError when neither can.

    `compress` asks before any work, so a model that cannot be saved is refused up front rather than after
    training. Each candidate pickles the model into a sink that discards the bytes, with tensors left out as
    torch.save leaves them out of its pickle, so the check costs little on a large model.
    """
    if getattr(model, "arch", None) is not None:
        return None
    for module, probe in ((pickle, _PickleProbe), (cloudpickle, _CloudPickleProbe)):
        try:
            probe(_Discard(), protocol=DEFAULT_PROTOCOL).dump(model)
            return module
        except Exception as error:  # pickling runs the model's own __reduce__/__getstate__: anything can fail
            reason = first_line(error)
    raise CompressorError(f"the model cannot be saved: neither pickle nor cloudpickle can write it ({reason}); "
                          "remove what it holds that cannot be pickled (an open file, a generator, a lock)")


class _Discard:
    """A binary file that forgets what is written to it."""

    def write(self, data: bytes) -> int:
        return len(data)


class _LeavesOutTensors:
    """Pickler mixin: tensors and storages become references, as torch.save keeps them out of its pickle."""

    def persistent_id(self, obj: Any) -> int | None:
        return id(obj) if isinstance(obj, torch.Tensor) or torch.is_storage(obj) else None


class _PickleProbe(_LeavesOutTensors, pickle.Pickler):
    pass


class _CloudPickleProbe(_LeavesOutTensors, cloudpickle.Pickler):
    pass


def load_model(path: str | os.PathLike, arch: str | None = None, trust: bool = False,
               input_shape: tuple[int, int, int] | None = None) -> nn.Module:
    """Load a model file in any supported form; see the module docstring. The result is in eval mode."""
    path = Path(path)
    if not is_file(path, "model"):
        raise CompressorError(f"model file not found: {path}")
    if _is_torchscript(path):
        model = _load_torchscript(path)
    else:
        try:
            payload = _load_weights_only(path)
        except pickle.UnpicklingError:
            if not _pickle_imports_code(path):
                raise _not_readable(path) from None
            model = _load_trusted_pickle(path, trust)
        else:
            model = _from_payload(payload, path, arch)
    check_finite_weights(model, str(path))
    if input_shape is not None:
        model.input_shape = tuple(input_shape)
    if getattr(model, "input_shape", None) is None:
        raise CompressorError(f"{path}: the model's input shape is unknown; give it with --input-shape C,H,W")
    return model.eval()


def check_finite_weights(model: nn.Module, where: str) -> None:
    """Refuse a model with a NaN or Inf among its parameters and buffers (a BatchNorm's running variance too),
    naming the first layer in `named_modules` order that holds one and the tensor; `where` starts the message.

    Such a model could only be trained into a diverged loss; refused here, it costs one pass over the weights.
    """
    found = first_non_finite(
        ((layer, f"{layer}.{name}" if layer else name), tensor)
        for layer, module in model.named_modules()
        for name, tensor in itertools.chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))
        if tensor.is_floating_point())
    if found is not None:
        (layer, tensor_name), kind = found
        owner = f"layer {layer}" if layer else "the top-level module"
        raise CompressorError(f"{where}: weights of {owner} contain {kind} ({tensor_name})")


def _not_readable(path: Path) -> CompressorError:
    return CompressorError(f"{path} is not a readable PyTorch file (damaged, or not a checkpoint)")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") for name in archive.namelist())
    except zipfile.BadZipFile:  # an end-of-archive record whose directory is damaged or missing
        raise _not_readable(path) from None


# Opcodes with which a pickle names Python callables to import and call: what makes unpickling run code.
_CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"}


def _pickle_imports_code(path: Path) -> bool:
    """Whether the file is a well-formed pickle that imports callables (rather than damaged bytes).

    torch reports both cases with the same error, but only the first one deserves the --trust-model hint.
    `pickletools.genops` parses opcodes without executing any of them, reading them from the file as it goes:
    a file of any size is scanned in little memory.
    """
    try:
        if not zipfile.is_zipfile(path):
            with path.open("rb") as stream:
                return _stream_imports_code(stream, os.fstat(stream.fileno()).st_size)
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if member.filename.endswith("data.pkl"):
                    with archive.open(member) as stream:
                        if _stream_imports_code(stream, member.file_size):
                            return True
    except Exception:  # pickletools raises ValueError or several others on bytes that are no pickle
        return False
    return False


def _stream_imports_code(stream: BinaryIO, size: int) -> bool:
    # The legacy torch.save format is several pickles back to back: scan all of them.
    while stream.tell() < size:
        if any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(stream)):
            return True
    return False


def _load_torchscript(path: Path) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as error:  # torch.jit raises several unrelated types for a damaged archive
        raise CompressorError(f"{path} is a damaged TorchScript archive ({first_line(error)})") from None


def _load_weights_only(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols its safe unpickler may not fully support before it decides;
            # the decision (load, or a clear error) is what the user needs, not the warning.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise
    except OSError as error:
        raise cannot_read("model", path, error) from None
    except Exception:  # a corrupt file surfaces as whatever the zip/pickle readers hit first
        # torch's message is not passed on: for some damaged files it advises loading with weights_only=False.
        raise _not_readable(path) from None


def _load_trusted_pickle(path: Path, trust: bool) -> nn.Module:
    if not trust:
        raise CompressorError(
            f"{path} is a pickled Python object and loading it would run code from the file; "
            "pass --trust-model only if you trust where it came from")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PickleWithFormerNames)
    except Exception as error:  # arbitrary code ran inside; report whatever it raised, in one line
        raise CompressorError(f"{path}: unpickling failed ({first_line(error)})") from None
    if not isinstance(obj, nn.Module):
        raise CompressorError(f"{path} holds a {type(obj).__name__}, not a torch.nn.Module")
    return obj


# Where 0.1.0's top-level packages live now.
_FORMER_PACKAGES = {"models": "compressor.models", "passes": "compressor.passes", "runtime": "compressor.runtime"}


class _FormerNamesUnpickler(pickle.Unpickler):
    """An unpickler that finds our classes under the module names 0.1.0 pickled them with (models.units...).

    The name as written wins whenever it resolves to someone else's code: a user's own `models` package (with
    the user's model class in it) is never shadowed. It is read at our package's new place when it does not
    resolve, or when it resolves to our own folder (a run from a source checkout, whose root holds models/):
    importing our files a second time under the old name would make classes that our passes do not recognise.
    """

    def find_class(self, module: str, name: str) -> Any:
        package, dot, rest = module.partition(".")
        current = _FORMER_PACKAGES.get(package)
        if current is not None and _is_our_package(package, current):
            module = current + dot + rest
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError) as error:
            if current is None or module.startswith(current):
                raise
            try:
                return super().find_class(current + dot + rest, name)
            except (ImportError, AttributeError):
                raise error from None


def _is_our_package(former: str, current: str) -> bool:
    """Whether the top-level name `former` finds our package `current`'s folder (found without importing it)."""
    try:
        spec = importlib.util.find_spec(former)
    except (ImportError, ValueError):  # a broken package of that name, or a module without a spec
        return False
    if spec is None or spec.origin is None:
        return False
    return Path(spec.origin).resolve() == Path(importlib.import_module(current).__file__).resolve()


class _PickleWithFormerNames:
    """The pickle module `torch.load` is given for trusted pickles: it needs `Unpickler` and `load`."""

    Unpickler = _FormerNamesUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _FormerNamesUnpickler(file, **kwargs).load()


def _is_our_checkpoint(payload: Any) -> bool:
    return isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT


def _from_payload(payload: Any, path: Path, arch: str | None) -> nn.Module:
    if _is_our_checkpoint(payload):
        if payload.get("version") not in READABLE_VERSIONS:
            raise CompressorError(f"{path} is a checkpoint of format version {payload.get('version')}, "
                                  f"this tool reads versions {', '.join(map(str, READABLE_VERSIONS))}")
        if arch is not None and arch != payload["arch"]:
            raise CompressorError(f"{path} is a {payload['arch']} checkpoint, not {arch}")
        model = create_model(payload["arch"], num_classes=payload["num_classes"], in_channels=payload["input_shape"][0])
        if payload.get("structure"):
            apply_structure(model, payload["structure"])
        _load_state(model, payload["state_dict"], path, payload["arch"])
        recorded = payload.get("extra", {}).get("trained_with", {})
        model.trained_with = {key: str(recorded[key]) for key in DEFAULT_TRAINING if key in recorded}
        return model
    state_dict = _find_state_dict(payload)
    if state_dict is None:
        raise CompressorError(f"{path} holds no model: expected a compressor checkpoint, a state_dict, "
                              "a TorchScript archive or (with --trust-model) a pickled nn.Module")
    if arch is None:
        raise CompressorError(f"{path} is a bare state_dict; name its architecture with --arch "
                              f"(one of: {', '.join(list_models())})")
    model = _zoo_model_fitting(arch, state_dict)
    _load_state(model, state_dict, path, arch)
    return model


def _find_state_dict(payload: Any) -> dict[str, torch.Tensor] | None:
    """A state_dict itself, or one nested under the keys training scripts commonly use."""
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload
    if isinstance(payload, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            nested = payload.get(key)
            if isinstance(nested, dict) and nested and all(isinstance(v, torch.Tensor) for v in nested.values()):
                return nested
    return None


def _zoo_model_fitting(arch: str, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """Build `arch` with the class count and input channels that the state_dict's shapes imply."""
    model = create_model(arch)
    layers = prunable_layers(model)
    first_name, first = layers[0]
    last_name, _ = layers[-1]
    num_classes = model.num_classes
    in_channels = None
    last_weight = state_dict.get(f"{last_name}.weight")
    if last_weight is not None:
        num_classes = last_weight.shape[0]
    first_weight = state_dict.get(f"{first_name}.weight")
    if first_weight is not None and not isinstance(first, nn.Linear):
        in_channels = first_weight.shape[1]
    return create_model(arch, num_classes=num_classes, in_channels=in_channels)


def _load_state(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise CompressorError(f"{path} does not fit architecture {arch}: {detail[:300]}") from None


def output_classes(model: nn.Module, shape: tuple[int, ...]) -> int:
    """How many classes `model` scores for an input of `shape`, refusing in one line a model that does not take
    that shape or does not output a classifier's [batch, classes]."""
    try:
        with torch.no_grad():
            output = model.eval()(torch.zeros((1, *shape), device=model_device(model)))
    except Exception as error:  # a user model rejecting the declared shape raises whatever its layers raise
        raise CompressorError(f"the model does not accept inputs of shape {'x'.join(map(str, shape))}: "
                              f"{' '.join(str(error).split())[:200]}") from None
    if output.dim() != 2:
        raise CompressorError(f"the model outputs a tensor of shape {tuple(output.shape)}; a classifier's "
                              "[batch, classes] output is expected")
    return int(output.shape[1])

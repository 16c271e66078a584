"""The resume state: what the training loop saves after every epoch, how it reads it back, and when it refuses it.
The state holds the model, the optimizers, the method's state and structure, the history and the random number
generators, with a fingerprint of everything a resumed run must share with the one that wrote it (settings, method,
model, batches per epoch, processes); the settings and the method's fingerprint are kept beside the hash as well,
so a refusal says which differs, and `check_resume_settings` can refuse a resume before any model is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from compressor.distributed import group
from compressor.errors import ResumeRefused, first_line, quoted
from compressor.files import atomic_torch_save
from compressor.paths import cannot_read
from compressor.training.config import TrainConfig
from compressor.training.hooks import TrainingHooks
from compressor.training.optimizers import _Optimizers
from compressor.training.results import EpochRecord

# Bumped when the layout of the resume state changes, so an old file is refused instead of misread.
_STATE_FORMAT = 2


def _fingerprint(model: nn.Module, config: TrainConfig, batches_per_epoch: int, hooks: TrainingHooks) -> str:
    """A hash of everything a resumed run must share with the run that wrote the state."""
    content = {
        "config": dataclasses.asdict(config),
        "hooks": hooks.fingerprint(),
        "batches_per_epoch": batches_per_epoch,
        "model": [[name, list(tensor.shape)] for name, tensor in model.state_dict().items()],
    }
    if group().parallel:
        # A state is continued by as many processes as wrote it: the shards, and so the batches, depend on it.
        content["processes"] = group().size
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _save_state(
    path: str | os.PathLike,
    fingerprint: str,
    config: TrainConfig,
    model: nn.Module,
    optimizers: _Optimizers,
    hooks: TrainingHooks,
    history: list[EpochRecord],
    epoch: int,
    device: torch.device,
) -> None:
    state = {
        "format": _STATE_FORMAT,
        "fingerprint": fingerprint,
        # Kept beside the hash only to say which setting differs when a resume is refused.
        "config": dataclasses.asdict(config),
        "method": hooks.fingerprint(),
        "epoch": epoch,
        "structure": hooks.structure(),
        "model": model.state_dict(),
        **optimizers.state_dict(),
        "hooks": hooks.state_dict(),
        "history": [dataclasses.asdict(record) for record in history],
        "rng": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    atomic_torch_save(state, path)


def _load_state(path: str | os.PathLike, device: torch.device, mmap: bool = False) -> dict | None:
    """The state at `path` (None when there is none); with `mmap`, its tensors are mapped from the file, not read,
    for a caller that needs only the settings beside them."""
    if not Path(path).exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=True, mmap=mmap)
    except OSError as error:
        raise cannot_read("training state", path, error) from None
    except Exception:  # a damaged file surfaces as whatever the zip/pickle readers hit first
        # torch's message is not passed on: for some damaged files it advises loading with weights_only=False.
        raise ResumeRefused(f"the training state {quoted(path)} is damaged; to start over, run without --resume "
                            "(that discards it)") from None
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ResumeRefused(f"{quoted(path)} is not a training state written by this version; to start over, run "
                            "without --resume (that discards it)")
    return state


def _changed_settings(saved: dict, current: dict) -> list[str]:
    """`name saved -> current` for each setting that differs, for the message that refuses a resume."""
    return [f"{key} {saved.get(key)!r} -> {value!r}" for key, value in current.items()
            if key in saved and saved[key] != value]


def _changed_saved_settings(state: dict, config: TrainConfig, method: dict) -> list[str]:
    """The settings and method options saved in `state` that differ from `config` and the method's `fingerprint()`
    (`_changed_settings`' lines)."""
    changed = _changed_settings(state["config"], dataclasses.asdict(config))
    changed += _changed_settings(state.get("method", {}), method)
    return changed


def _different_settings(path: str | os.PathLike, what: str) -> ResumeRefused:
    return ResumeRefused(f"the training state {quoted(path)} was written with different settings ({what}); "
                         "to continue it, run with the settings of the interrupted run and --resume; to start "
                         "over, run without --resume (that discards it)")


def _check_fingerprint(state: dict, path: str | os.PathLike, fingerprint: str, config: TrainConfig,
                       hooks: TrainingHooks) -> None:
    if state["fingerprint"] != fingerprint:
        changed = _changed_saved_settings(state, config, hooks.fingerprint())
        raise _different_settings(path, ", ".join(changed) if changed else "a different model, method or training data")


def check_resume_settings(path: str | os.PathLike, config: TrainConfig, hooks_fingerprint: dict | None,
                          unchecked: Sequence[str] = ()) -> None:
    """Refuse to resume the training state at `path` when it was written with settings other than `config` and the
    method's `hooks_fingerprint` (its `TrainingHooks.fingerprint()`; None for a run without hooks), with the error
    `train` would raise; do nothing when there is no state at `path`. Fields of `config` named in `unchecked` are
    left to `train` (a method that trains in stages runs the loop for a multiple of the epochs it was given).

    Only the settings saved beside the state's hash are compared, so no model is needed: a resume with other
    settings is refused before a model is built or measured. The rest of the hash (the model's parameter shapes,
    the batches per epoch, the number of processes) `train` checks when it resumes. A damaged state, or one written
    by another version, is refused here as `train` would refuse it.
    """
    # Mapped, not read: the weights and optimizer state the loop will load are not needed for the settings.
    state = _load_state(path, torch.device("cpu"), mmap=True)
    if state is None:
        return
    compared = dataclasses.replace(config, **{name: state["config"].get(name) for name in unchecked})
    changed = _changed_saved_settings(state, compared, hooks_fingerprint if hooks_fingerprint is not None else {})
    if changed:
        raise _different_settings(path, ", ".join(changed))


def _restore(
    state: dict,
    path: str | os.PathLike,
    config: TrainConfig,
    model: nn.Module,
    optimizers: _Optimizers,
    hooks: TrainingHooks,
    device: torch.device,
) -> int:
    """Load `state` (its fingerprint checked, its structure restored) into the training objects and return the
    number of epochs it completed."""
    try:
        model.load_state_dict(state["model"])
        optimizers.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as error:
        raise ResumeRefused(f"the training state {quoted(path)} does not fit this model or its optimizer groups "
                            f"({first_line(error)}); to start over, run without --resume (that discards it)") from None
    hooks.load_state_dict(state["hooks"])
    torch.set_rng_state(state["rng"].cpu())
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"].cpu(), device)
    return int(state["epoch"])

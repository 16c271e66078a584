"""The one training loop, shared by dense training and by compression methods that fine-tune.

`train` runs SGD with Nesterov momentum (or Adam, with L2 weight decay inside it or decoupled as AdamW) and a
cosine learning-rate schedule on a classification model under its task loss (cross-entropy, or the bipolar
softplus of `compressor.losses`), and evaluates test accuracy after every epoch. Compression methods do not get
their own loops: they plug into this one through `TrainingHooks` (extra optimizer groups, an extra loss term, work
after each step or epoch, state to keep across a resume). Given a `state_path`, the loop saves everything it needs
after every epoch, so an interrupted run resumed with `resume=True` ends with exactly the weights an uninterrupted
run with the same seed would have produced.

The modules, by concern:
- `config`: `TrainConfig`, its defaults (`DEFAULT_WEIGHT_DECAY`, `default_lr`) and `check_config`;
- `hooks`: `TrainingHooks`, the interface a method implements, and `plain_parameter_name`;
- `loop`: `train`, its epochs and `evaluate`;
- `results`: `EpochRecord` and `TrainResult`, what a run reports;
- `optimizers`: the weights' optimizer and schedule (`weights_optimizer`) and the method's own optimizer;
- `resume`: the resume state's format, its checks, and `check_resume_settings`, which refuses a resume with other
  settings before any model is built.
"""

# model_device lived here before the ground floor (compressor.modules); the old import path keeps working.
from compressor.modules import model_device  # noqa: F401
from compressor.training.config import (ADAM_LR, DEFAULT_WEIGHT_DECAY, OPTIMIZERS, WD_MODES, TrainConfig,
                                        check_config, default_lr)
from compressor.training.hooks import TrainingHooks, plain_parameter_name
from compressor.training.loop import evaluate, train
from compressor.training.optimizers import weights_optimizer
from compressor.training.results import EpochRecord, TrainResult
# _save_state keeps its old import path; to intercept the loop's saving, patch compressor.training.loop._save_state.
from compressor.training.resume import _save_state, check_resume_settings  # noqa: F401

__all__ = ["ADAM_LR", "DEFAULT_WEIGHT_DECAY", "OPTIMIZERS", "WD_MODES", "EpochRecord", "TrainConfig", "TrainResult",
           "TrainingHooks", "check_config", "check_resume_settings", "default_lr", "evaluate", "plain_parameter_name",
           "train", "weights_optimizer"]

"""The Bernoulli method (Guenter & Sideris): channels and skip-units pruned while training, through Bernoulli gates
under a complexity-aware cost.

`method` holds the method (its options, the gated structure, the cost and the training hooks), `gates` the
stochastic gates, `controller` the budget controller that steers ρ to a target, and `restructure` the removal of
dead structures mid-training. Importing the package registers the method.
"""

from compressor.methods.bernoulli.controller import OVERSHOOT  # noqa: F401
from compressor.methods.bernoulli.method import PRUNE, BernoulliConfig, BernoulliMethod, hidden_groups  # noqa: F401

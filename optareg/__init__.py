"""optareg: regularizers as composable Optax gradient transformations.

Every regularizer is an ``optax.GradientTransformation`` that chains with the standard optimizers,
jit-compiles and runs unchanged on CPU, GPU, TPU and sharded meshes. Three kinds:

* gradient-side (before the learning rate): :func:`add_decayed_weights`;
* post-step (last in the chain, returns ``P(θ + u) − θ``): :func:`decoupled_weight_decay`,
  the ``prox_*`` family, :func:`spectral_clip`;
* extra-args (first in the chain, needs ``grad_fn``): :func:`sam_perturb`.

Diagnostics (:func:`track`, :func:`metrics`) and :func:`early_stopping` make them visible.
"""

from optareg import masks, operators
from optareg._chain import chain
from optareg.decay import (
    AddDecayedWeightsState,
    DecoupledWeightDecayState,
    add_decayed_weights,
    decay_schedule,
    decoupled_weight_decay,
)
from optareg.diagnostics import TrackState, metrics, track
from optareg.early_stopping import EarlyStopping, EarlyStoppingState, early_stopping
from optareg.proximal import (
    ProxAdamState,
    prox_adam,
    prox_elastic_net,
    prox_group_lasso,
    prox_l1,
    prox_nuclear,
)
from optareg.sam import SamPerturbState, sam_perturb
from optareg.spectral import SpectralClipState, spectral_clip, spectral_norms

__version__ = "0.1.0"

__all__ = [
    "AddDecayedWeightsState",
    "DecoupledWeightDecayState",
    "EarlyStopping",
    "EarlyStoppingState",
    "ProxAdamState",
    "SamPerturbState",
    "SpectralClipState",
    "TrackState",
    "add_decayed_weights",
    "chain",
    "decay_schedule",
    "decoupled_weight_decay",
    "early_stopping",
    "masks",
    "metrics",
    "operators",
    "prox_adam",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_l1",
    "prox_nuclear",
    "sam_perturb",
    "spectral_clip",
    "spectral_norms",
    "track",
]

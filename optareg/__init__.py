"""optareg: regularizers as composable Optax gradient transformations.

Every regularizer is an ``optax.GradientTransformation`` that chains with the standard optimizers,
jit-compiles and runs unchanged on CPU, GPU, TPU and sharded meshes. The kinds:

* gradient-side (before the learning rate): :func:`add_decayed_weights`, :func:`add_penalty`
  (ready penalties in :mod:`optareg.penalties`);
* post-step (last in the chain, returns ``P(θ + u) − θ``): :func:`decoupled_weight_decay`,
  the ``prox_*`` family, :func:`spectral_clip`, the constraints :func:`max_norm`,
  :func:`min_max_norm`, :func:`unit_norm`, :func:`non_neg`, :func:`project`;
* extra-args (first in the chain, needs ``grad_fn``): :func:`sam_perturb`, and the pass-through
  :func:`sharpness_monitor` (top Hessian eigenvalue, edge of stability).
* final (the very last): :func:`low_precision_updates`, so that bfloat16 / float16
  parameters take every step (Kahan or stochastic rounding).

Parameter averages (:func:`ema_params`, :func:`swa`, read with :func:`averaged_params`) go
after everything else; :func:`weight_decay_for_timescale` sets AdamW's decay by its timescale.
Diagnostics (:func:`track`, :func:`metrics`) and :func:`early_stopping` make them visible.
"""

from optareg import masks, operators, penalties
from optareg._chain import chain
from optareg.averaging import (
    AveragingState,
    averaged_params,
    decay_timescale,
    ema_params,
    recompute_batch_stats,
    swa,
    weight_decay_for_timescale,
)
from optareg.constraints import (
    AddPenaltyState,
    add_penalty,
    max_norm,
    min_max_norm,
    non_neg,
    project,
    unit_norm,
)
from optareg.decay import (
    AddDecayedWeightsState,
    DecoupledWeightDecayState,
    add_decayed_weights,
    decay_schedule,
    decoupled_weight_decay,
)
from optareg.diagnostics import TrackState, metrics, track
from optareg.early_stopping import EarlyStopping, EarlyStoppingState, early_stopping
from optareg.low_precision import LowPrecisionState, low_precision_updates
from optareg.nnx_utils import sam_grad_fn as nnx_sam_grad_fn
from optareg.proximal import (
    ProxAdamState,
    prox_adam,
    prox_elastic_net,
    prox_group_lasso,
    prox_l1,
    prox_nuclear,
)
from optareg.qk_clipping import (
    QKClipState,
    attention_max_logits,
    collect_max_logits,
    max_logit_attention_fn,
    qk_clip,
)
from optareg.sam import SamPerturbState, sam_perturb
from optareg.sharding import state_shardings
from optareg.sharpness import SharpnessMonitorState, hessian_top_eigenvalue, sharpness_monitor
from optareg.spectral import SpectralClipState, spectral_clip, spectral_norms
from optareg.spectral_control import (
    SpectralHammerState,
    SpectralWeightDecayState,
    spectral_hammer,
    spectral_weight_decay,
)

__version__ = "0.1.0"

__all__ = [
    "AddDecayedWeightsState",
    "AddPenaltyState",
    "AveragingState",
    "DecoupledWeightDecayState",
    "EarlyStopping",
    "EarlyStoppingState",
    "LowPrecisionState",
    "ProxAdamState",
    "QKClipState",
    "SamPerturbState",
    "SharpnessMonitorState",
    "SpectralClipState",
    "SpectralHammerState",
    "SpectralWeightDecayState",
    "TrackState",
    "add_decayed_weights",
    "add_penalty",
    "attention_max_logits",
    "averaged_params",
    "chain",
    "collect_max_logits",
    "decay_schedule",
    "decay_timescale",
    "decoupled_weight_decay",
    "early_stopping",
    "ema_params",
    "hessian_top_eigenvalue",
    "low_precision_updates",
    "max_logit_attention_fn",
    "masks",
    "max_norm",
    "min_max_norm",
    "metrics",
    "nnx_sam_grad_fn",
    "non_neg",
    "operators",
    "penalties",
    "project",
    "prox_adam",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_l1",
    "prox_nuclear",
    "qk_clip",
    "recompute_batch_stats",
    "sam_perturb",
    "sharpness_monitor",
    "spectral_clip",
    "spectral_hammer",
    "spectral_norms",
    "spectral_weight_decay",
    "state_shardings",
    "swa",
    "track",
    "unit_norm",
    "weight_decay_for_timescale",
]

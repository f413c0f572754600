r"""Updates that survive low-precision parameters: compensated (Kahan) and stochastic rounding.

With bfloat16 parameters a small step is silently lost: ``θ + u`` is rounded back to ``θ``
whenever ``|u|`` is below half a unit in the last place of ``θ`` (``2⁻⁹·|θ|`` for bf16), which
is where weight decay (``η·λ ≈ 1e-5…1e-3`` per step) and late-training Adam steps live.
:func:`low_precision_updates`, the last transform of a chain, rewrites the update so that
``optax.apply_updates`` lands, exactly, on a representable value chosen by a rounding method
that does not lose the small steps on average.

How a step is made to land exactly (``y`` is the representable value the method chose from the
float32 target ``x = θ + t``, ``t`` the step it wants to take; orientation ``θ > 0``):

* ``θ/2 ≤ x ≤ 2θ`` (every ordinary step): ``u' = y − θ`` is representable by Sterbenz's lemma,
  so ``θ + u'`` is exactly ``y`` whatever the precision of the addition;
* ``−θ < x < θ/2`` (a step that takes more than half of θ away): from θ, one addition reaches
  only ``θ + d`` with ``d`` representable, a grid coarser than the one near ``x``; the method
  rounds the *step* onto that grid, ``u' = R(t)``, and ``θ + u'`` is again exact (Sterbenz);
* otherwise (``|x| > 2|θ|``, or a sign flip past ``−θ``: steps larger than the weight, rare)
  the addition itself rounds: ``u' = RN(y − θ)`` lands on ``y`` or, where ``y`` cannot be
  reached from θ in one addition (or next to a power of two), on a neighbour of ``y``.
  ``"kahan"`` records where it actually lands, so nothing is lost.

The rounding is done with ``lax.reduce_precision`` and compared in the compute dtype, never by a
round trip through the narrow dtype, which XLA may drop ("excess precision").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _masking, _poststep, _validation

__all__ = ["LowPrecisionState", "is_low_precision", "low_precision_updates"]

_NAME = "low_precision_updates"
_METHODS = ("kahan", "stochastic")
_MAX_SEED = 2**32 - 1  # jax.random.PRNGKey silently wraps larger seeds without x64


class LowPrecisionState(NamedTuple):
    """State of :func:`low_precision_updates`.

    Attributes:
      count: int32 step counter of shape ``()``; with ``seed`` it decides the random bits
        (``fold_in(fold_in(PRNGKey(seed), count), leaf_index)``): those of ``"stochastic"``'s
        rounding of θ, and of ``"kahan"``'s rounding of its compensation buffer.
      compensation: ``"kahan"``: params-structured, for every low-precision leaf the part of the
        requested steps not yet applied to it (``x − θ_new``, rounded stochastically to the
        parameter's dtype; −0 where nothing is owed, so that signed zeros survive ``u + c``);
        ``None`` for float32 / float64 (and masked-out) leaves. ``None`` as a whole for
        ``"stochastic"``.
    """

    count: jax.Array  # int32, shape ()
    compensation: Any


def is_low_precision(dtype: Any) -> bool:
    """True for the parameter dtypes this module rounds onto: bfloat16 and float16."""
    return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def _compensation_leaf(p: Any, path: str, allocate: bool) -> jax.Array | None:
    """A zero buffer for a low-precision leaf (when ``allocate``), else ``None``."""
    dtype = jnp.result_type(p)
    if jnp.issubdtype(dtype, jnp.floating) and dtype.itemsize < 4 and not is_low_precision(dtype):
        raise TypeError(
            f"{_NAME}: the parameter at '{path or '<root>'}' has dtype {dtype}; only bfloat16 and "
            "float16 parameters are rounded (float32/float64 pass through). Mask it out."
        )
    if not (allocate and is_low_precision(dtype)):
        return None
    return jnp.full(jnp.shape(p), -0.0, dtype)  # −0: see _kahan


# ---------------------------------------------------------------------------------------------
# random bits: one PRNG key per (step, leaf), expanded into per-element bits by a counter hash
# ---------------------------------------------------------------------------------------------


def _mix32(x: jax.Array) -> jax.Array:
    """``lowbias32`` (C. Wellons): a bijection of uint32 with full avalanche, 7 integer ops."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _element_index(shape: tuple[int, ...]) -> jax.Array:
    """The row-major position of every element (uint32, wraps past 2³²), from iotas only, so
    that a sharded leaf computes its own part without communication."""
    idx = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in range(len(shape) - 1, -1, -1):
        iota = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
        idx = idx + iota * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return idx


def leaf_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """32 pseudo-random bits per element, a function of ``key`` and the element's position.

    ``key`` is a ``jax.random`` key (raw ``uint32`` words, already the output of threefry, or a
    typed key); with ``k₀``, ``k₁`` its first and last words, each element's bits are
    ``mix(mix(index ^ k₀) + k₁)``. This costs a few integer operations per element, fused with
    the rounding, where ``jax.random.bits`` for the whole leaf would cost several times the
    optimizer step on CPU (see ``bench/suite_low_precision.py``).
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    k = jnp.ravel(key).astype(jnp.uint32)
    return _mix32(_mix32(_element_index(shape) ^ k[0]) + k[-1])


def _uniform(bits: jax.Array, dtype: Any) -> jax.Array:
    """``bits`` as a uniform number in (0, 1): the midpoint of one of 2²⁴ cells."""
    return ((bits >> 8).astype(dtype) + 0.5) * jnp.asarray(2.0**-24, dtype)


# ---------------------------------------------------------------------------------------------
# rounding onto the parameter's grid
# ---------------------------------------------------------------------------------------------


def _round_nearest(v: jax.Array, dtype: Any) -> jax.Array:
    """``v`` rounded to the nearest value of ``dtype`` (ties to even), kept in ``v``'s dtype.

    ``lax.reduce_precision`` rather than ``astype(dtype).astype(v.dtype)``: XLA is allowed to
    drop such a round trip ("excess precision", on by default), and the whole point here is the
    rounding. Where ``dtype`` has a narrower exponent range than ``v`` (float16, or bfloat16 from
    float64), ``reduce_precision`` flushes the subnormals, so they are rounded by hand.
    """
    fi = jnp.finfo(dtype)
    r = jax.lax.reduce_precision(v, exponent_bits=fi.nexp, mantissa_bits=fi.nmant)
    if jnp.finfo(v.dtype).minexp < fi.minexp:
        s = jnp.asarray(float(fi.smallest_subnormal), v.dtype)  # a power of two: exact scaling
        r = jnp.where(jnp.abs(v) < float(fi.smallest_normal), jnp.round(v / s) * s, r)
    return r


def _next_toward(v: jax.Array, up: jax.Array, dtype: Any) -> jax.Array:
    """The neighbour in ``dtype`` of ``v`` (a value of ``dtype`` held in a wider dtype), above it
    where ``up`` else below it."""
    inf = jnp.asarray(jnp.inf, dtype)
    return jnp.nextafter(v.astype(dtype), jnp.where(up, inf, -inf)).astype(v.dtype)


def _round_stochastic_bf16(v: jax.Array, bits: jax.Array) -> jax.Array:
    """float32 → bfloat16 (kept in float32), up or down with probability proportional to the
    distance: 16 uniform bits added below the kept mantissa carry into it with exactly that
    probability; truncating then leaves a bfloat16 value."""
    b = jax.lax.bitcast_convert_type(v, jnp.uint32)
    r = jax.lax.bitcast_convert_type((b + (bits >> 16)) & jnp.uint32(0xFFFF0000), jnp.float32)
    return jnp.where(jnp.isfinite(v), r, v)


def _round_stochastic(v: jax.Array, dtype: Any, bits: jax.Array) -> jax.Array:
    """``v`` rounded to ``dtype`` (kept in ``v``'s dtype): to the neighbour on the far side of the
    nearest value with probability ``|v − nearest| / spacing``, so the expectation is ``v``."""
    if v.dtype == jnp.float32 and jnp.dtype(dtype) == jnp.bfloat16:
        return _round_stochastic_bf16(v, bits)
    y0 = _round_nearest(v, dtype)
    r = v - y0  # exact: y0 is the nearest value to v
    y1 = _next_toward(y0, r > 0, dtype)
    p = jnp.where(r != 0, r / (y1 - y0), 0)  # in [0, 1/2]; 0 where y1 overflows to ±inf
    return jnp.where(_uniform(bits, v.dtype) < p, y1, y0)


def _exact_step(th, t, x, rnd: Callable[[jax.Array], jax.Array], dtype: Any) -> jax.Array:
    """The step ``d`` (a value of ``dtype``, held in the compute dtype) such that ``θ + d``, in
    ``dtype``, lands exactly on the value ``rnd`` chooses near ``x = θ + t`` (the three regimes
    of the module docstring). ``θ``, ``t``, ``x`` are in the compute dtype."""
    a = jnp.abs(th)
    xs = jnp.where(th < 0, -x, x)  # oriented so that θ ≥ 0
    # −θ < x < θ/2 (and θ = ±0): round the step, θ + R(t) is exact; else round the target.
    coarse = ((xs < 0.5 * a) & (xs > -a)) | (th == 0)
    r = rnd(jnp.where(coarse, t, x))
    # θ/2 ≤ x ≤ 2θ: r − θ is exact (Sterbenz); beyond, the addition rounds and so does this.
    d = _round_nearest(jnp.where(coarse, r, r - th), dtype)
    return jnp.where(jnp.isfinite(th), d, t)  # θ = ±inf / NaN: the plain step


def _leaf_key(seed: int, count: jax.Array, leaf: _poststep.Leaf, axis_name: Any) -> jax.Array:
    """The key of one (step, leaf): ``fold_in(fold_in(PRNGKey(seed), count), index)``, and the
    shard's index along ``axis_name`` folded in when given."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), count), leaf.index)
    if axis_name is not None:  # each shard of a sharded leaf draws its own bits
        key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    return key


def _kahan(seed: int) -> Callable[..., Any]:
    def operator(leaf: _poststep.Leaf, count: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        """Round to nearest; the rounding error waits in the compensation buffer for the next
        step. The buffer has the parameter's dtype, so the error is itself rounded to it, and
        *stochastically*: rounded to nearest, a buffer ``c`` would swallow every step below
        half an ulp of ``c`` (about ``2⁻¹⁸·|θ|``: decay steps of ``3e-6`` would never land),
        while unbiased rounding keeps their sum on average."""
        dtype, th = leaf.param.dtype, leaf.theta
        c = leaf.state["compensation"]
        t = leaf.u + c.astype(th.dtype)  # the step owed: this update plus what was not applied
        d = _exact_step(th, t, th + t, lambda v: _round_nearest(v, dtype), dtype)
        owed = (th - _round_nearest(th + d, dtype)) + t  # x − θ_new, where it really lands
        bits = leaf_bits(_leaf_key(seed, count, leaf, None), jnp.shape(th))
        c_new = _round_stochastic(owed, dtype, bits)
        # −0 where nothing is owed (u + (−0) is u for every u, also −0); 0 where the step was
        # not finite (the NaN / Inf is in θ now, not to be added twice).
        keep = jnp.isfinite(c_new) & (c_new != 0)
        c_new = jnp.where(keep, c_new, jnp.asarray(-0.0, c_new.dtype)).astype(c.dtype)
        return d, {"compensation": c_new}

    return operator


def _stochastic(seed: int, axis_name: Any) -> Callable[..., Any]:
    def operator(leaf: _poststep.Leaf, count: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        dtype, th = leaf.param.dtype, leaf.theta
        bits = leaf_bits(_leaf_key(seed, count, leaf, axis_name), jnp.shape(th))
        d = _exact_step(th, leaf.u, leaf.x, lambda v: _round_stochastic(v, dtype, bits), dtype)
        return d, leaf.state

    return operator


def _check_seed(seed: Any) -> Any:
    if isinstance(seed, jax.Array) and seed.ndim == 0:  # from optax.inject_hyperparams
        return _validation.check_int_or_traced("seed", seed, low=0, high=_MAX_SEED)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(
            f"`seed` must be a Python int in [0, {_MAX_SEED}]; got {type(seed).__name__} "
            f"{seed!r}. Under pmap/shard_map pass `axis_name=` instead of a per-device seed."
        )
    return _validation.check_int("seed", seed, low=0, high=_MAX_SEED)


def _init_compensation(method: str) -> Callable[[Any], dict[str, Any]]:
    def init_state(params):
        if _validation.is_params_placeholder(params):  # optax.tree.map_params probing
            return {"compensation": params if method == "kahan" else None}
        kahan = method == "kahan"
        buffers = _poststep.map_with_paths(  # also checks the dtypes
            lambda p, path: _compensation_leaf(p, path, kahan), params
        )
        return {"compensation": buffers if kahan else None}

    return init_state


def low_precision_updates(
    method: str = "kahan",
    *,
    seed: int = 0,
    mask: _validation.MaskOrFn = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Make every step count on bfloat16 / float16 parameters: Kahan or stochastic rounding.

    The **last** transform of a chain. It takes the update ``u`` the chain wants to apply (any
    dtype) and returns ``u'`` in the parameter's dtype such that ``optax.apply_updates(θ, u')``
    lands *exactly* on a representable value chosen by ``method`` from the float32 target:

    .. math::

        \text{kahan:}\quad x = \theta + u + c,\quad \theta_{\mathrm{new}} = \mathrm{RN}(x),
        \quad c \leftarrow \mathrm{SR}(x - \theta_{\mathrm{new}});\qquad
        \text{stochastic:}\quad \theta_{\mathrm{new}} = \mathrm{SR}(\theta + u),\
        \mathbb{E}[\theta_{\mathrm{new}}] = \theta + u.

    ``"kahan"`` rounds to nearest and keeps the rounding error in a compensation buffer ``c``
    (one per low-precision leaf, in its dtype) that is added back on the next step, so steps
    far below the parameter's resolution accumulate until they move it. The buffer's own
    rounding is stochastic (``SR``, unbiased): rounded to nearest, ``c`` would swallow every
    step below half of *its* ulp, and once ``|c|`` nears half an ulp of θ that is every step
    below ``≈ 2⁻¹⁸·|θ|`` (decay steps of ``3e-6`` on weights of 1.0 would never land).
    ``"stochastic"`` keeps
    no buffer: it rounds up or down with probability proportional to the distance (unbiased),
    with bits that are a pure function of ``seed``, the step count and the leaf's index
    (``fold_in(fold_in(PRNGKey(seed), count), index)``, expanded per element by a counter
    hash), so runs are reproducible and a restored checkpoint continues the same stream.

    Leaves of float32 / float64 pass through unchanged, bit for bit, with no buffer (``None``
    in the state). NaN and Inf in the update propagate into the parameters (the compensation of
    such an entry is reset to 0). The exact-landing construction is described in
    :mod:`optareg.low_precision`.

    Devices: under ``jax.jit`` with sharded arrays the bits are those of the global array (the
    same numbers on any mesh). Under ``pmap`` / ``shard_map`` every device runs the same program:
    by default it draws the same bits, which is what replicated (data-parallel) parameters need
    to stay identical; when each device holds a *different shard* of a parameter, pass the
    sharded mesh axis as ``axis_name`` so each shard draws its own bits.

    Args:
      method: ``"kahan"`` (round to nearest + compensation buffer) or ``"stochastic"``.
      seed: the random seed, an int in ``[0, 2³² − 1]``: of the rounding of θ
        (``"stochastic"``) or of the compensation buffer (``"kahan"``).
      mask: optax mask: a pytree (or prefix) of bools, or a callable returning one; ``True``
        means "apply". Masked-out leaves pass through unchanged.
      axis_name: ``"stochastic"`` inside ``pmap`` / ``shard_map`` with parameters sharded over
        this axis: fold ``jax.lax.axis_index(axis_name)`` into the key.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (chain kind ``"final"``); its state is
      :class:`LowPrecisionState` (inside ``optax.MaskedState`` when a mask is given).

    Example:
      >>> import jax, jax.numpy as jnp, optax, optareg
      >>> def decayed(*final):  # 1000 steps of decoupled decay 1e-3 on 256 bf16 weights of 1.0
      ...     tx = optareg.chain(optareg.decoupled_weight_decay(1e-3), *final)
      ...     def step(carry, _):
      ...         p, s = carry
      ...         u, s = tx.update(jax.tree.map(jnp.zeros_like, p), s, p)
      ...         return (optax.apply_updates(p, u), s), None
      ...     p = {"w": jnp.ones((256,), jnp.bfloat16)}
      ...     (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), None, 1000)
      ...     return round(float(p["w"].astype(jnp.float32).mean()), 3)
      >>> decayed()  # lost: float32 gives (1 − 1e-3)¹⁰⁰⁰ = 0.368
      1.0
      >>> decayed(optareg.low_precision_updates("kahan"))
      0.367
      >>> decayed(optareg.low_precision_updates("stochastic", seed=0))  # 256 random walks
      0.367

    References:
      Kahan, "Further remarks on reducing truncation errors", CACM 1965.
      Zamirai et al., "Revisiting BFloat16 Training", 2020.
      Gupta et al., "Deep Learning with Limited Numerical Precision" (stochastic rounding),
      ICML 2015.
      Sterbenz, "Floating-Point Computation", 1974.
    """
    _validation.check_choice("method", method, _METHODS)
    seed = _check_seed(seed)
    _masking.check_mask("mask", mask)
    if axis_name is not None and method != "stochastic":
        raise ValueError(
            f'`axis_name` only applies to method="stochastic"; got axis_name={axis_name!r} '
            f"with method={method!r}. Drop it: Kahan's random bits only round its "
            "compensation buffer, where the same bits on every device do no harm."
        )
    if method == "kahan":
        operator = _kahan(seed)
    else:
        operator = _stochastic(seed, axis_name)
    hyperparams = {"count": lambda count: count}
    return _poststep.transformation(
        operator,
        name=_NAME,
        hyperparams=hyperparams,  # "count": the step counter itself, for the random key
        mask=mask,
        select=lambda p, _: is_low_precision(jnp.result_type(p)),
        init_state=_init_compensation(method),
        state_cls=LowPrecisionState,
        update_dtype="param",
        kind="final",
        returns="update",
    )

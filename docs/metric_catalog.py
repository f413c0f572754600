"""The metric catalog: every key ``optareg.metrics`` can return, per public transform.

The keys come from the code, the words from :data:`MEANINGS`:

* :func:`emitted` builds every entry of the conformance registry (``tests/registry``), initializes
  its state abstractly (``jax.eval_shape``: nothing is computed) on a params tree like the
  suite's, and reads the keys of ``optareg.metrics(state)``. Keys are the same at every step, so
  the init state lists them all. The ``<name>/`` prefix and per-parameter paths are normalized
  (``step/grad_norm/dense/kernel`` -> ``grad_norm/<path>``), giving one row per metric.
* :data:`MEANINGS` says, for each (transform, metric), what it measures, its unit and when it is
  computed. A new registry entry shows up on the page by itself; a key it emits without a row
  here is reported by :func:`missing_meanings` (the docs test fails naming it, and
  ``mkdocs build --strict`` fails on the hook's warning).

``docs/hooks.py`` renders the page (``metrics.md``) at build time; ``docs/griffe_house_style.py``
adds the same rows to each transform's docstring in the API reference; ``tests/test_docs.py``
checks the table against the registry.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import pathlib
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]

# When most metrics are computed (the `metrics_every` convention of every transform that has it).
EVERY = "every `metrics_every` steps (step 0 included); held in between"
FRACTION = "fraction in [0, 1]"
_PROX_ZEROS = (
    "fraction of exact zeros among the entries the prox acted on, after the step "
    "(the new parameters as `optax.apply_updates` writes them)",
    FRACTION,
    EVERY,
)


LAMBDA_T = "\\lambda_t"


def _prox_penalty(r: str) -> tuple[str, str, str]:
    return (f"the penalty at the new parameters, ${LAMBDA_T}{r}$", "loss units", EVERY)


def _on_boundary(what: str) -> dict[str, tuple[str, str, str]]:
    return {"on_boundary": (what, FRACTION, EVERY)}


_TRACK_WHEN = EVERY + "; `/<path>` per parameter leaf with `per_leaf=True`"

# transform -> metric (without the "<name>/" prefix; "<path>" for a parameter path) ->
# (meaning, unit, when computed). Keep one row per key the registry's entries emit.
MEANINGS: dict[str, dict[str, tuple[str, str, str]]] = {
    "prox_l1": {"zeros_fraction": _PROX_ZEROS, "penalty": _prox_penalty(r"\lVert\theta\rVert_1")},
    "prox_elastic_net": {
        "zeros_fraction": _PROX_ZEROS,
        "penalty": (
            "the penalty at the new parameters, $\\lambda_1\\lVert\\theta\\rVert_1 + "
            "\\tfrac{\\lambda_2}{2}\\lVert\\theta\\rVert_2^2$ (strengths at step $t$)",
            "loss units",
            EVERY,
        ),
    },
    "prox_group_lasso": {
        "zeros_fraction": _PROX_ZEROS,
        "penalty": _prox_penalty(r"\sum_g \sqrt{\lvert g\rvert}\,\lVert\theta_g\rVert_2"),
    },
    "prox_nuclear": {
        "zeros_fraction": _PROX_ZEROS,
        "penalty": (
            "the penalty at the new parameters, $\\lambda_t\\sum\\lVert\\theta\\rVert_*$ (one "
            "more SVD per matrix on the "
            "metrics steps)",
            "loss units",
            EVERY,
        ),
    },
    "prox_adam": {"zeros_fraction": _PROX_ZEROS},
    "sam_perturb": {
        "grad_norm": (
            "global norm $\\lVert g\\rVert_2$ of the incoming gradient",
            "gradient units",
            EVERY,
        ),
        "perturbed_grad_norm": (
            "global norm $\\lVert g_p\\rVert_2$ of the gradient at $\\theta + \\varepsilon$ "
            "(carried over on LookSAM reuse steps)",
            "gradient units",
            EVERY,
        ),
        "cos": (
            "cosine between the incoming gradient and the returned (SAM) one; 0 when either is 0",
            "cosine in [−1, 1]",
            EVERY,
        ),
    },
    "sharpness_monitor": {
        "top_eigenvalue": (
            "$\\lambda_{\\max}$, the top Hessian eigenvalue estimate (LOBPCG, warm-started); 0 "
            "before the "
            "first measurement",
            "loss / parameter²",
            EVERY,
        ),
        "edge_of_stability": (
            "$\\lambda_{\\max}\\eta/2$: near 1, gradient descent runs at the edge of stability; "
            "above 1 the "
            "sharpest direction is locally unstable",
            "dimensionless",
            EVERY + "; only when `learning_rate=` is given",
        ),
    },
    "spectral_clip": {
        "sigma/<path>": (
            "spectral norm of $\\theta + u$ before clipping, per matrix (exact for `exact`, the "
            "prediction used for the rescale for `power`, the power-iteration estimate for "
            "`newton_schulz`, the upper bound $k$ the cap was coupled to for `soft_cap`); `/<i>` "
            "per matrix of a stacked leaf",
            "parameter units",
            EVERY,
        ),
        "sigma_max": (
            "the largest of the `sigma/<path>` values (0 when no leaf is a matrix)",
            "parameter units",
            EVERY,
        ),
    },
    "spectral_hammer": {
        "sigma/<path>": (
            "power-iteration estimate $\\hat\\sigma_1$ of $\\theta + u$ before the hammer, per "
            "matrix; `/<i>` per "
            "matrix of a stacked leaf",
            "parameter units",
            EVERY,
        ),
        "sigma_max": ("the largest `sigma/<path>` (before the hammer)", "parameter units", EVERY),
        "sigma_max_after": (
            "the largest $\\hat\\sigma_1$ after the hammer, $\\min(\\hat\\sigma_1, c)$",
            "parameter units",
            EVERY,
        ),
    },
    "spectral_weight_decay": {
        "sigma/<path>": (
            "power-iteration estimate $\\hat\\sigma_1(\\theta)$ before the decay, per matrix; "
            "`/<i>` per matrix of "
            "a stacked leaf",
            "parameter units",
            EVERY,
        ),
        "sigma_max": ("the largest `sigma/<path>` (before the decay)", "parameter units", EVERY),
        "sigma_max_after": (
            "the largest $(1 - \\lambda_t)\\,\\hat\\sigma_1(\\theta)$, the top singular value "
            "the decay left",
            "parameter units",
            EVERY,
        ),
    },
    "qk_clip": {
        "max_logit": (
            "the largest attention logit handed in at the last metrics step, over all heads",
            "logit units",
            EVERY,
        ),
        "heads_clipped": ("how many heads were rescaled", "count (float32)", EVERY),
    },
    "max_norm": _on_boundary(
        "fraction of units on the ball's boundary after the step ($\\lVert w_j\\rVert_2 \\ge "
        "c\\,(1 - 10^{-6})$): the "
        "share of the constraint that is active"
    ),
    "min_max_norm": _on_boundary(
        "fraction of units whose bound is active this step, measured on $w = \\theta + u$: "
        "$\\lVert w_j\\rVert_2 \\ge M(1 - 10^{-6})$, or $m > 0$ and "
        "$\\lVert w_j\\rVert_2 \\le m(1 + 10^{-6})$ (zero units included)"
    ),
    "unit_norm": _on_boundary("fraction of units on the unit sphere after the step"),
    "non_neg": _on_boundary("fraction of entries that are exactly 0 after the step"),
    "project": _on_boundary("fraction of (masked-in) leaves the projection changed"),
    "add_penalty": {
        "value": (
            "$\\lambda_t R(\\theta_t)$, the penalty at the parameters the gradient was taken at "
            "(logged apart "
            "from the loss)",
            "loss units",
            "every step (0 with a constant strength of 0: R is not evaluated)",
        ),
    },
    "ema_params": {
        "distance_ratio": (
            "$\\lVert\\bar\\theta - \\theta_{t+1}\\rVert_2 / \\lVert\\theta_{t+1}\\rVert_2$, how "
            "far the average is from the parameters (over the "
            "averaged leaves; 0 before the first averaging step)",
            "dimensionless",
            EVERY,
        ),
    },
    "swa": {
        "distance_ratio": (
            "$\\lVert\\bar\\theta - \\theta_{t+1}\\rVert_2 / \\lVert\\theta_{t+1}\\rVert_2$, how "
            "far the running mean is from the parameters "
            "(over the averaged leaves; 0 before the first averaging step)",
            "dimensionless",
            EVERY,
        ),
    },
    "track": {
        "grad_norm": (
            "$\\lVert u\\rVert_2$ of the updates it receives (placed first: the raw gradient)",
            "update units",
            _TRACK_WHEN,
        ),
        "update_norm": (
            "$\\lVert u\\rVert_2$, the same number as `grad_norm` (reads well when placed last)",
            "update units",
            _TRACK_WHEN,
        ),
        "param_norm": (
            "$\\lVert\\theta\\rVert_2$ of the current parameters",
            "parameter units",
            _TRACK_WHEN,
        ),
        "update_ratio": (
            "$\\lVert u\\rVert_2 / \\lVert\\theta\\rVert_2$ (placed last: the effective step size)",
            "dimensionless",
            _TRACK_WHEN,
        ),
        "applied_update_ratio": (
            "$\\lVert y - \\theta\\rVert_2 / \\lVert\\theta\\rVert_2$ with $y$ = "
            "`apply_updates(θ, u)` rounded to θ's dtype: the step that "
            "survives rounding",
            "dimensionless",
            _TRACK_WHEN,
        ),
        "lost_update_fraction": (
            "fraction of the entries with $u \\ne 0$ whose applied change $y - \\theta$ is 0 "
            "(lost to "
            "rounding, e.g. bfloat16 weights)",
            FRACTION,
            _TRACK_WHEN,
        ),
        "sparsity": ("fraction of exact zeros in `apply_updates(θ, u)`", FRACTION, _TRACK_WHEN),
        "nonfinite": ("number of NaN / Inf entries of u", "count (int32)", _TRACK_WHEN),
    },
}
for _metric in ("grad_norm", "update_norm", "param_norm", "update_ratio", "applied_update_ratio",
                "lost_update_fraction", "sparsity", "nonfinite"):  # fmt: skip
    _m, _u, _ = MEANINGS["track"][_metric]
    MEANINGS["track"][f"{_metric}/<path>"] = (f"{_m}, per parameter leaf", _u, _TRACK_WHEN)


# --------------------------------------------------------------------------------------------
# the keys, from the registry
# --------------------------------------------------------------------------------------------

_SHAPES = {"conv": {"kernel": (3, 3, 2, 4)}, "dense": {"bias": (4,), "kernel": (6, 4)}, "scale": ()}


@dataclasses.dataclass(frozen=True)
class Transform:
    """What the catalog knows of one public transform."""

    name: str  # the factory's name, optareg.<name>
    prefix: str  # the default "<name>/" prefix of its keys
    configurable: bool  # the prefix is the `name=` argument
    metrics: tuple[str, ...]  # normalized metric names, sorted
    entries: Mapping[str, tuple[str, ...]]  # metric -> ids of the registry entries emitting it


def _registry_entries() -> list[Any]:
    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from registry import ENTRIES  # noqa: PLC0415 - the conformance registry, found at run time

    return list(ENTRIES)


def _factory_name(factory: Any) -> str:
    """The public ``optareg.<name>`` an entry builds; a registry wrapper named
    ``<public name>_...`` (e.g. ``qk_clip_with_fixed_logits``) counts as that transform."""
    import optareg  # noqa: PLC0415

    name = getattr(factory, "__name__", type(factory).__name__)
    public = [n for n in optareg.__all__ if callable(getattr(optareg, n, None))]
    if name in public:
        return name
    return max((n for n in public if name.startswith(n + "_")), key=len, default=name)


def _default_prefix(factory: Any) -> tuple[str, bool]:
    import optareg  # noqa: PLC0415

    factory = getattr(optareg, _factory_name(factory), factory)
    try:
        param = inspect.signature(factory).parameters.get("name")
    except (TypeError, ValueError):
        param = None
    if param is not None and isinstance(param.default, str):
        return param.default, True
    return _factory_name(factory), False


def _normalize(key: str, prefix: str, paths: Iterable[str]) -> str:
    rest = key[len(prefix) + 1 :] if key.startswith(prefix + "/") else key.partition("/")[2]
    rest = re.sub(r"#\d+$", "", rest)
    alternatives = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
    return re.sub(rf"/(?:{alternatives})(?:/\d+)*$", "/<path>", rest)


def _entry_keys(entry: Any, params: Any) -> list[str]:
    import jax  # noqa: PLC0415

    import optareg  # noqa: PLC0415

    tx = entry.make()
    return sorted(jax.eval_shape(lambda p: optareg.metrics(tx.init(p)), params))


@functools.lru_cache(maxsize=1)
def emitted() -> tuple[Transform, ...]:
    """One :class:`Transform` per factory of the registry, in registry order."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    from optareg import _paths  # noqa: PLC0415

    params = jax.tree.map(
        lambda s: jnp.zeros(s, jnp.float32), _SHAPES, is_leaf=lambda x: isinstance(x, tuple)
    )
    paths = [_paths.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    found: dict[str, dict[str, list[str]]] = {}
    prefixes: dict[str, tuple[str, bool]] = {}
    for entry in _registry_entries():
        name = _factory_name(entry.factory)
        prefixes.setdefault(name, _default_prefix(entry.factory))
        prefix = entry.kwargs.get("name", prefixes[name][0])
        metrics = found.setdefault(name, {})
        for key in _entry_keys(entry, params):
            metrics.setdefault(_normalize(key, prefix, paths), []).append(entry.id)
    return tuple(
        Transform(
            name=name,
            prefix=prefixes[name][0],
            configurable=prefixes[name][1],
            metrics=tuple(sorted(metrics)),
            entries={m: tuple(dict.fromkeys(ids)) for m, ids in metrics.items()},
        )
        for name, metrics in found.items()
    )


def missing_meanings(transforms: Iterable[Transform]) -> list[str]:
    """Keys (``"<transform>: <prefix>/<metric>"``) emitted with no row in :data:`MEANINGS`."""
    return [
        f"{t.name}: {t.prefix}/{m}"
        for t in transforms
        for m in t.metrics
        if m not in MEANINGS.get(t.name, {})
    ]


def stale_meanings(transforms: Iterable[Transform]) -> list[str]:
    """Rows of :data:`MEANINGS` that a registry transform does not emit (renamed metrics).

    A transform with no registry entry yet is not checked: its rows may come first.
    """
    emitted_ = {t.name: set(t.metrics) for t in transforms}
    return [
        f"{name}: {metric}"
        for name, rows in MEANINGS.items()
        if name in emitted_
        for metric in rows
        if metric not in emitted_[name]
    ]


# --------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------

_MISSING = ("**no meaning yet**: add a row to `MEANINGS` in `docs/metric_catalog.py`", "?", "?")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(t: Transform) -> str:
    """The markdown table of one transform's keys."""
    rows = ["| key | meaning | unit | computed |", "|---|---|---|---|"]
    for metric in t.metrics:
        meaning, unit, when = MEANINGS.get(t.name, {}).get(metric, _MISSING)
        key = f"`{t.prefix}/{metric}`"
        rows.append(f"| {key} | {_cell(meaning)} | {_cell(unit)} | {_cell(when)} |")
    return "\n".join(rows)


def prefix_note(t: Transform) -> str:
    if t.configurable:
        return f'Keys start with the `name=` argument (default `"{t.prefix}"`).'
    return f"Keys start with `{t.prefix}/`."


def page(transforms: Iterable[Transform]) -> str:
    transforms = list(transforms)
    with_metrics = [t for t in transforms if t.metrics]
    without = [t for t in transforms if not t.metrics]
    out = [
        "# Metric catalog",
        "",
        "Every key that `optareg.metrics(opt_state)` can return, for each public transform: "
        "what it measures, its unit and when it is computed. The values are JAX scalars "
        "(float32 unless the unit says otherwise) and the keys are the same at every step, so "
        "`jax.device_get(optareg.metrics(state))` can go straight to a logger, inside or "
        "outside `jit`. When two transforms in one chain record the same key, the second gets a "
        "`#2` suffix (give them distinct `name=` where they take one).",
        "",
        "This page is generated when the site is built, from the keys that every entry of the "
        "conformance registry (`tests/registry`) actually emits, with the meanings kept in "
        "`docs/metric_catalog.py`; `tests/test_docs.py` checks the two agree. `<path>` stands "
        "for a parameter's path (`dense/kernel`), as `optareg.masks.path_names` spells it.",
        "",
    ]
    for t in with_metrics:
        out += [f"## `{t.name}`", "", prefix_note(t), "", table(t), ""]
    if without:
        names = ", ".join(f"`{t.name}`" for t in without)
        out += [
            "## Transforms that record no metric",
            "",
            f"{names}: their effect is visible with `optareg.track` placed after them "
            "(`update_ratio`, `applied_update_ratio`, `param_norm`).",
            "",
        ]
    return "\n".join(out)


def docstring_section(name: str) -> str | None:
    """The ``Metrics:`` section appended to a transform's docstring (None: not in the registry)."""
    by_name = {t.name: t for t in emitted()}
    t = by_name.get(name)
    if t is None:
        return None
    if not t.metrics:
        return "Metrics:\n  None recorded (`optareg.track` placed after it shows the effect).\n"
    lines = [
        "Metrics:",
        f"  Read with `optareg.metrics(state)`. {prefix_note(t)} All transforms: the Metric "
        "catalog page.",
        "",
        *("  " + row for row in table(t).split("\n")),
    ]
    return "\n".join(lines) + "\n"

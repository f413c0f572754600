"""Every optareg transform on parameters sharded across 8 devices (simulated on CPU in CI).

Run in its own process, with the device count forced before jax is imported::

    XLA_FLAGS="--xla_force_host_platform_device_count=8" \\
      .venv/bin/python -m pytest -q -p no:randomly -m multidevice tests/test_multidevice.py

The main suite (``-m "not multidevice"``) imports this module during collection; with fewer than
8 devices the module skips itself with a reason instead of failing.

What is checked:
  * every registered transform (``registry.ENTRIES``), under ``jax.jit``, on params and optimizer
    state placed with ``NamedSharding`` on a ("data", "model") = 2x4 mesh, both an Auto one
    (``jax.sharding.Mesh``) and an Explicit one (``jax.make_mesh`` under ``jax.set_mesh``, the
    state placed with ``optareg.state_shardings``), in up to three layouts:
    updates keep the params' sharding, the state made by ``jax.jit(tx.init, out_shardings=...)``
    keeps the sharding derived from the params with ``optax.tree.map_params``, and the numbers
    equal the single-device run (1e-6 relative, float32);
  * ``spectral_clip`` (every method) on a kernel sharded along either axis equals the
    single-device result; the collectives in its compiled HLO are counted, and ``power`` never
    all-gathers the whole matrix;
  * elementwise post-step transforms (``prox_l1``, ``decoupled_weight_decay``) compile to HLO
    without any all-gather;
  * ``sam_perturb(axis_name="data")`` inside ``jax.shard_map``: per-device (m-sharpness)
    perturbations equal a device-free ``jax.vmap`` reference over the 8 micro-batches, and
    forgetting ``jax.lax.pcast(params, "data", to="varying")`` silently gives plain SAM.
"""

from __future__ import annotations

import contextlib
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import one_per
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from registry import ENTRIES, Entry

import optareg

pytestmark = pytest.mark.multidevice

N_DEVICES = 8
if jax.device_count() < N_DEVICES:
    pytest.skip(
        f"needs {N_DEVICES} devices, found {jax.device_count()}: run this file in its own process "
        'with XLA_FLAGS="--xla_force_host_platform_device_count=8" set before jax is imported '
        "(scripts/test.sh does).",
        allow_module_level=True,
    )

RTOL = 1e-6  # float32, relative (to the largest entry of the leaf, so near-zeros are fair)
STEPS = 3

# The conformance suite's tree structure (registry masks are written for it), with dimensions
# divisible by the mesh axes: a conv kernel (HWIO), a Dense kernel and bias, and a scalar.
SHAPES = {
    "conv": {"kernel": (3, 3, 8, 16)},
    "dense": {"bias": (32,), "kernel": (16, 32)},
    "scale": (),
}

# Three placements on the 2x4 ("data", "model") mesh.
LAYOUTS = {
    # kernels split along their output axis over "model", biases too, scalars replicated
    "model_out": {
        "conv": {"kernel": P(None, None, None, "model")},
        "dense": {"bias": P("model"), "kernel": P(None, "model")},
        "scale": P(),
    },
    # kernels split along their input axis over "model", biases replicated
    "model_in": {
        "conv": {"kernel": P(None, None, "model", None)},
        "dense": {"bias": P(), "kernel": P("model", None)},
        "scale": P(),
    },
    # 2-D: input axis over "data", output axis over "model"
    "data_model": {
        "conv": {"kernel": P(None, None, "data", "model")},
        "dense": {"bias": P("model"), "kernel": P("data", "model")},
        "scale": P(),
    },
}

# Every public transform factory must have at least one registry entry (so it is checked here).
TRANSFORMS = (
    "add_decayed_weights",
    "decoupled_weight_decay",
    "prox_l1",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_nuclear",
    "prox_adam",
    "sam_perturb",
    "spectral_clip",
    "track",
)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def is_spec(x):
    return isinstance(x, P)


def mesh_2d() -> Mesh:
    return Mesh(np.asarray(jax.devices()[:N_DEVICES]).reshape(2, 4), ("data", "model"))


def mesh_explicit() -> Mesh:
    """The same 2x4 mesh as ``jax.make_mesh`` makes it (jax >= 0.7): ``AxisType.Explicit``."""
    mesh = jax.make_mesh((2, 4), ("data", "model"))
    assert set(mesh.axis_types) == {jax.sharding.AxisType.Explicit}, mesh.axis_types
    return mesh


MESHES = {"auto": mesh_2d, "explicit": mesh_explicit}


def on_mesh(mesh: Mesh):
    """``jax.set_mesh(mesh)`` for an explicit mesh (where it is required), else nothing."""
    explicit = jax.sharding.AxisType.Explicit in mesh.axis_types
    return jax.set_mesh(mesh) if explicit else contextlib.nullcontext()


def mesh_1d() -> Mesh:
    return Mesh(np.asarray(jax.devices()[:N_DEVICES]), ("data",))


def single_device():
    return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def make_tree(seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jnp.asarray(scale * rng.normal(size=s), jnp.float32),
        SHAPES,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def loss(params):
    """Smooth and non-quadratic, with a cross-leaf matmul term so gradients mix shards."""
    elementwise = sum(jnp.sum(0.5 * x**2 + jnp.sin(x)) for x in jax.tree.leaves(params))
    # K·b as a broadcast product and a sum: on an explicit mesh a matmul contracting the sharded
    # axis would need an ``out_sharding`` (the user's model code, not optareg's)
    kb = jnp.sum(params["dense"]["kernel"] * params["dense"]["bias"], axis=1)
    coupling = jnp.sum(jnp.tanh(kb))
    return elementwise + 0.1 * coupling * params["scale"]


def grad_fn(params):
    return jax.grad(loss)(params)


def extra_args(entry: Entry) -> dict:
    return {"grad_fn": grad_fn} if entry.needs_grad_fn else {}


def param_shardings(mesh: Mesh, layout: str):
    return jax.tree.map(lambda s: NamedSharding(mesh, s), LAYOUTS[layout], is_leaf=is_spec)


def state_shardings(tx, params, shardings, replicated):
    """Shardings for ``tx.init(params)`` and which of them are binding.

    ``optax.tree.map_params`` finds the params-structured subtrees of the state; a leaf there with
    its parameter's shape gets the parameter's sharding and must keep it. Every other leaf (a
    counter, a scalar statistic, a power-iteration vector) starts replicated and the compiler may
    re-shard it; for those the test only asks that the sharding is stable from step to step.

    Returns:
      ``(shardings, binding)``: two trees with the state's structure.
    """
    shapes = jax.eval_shape(tx.init, params)
    shape_of = {
        id(s): p.shape
        for s, p in zip(jax.tree.leaves(shardings), jax.tree.leaves(params), strict=True)
    }

    def like_param(leaf, sharding):
        if isinstance(leaf, optax.MaskedNode) or leaf is None:
            return leaf
        return (sharding, True) if leaf.shape == shape_of[id(sharding)] else (replicated, False)

    pairs = optax.tree.map_params(
        tx,
        like_param,
        shapes,
        shardings,
        transform_non_params=lambda x: jax.tree.map(lambda _: (replicated, False), x),
        is_leaf=lambda x: isinstance(x, optax.MaskedNode) or x is None,
    )
    is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], bool)  # noqa: E731
    return (
        jax.tree.map(lambda x: x[0], pairs, is_leaf=is_pair),
        jax.tree.map(lambda x: x[1], pairs, is_leaf=is_pair),
    )


def assert_same_sharding(tree, shardings, what, only=None):
    """Every leaf's sharding is equivalent to the expected one (``only``: a bool tree, check the
    True leaves)."""
    leaves = jax.tree.leaves(tree)
    want = jax.tree.leaves(shardings)
    check = jax.tree.leaves(only) if only is not None else [True] * len(leaves)
    assert len(leaves) == len(want) == len(check), what
    for i, (x, s, c) in enumerate(zip(leaves, want, check, strict=True)):
        assert not c or x.sharding.is_equivalent_to(s, x.ndim), (
            f"{what}: leaf {i} of shape {x.shape} has sharding {x.sharding}, expected {s}"
        )


def assert_close_rel(actual, expected, what, rtol=RTOL, like=None):
    """Leaf by leaf: |a − e| ≤ rtol·s for float leaves (equal for the rest), where s is the
    largest |e| of the leaf, or of ``like`` (a tree of the same structure) if that is larger.

    ``like=params`` for updates: a post-step update ``P(θ + u) − θ`` is a difference that carries
    the rounding of θ, so it is compared at θ's scale (i.e. the new params agree to 1e-6).
    """
    a_leaves, treedef = jax.tree.flatten(actual)
    e_leaves = treedef.flatten_up_to(expected)
    l_leaves = treedef.flatten_up_to(like) if like is not None else [None] * len(e_leaves)
    for i, (a, e, ref) in enumerate(zip(a_leaves, e_leaves, l_leaves, strict=True)):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape and a.dtype == e.dtype, (what, i, a.shape, e.shape)
        if not np.issubdtype(e.dtype, np.floating):
            np.testing.assert_array_equal(a, e, err_msg=f"{what}: leaf {i}")
            continue
        scale = max(float(np.max(np.abs(e), initial=0.0)), 1e-30)
        if ref is not None:
            scale = max(scale, float(np.max(np.abs(np.asarray(ref)), initial=0.0)))
        np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol * scale, err_msg=f"{what}: leaf {i}")


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(
    r"=\s*(?P<type>.*?)\s(?P<op>" + "|".join(COLLECTIVES) + r")(?:-start)?\(", re.MULTILINE
)


def collectives(hlo: str) -> dict[str, list[int]]:
    """Collective ops in compiled HLO text: op name -> list of result sizes (elements)."""
    out: dict[str, list[int]] = {op: [] for op in COLLECTIVES}
    for m in _OP.finditer(hlo):
        dims = re.findall(r"\[([0-9,]*)\]", m.group("type"))
        sizes = [int(np.prod([int(d) for d in ds.split(",") if d])) for ds in dims]
        out[m.group("op")].append(max(sizes, default=1))
    return out


def collective_counts(hlo: str) -> dict[str, int]:
    return {k: len(v) for k, v in collectives(hlo).items()}


# --------------------------------------------------------------------------------------------
# every transform on the 2-D mesh
# --------------------------------------------------------------------------------------------


BASE_ENTRIES = one_per(lambda e: e.factory, param=False)
# Every entry in the layout (kernels split along "model"); the first entry of each
# public factory also in the other two layouts (the compile time of 3 layouts x 50 entries on 2
# CPU cores would not fit the CI budget).
# Both kinds of mesh: a ``jax.sharding.Mesh`` (Auto axes, the compiler propagates shardings) and
# ``jax.make_mesh``'s Explicit axes (shardings are part of the types, under ``jax.set_mesh``).
# Every entry on both; the first entry of each factory with kernels split along their input
# axis on both, and 2-D on the Auto mesh (the spectral test below covers 2-D on both).
CASES = [
    (e, layout, mesh)
    for mesh in MESHES
    for e, layout in [(e, "model_out") for e in ENTRIES]
    + [
        (e, layout)
        for e in BASE_ENTRIES
        for layout in (("model_in", "data_model") if mesh == "auto" else ("model_in",))
    ]
]


def test_every_public_transform_is_registered():
    """The sharded check below is driven by the registry: it must cover every public factory."""
    registered = {e.factory for e in ENTRIES}
    missing = [name for name in TRANSFORMS if getattr(optareg, name) not in registered]
    assert not missing, f"public transforms without a registry entry: {missing}"


def _is_params_tree(x) -> bool:
    try:
        return jax.tree.structure(x) == jax.tree.structure(make_tree(0)) and all(
            hasattr(leaf, "shape") for leaf in jax.tree.leaves(x)
        )
    except Exception:  # noqa: BLE001 - anything that is not a params tree
        return False


# Entries whose params-shaped data sits inside a function argument: rebuilt here too.
_REBUILT = {"add_penalty-l2_to": lambda tree: {"penalty": optareg.penalties.l2_to(tree)}}

# A projection of the whole tree at once (the L1 ball sorts all entries together): the layout
# of its result is whatever XLA propagates through the user's projection, so only the numbers
# are checked; per-leaf and elementwise transforms keep the params' sharding.
_LAYOUT_FROM_USER_FN = {"project", "project-mask", "project-every2"}


def build(entry: Entry) -> optax.GradientTransformation:
    """``chained(entry)``, with params-shaped array arguments (e.g. a decay ``reference``)
    rebuilt for this file's larger shapes."""
    overrides = {k: make_tree(99) for k, v in entry.kwargs.items() if _is_params_tree(v)}
    if entry.id in _REBUILT:
        overrides.update(_REBUILT[entry.id](make_tree(99)))
    base = optax.adam(1e-2)
    tx = entry.make(**overrides)
    return optax.chain(tx, base) if entry.position == "first" else optax.chain(base, tx)


def run(tx, extra, params0, grads, put, init_shardings=None):
    """``len(grads)`` jitted steps from ``params0``; ``put`` places each input tree."""

    @jax.jit
    def step(g, state, params):
        updates, state = tx.update(g, state, params, **extra)
        return updates, state, optax.apply_updates(params, updates)

    params = put(params0)
    state = jax.jit(tx.init, out_shardings=init_shardings)(params)
    out = [(None, state, params)]
    for g in grads:
        updates, state, params = step(put(g), state, params)
        out.append((updates, state, params))
    return out


_REFERENCE: dict[str, list] = {}  # entry id -> the single-device run (shared by the layouts)


@pytest.mark.parametrize(
    "entry, layout, mesh_kind", CASES, ids=[f"{e.id}-{layout}-{m}" for e, layout, m in CASES]
)
def test_sharded_step_matches_single_device(entry, layout, mesh_kind):
    """Sharded params + state under jit: updates keep the params' sharding, params-shaped state
    keeps its params' sharding (the rest a stable one), and the numbers equal the single-device
    run (1e-6 relative). On the explicit mesh the state's shardings come from
    ``optareg.state_shardings``, which must agree with this file's own derivation."""
    mesh = MESHES[mesh_kind]()
    tx = build(entry)
    extra = extra_args(entry)
    p_shard = param_shardings(mesh, layout)
    params0 = make_tree(0)
    grads = [make_tree(10 + i, scale=0.5) for i in range(STEPS)]
    s_shard, binding = state_shardings(tx, params0, p_shard, NamedSharding(mesh, P()))
    lib = optareg.state_shardings(tx, params0, p_shard, mesh)
    assert jax.tree.structure(lib) == jax.tree.structure(s_shard)
    for got, want in zip(jax.tree.leaves(lib), jax.tree.leaves(s_shard), strict=True):
        assert got == want, f"optareg.state_shardings: {got} != {want}"

    with on_mesh(mesh):
        sharded = run(tx, extra, params0, grads, lambda t: jax.device_put(t, p_shard), lib)
    if entry.id not in _REFERENCE:
        _REFERENCE[entry.id] = run(
            tx, extra, params0, grads, lambda t: jax.device_put(t, single_device())
        )
    reference = _REFERENCE[entry.id]

    # Decompositions (eigh/SVD/Newton-Schulz) and global norms amplify the different summation
    # order of a sharded reduction: their entries register a larger tolerance (``entry.atol``).
    tol = max(RTOL, entry.atol)
    _, state0, _ = sharded[0]
    assert_same_sharding(state0, s_shard, "state from jit(tx.init, out_shardings=...)")
    assert_close_rel(state0, reference[0][1], "init state", rtol=tol)
    for i, ((u, s, p), (u_ref, s_ref, p_ref)) in enumerate(
        zip(sharded[1:], reference[1:], strict=True)
    ):
        chex.assert_tree_all_finite(u)
        if entry.id not in _LAYOUT_FROM_USER_FN:  # (there, the optimizer state follows θ)
            assert_same_sharding(u, p_shard, f"updates at step {i}")
            assert_same_sharding(p, p_shard, f"params at step {i}")
            assert_same_sharding(s, s_shard, f"params-shaped state at step {i}", only=binding)
        assert_close_rel(p, p_ref, f"params after step {i}", rtol=tol)
        assert_close_rel(u, u_ref, f"updates at step {i}", rtol=tol, like=reference[i][2])
        assert_close_rel(s, s_ref, f"state at step {i}", rtol=tol)
    # the other state leaves: whatever the compiler chose after the first step is kept after
    for i in range(2, STEPS + 1):
        s_prev = jax.tree.map(lambda x: x.sharding, sharded[i - 1][1])
        assert_same_sharding(sharded[i][1], s_prev, f"state sharding drifts at step {i}")


# --------------------------------------------------------------------------------------------
# spectral_clip on a sharded kernel: numbers, and the collectives each method compiles to
# --------------------------------------------------------------------------------------------

KERNEL = (32, 64)  # (in, out); σ_max ≈ √32 + √64 ≈ 13.7 ≫ max_norm, so the clip is active
SPECTRAL_SPECS = {
    "in/model": P("model", None),
    "out/model": P(None, "model"),
    "in/data,out/model": P("data", "model"),
}
SPECTRAL_METHODS = ("power", "exact", "newton_schulz")


def _spectral_case(method, spec, put):
    """One compiled ``spectral_clip`` step (after ``sgd``) on a single kernel."""
    tx = optax.chain(optax.sgd(0.1), optareg.spectral_clip(1.0, method=method))
    rng = np.random.default_rng(3)
    params = {"w": jnp.asarray(rng.normal(size=KERNEL), jnp.float32)}
    grads = {"w": jnp.asarray(rng.normal(size=KERNEL), jnp.float32)}
    params, grads = put(params), put(grads)
    state = jax.jit(tx.init)(params)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    updates, new_state = step(grads, state, params)
    hlo = step.lower(grads, state, params).compile().as_text()
    return params, updates, new_state, hlo


@pytest.mark.parametrize("mesh_kind", list(MESHES))
@pytest.mark.parametrize("spec", list(SPECTRAL_SPECS))
@pytest.mark.parametrize("method", SPECTRAL_METHODS)
def test_spectral_clip_sharded_kernel(method, spec, mesh_kind):
    mesh = MESHES[mesh_kind]()
    sharding = {"w": NamedSharding(mesh, SPECTRAL_SPECS[spec])}
    with on_mesh(mesh):
        params, u, state, hlo = _spectral_case(method, spec, lambda t: jax.device_put(t, sharding))
    _, u_ref, state_ref, _ = _spectral_case(
        method, spec, lambda t: jax.device_put(t, single_device())
    )
    assert_same_sharding(u, sharding, f"spectral_clip({method}) updates")
    assert_close_rel(u, u_ref, f"spectral_clip({method}) updates", rtol=1e-5)
    assert_close_rel(state, state_ref, f"spectral_clip({method}) state", rtol=1e-5)
    # the clipped kernel really is clipped (the test would pass vacuously otherwise)
    w_new = np.asarray(params["w"] + u["w"], np.float64)
    sigma = np.linalg.norm(w_new, 2)
    # power: one warm-started iteration per step estimates σ of the new matrix from the old
    # vectors, so it lands near, not exactly on, the bound; the other two project.
    assert np.linalg.norm(np.asarray(params["w"]), 2) > 10.0
    assert sigma <= 1.0 + {"power": 5e-2, "exact": 1e-4, "newton_schulz": 2e-2}[method], sigma

    found = collectives(hlo)
    full = int(np.prod(KERNEL))
    if method == "power":
        # the matvecs need reductions over the sharded axis; gathering the matrix is not allowed
        big = [n for n in found["all-gather"] + found["all-to-all"] if n >= full]
        assert not big, f"power iteration gathers the whole {KERNEL} kernel: {found}"


@pytest.mark.parametrize("spec", ["in/model", "out/model"])
def test_spectral_norms_explicit_mesh(spec):
    """The SVD diagnostic on an explicit-sharded stack of kernels: gathered, σ_max per layer
    equals numpy's (float64)."""
    mesh = mesh_explicit()
    rng = np.random.default_rng(11)
    w = rng.normal(size=(2,) + KERNEL)
    stack_spec = P(None, *SPECTRAL_SPECS[spec])
    with jax.set_mesh(mesh):
        x = jax.device_put(jnp.asarray(w, jnp.float32), NamedSharding(mesh, stack_spec))
        got = jax.jit(lambda p: optareg.spectral_norms(p, stack_axes=1))({"kernel": x})
    want = np.linalg.norm(w, 2, axis=(1, 2))
    np.testing.assert_allclose(np.asarray(got["kernel"]), want, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# elementwise post-step transforms stay local
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mesh_kind", list(MESHES))
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize(
    "factory, kwargs",
    [
        (optareg.prox_l1, {"l1": 1e-2, "learning_rate": 0.1}),
        (optareg.decoupled_weight_decay, {"weight_decay": 1e-2}),
    ],
    ids=["prox_l1", "decoupled_weight_decay"],
)
def test_elementwise_step_has_no_all_gather(factory, kwargs, layout, mesh_kind):
    mesh = MESHES[mesh_kind]()
    tx = optax.chain(optax.sgd(0.1), factory(**kwargs))
    p_shard = param_shardings(mesh, layout)
    with on_mesh(mesh):
        params = jax.device_put(make_tree(0), p_shard)
        grads = jax.device_put(make_tree(1), p_shard)
        state = tx.init(params)
        step = jax.jit(lambda g, s, p: tx.update(g, s, p))
        hlo = step.lower(grads, state, params).compile().as_text()
        updates, _ = step(grads, state, params)
    counts = collective_counts(hlo)
    assert counts["all-gather"] == 0, counts
    assert counts["all-to-all"] == 0 and counts["collective-permute"] == 0, counts
    assert_same_sharding(updates, p_shard, "updates")
    # it is a real prox / decay step: compare with the closed form on one leaf
    w = np.asarray(make_tree(0)["dense"]["kernel"], np.float64)
    x = w - 0.1 * np.asarray(make_tree(1)["dense"]["kernel"], np.float64)
    if factory is optareg.prox_l1:
        want = np.sign(x) * np.maximum(np.abs(x) - 0.1 * 1e-2, 0.0)
    else:
        want = x - 1e-2 * w
    got = np.asarray(params["dense"]["kernel"] + updates["dense"]["kernel"], np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------------------------
# SAM under shard_map: m-sharpness, and the pcast trap
# --------------------------------------------------------------------------------------------

MICRO = 4  # examples per device
RHO = 0.5


def _mlp_data():
    rng = np.random.default_rng(7)
    params = {
        "w1": jnp.asarray(rng.normal(size=(6, 8)) / np.sqrt(6), jnp.float32),
        "b1": jnp.zeros((8,), jnp.float32),
        "w2": jnp.asarray(rng.normal(size=(8, 3)) / np.sqrt(8), jnp.float32),
    }
    x = jnp.asarray(rng.normal(size=(N_DEVICES * MICRO, 6)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(N_DEVICES * MICRO, 3)), jnp.float32)
    return params, x, y


def _mlp_loss(params, x, y):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return jnp.mean((h @ params["w2"] - y) ** 2)


def _sam_step(tx, params, x, y):
    """One sam_perturb update on the batch (x, y): the SAM gradient."""
    gf = lambda p: jax.grad(_mlp_loss)(p, x, y)  # noqa: E731
    state = tx.init(params)
    u, _ = tx.update(gf(params), state, params, grad_fn=gf)
    return u


def _shard_mapped_sam(pcast: bool):
    tx = optareg.sam_perturb(RHO, axis_name="data")

    def local(params, x, y):
        if pcast:
            params = jax.lax.pcast(params, "data", to="varying")
        return jax.lax.pmean(_sam_step(tx, params, x, y), "data")

    return jax.jit(
        jax.shard_map(local, mesh=mesh_1d(), in_specs=(P(), P("data"), P("data")), out_specs=P())
    )


def _m_sharpness_reference(params, x, y):
    """No devices: vmap over the 8 micro-batches, then the mean."""
    tx = optareg.sam_perturb(RHO)
    xs = x.reshape(N_DEVICES, MICRO, -1)
    ys = y.reshape(N_DEVICES, MICRO, -1)
    per_batch = jax.vmap(lambda xb, yb: _sam_step(tx, params, xb, yb))(xs, ys)
    return jax.tree.map(lambda u: jnp.mean(u, axis=0), per_batch)


def _rel_diff(a, b) -> float:
    num = sum(
        float(jnp.sum((x - y) ** 2))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )
    den = sum(float(jnp.sum(y**2)) for y in jax.tree.leaves(b))
    return float(np.sqrt(num / den))


def test_pcast_signature():
    """The API the docs and example use exists in this JAX."""
    import inspect

    sig = inspect.signature(jax.lax.pcast)
    assert "to" in sig.parameters and sig.parameters["to"].kind is inspect.Parameter.KEYWORD_ONLY


def test_sam_shard_map_is_m_sharpness():
    params, x, y = _mlp_data()
    got = _shard_mapped_sam(pcast=True)(params, x, y)
    want = _m_sharpness_reference(params, x, y)
    assert_close_rel(got, want, "m-sharpness SAM", rtol=1e-5)
    # and it is not plain SAM on the whole batch (else the comparison above proves nothing)
    plain = _sam_step(optareg.sam_perturb(RHO), params, x, y)
    assert _rel_diff(want, plain) > 1e-2, _rel_diff(want, plain)


def test_sam_shard_map_without_pcast_is_plain_sam():
    """The trap: w.r.t. replicated params the gradient inside shard_map is already psum-ed.

    Without ``pcast`` both gradients SAM sees are sums over the 8 devices, so ε follows the
    full-batch gradient: the result is 8 x plain SAM on the whole batch (``pmean`` of a
    device-invariant value leaves it as is), not the m-sharpness average.
    """
    params, x, y = _mlp_data()
    trapped = _shard_mapped_sam(pcast=False)(params, x, y)
    plain = _sam_step(optareg.sam_perturb(RHO), params, x, y)
    assert_close_rel(jax.tree.map(lambda u: u / N_DEVICES, trapped), plain, "trap", rtol=1e-5)
    want = _m_sharpness_reference(params, x, y)
    assert _rel_diff(jax.tree.map(lambda u: u / N_DEVICES, trapped), want) > 1e-2

"""One process of the 2-process run of ``tests/test_multihost.py`` (not a test module itself).

Started twice by the test, each time with 2 CPU devices and the environment the README's
multi-host snippet reads (``COORDINATOR_ADDRESS``, ``NUM_PROCESSES``, ``PROCESS_ID``, gloo CPU
collectives). It executes the README snippet literally (which calls
``jax.distributed.initialize`` and builds the 2x2 ``jax.make_mesh`` mesh), then, on that mesh:

* every public transform (the first registry entry of each factory), a few jitted steps whose
  gradients come from a batch fed with ``jax.make_array_from_process_local_data`` (each process
  its own half), parameters and state sharded under explicit axes; the results are gathered
  and process 0 compares them with the same steps on one device (no collectives);
* SAM with m-sharpness under ``jax.shard_map`` over the 4 devices of both processes, against a
  ``jax.vmap`` over the 4 micro-batches.

Process 0 writes ``{check: max relative error}`` as JSON to the path given as argument.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optareg  # (importing optareg does not start the XLA backend)

sys.path.insert(0, os.path.dirname(__file__))

STEPS = 2
BATCH = 8  # global examples (4 per process)
SHAPES = {"conv": {"kernel": (3, 3, 8, 16)}, "dense": {"bias": (16,), "kernel": (8, 16)}}
SPECS = {
    "conv": {"kernel": P(None, None, None, "model")},
    "dense": {"bias": P(), "kernel": P(None, "model")},
}


def readme_snippet() -> str:
    """The ```python block under the README's "Sharded and multi-host training" heading."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    section = text.split("## Sharded and multi-host training", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def tree(seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: (scale * rng.normal(size=s)).astype(np.float32),
        SHAPES,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def loss(params, x):
    """Elementwise terms plus a data term that mixes the batch with both kernels."""
    own = sum(jnp.sum(0.5 * w**2 + jnp.sin(w)) for w in jax.tree.leaves(params))
    k = params["dense"]["kernel"]
    h = jnp.tanh(jnp.sum(x[:, :, None] * k[None], axis=1) + params["dense"]["bias"])  # (B, 16)
    conv = jnp.sum(params["conv"]["kernel"], axis=(0, 1, 2))  # (16,)
    return own + jnp.mean(jnp.sum(h * conv, axis=1))


def build(entry):
    kwargs = {k: tree(99) for k, v in entry.kwargs.items() if isinstance(v, dict) and "conv" in v}
    if entry.id == "add_penalty-l2_to":
        kwargs["penalty"] = optareg.penalties.l2_to(tree(99))
    if any(isinstance(v, dict) and "scale" in v for v in entry.kwargs.values()):
        return None  # a mask written for the conformance tree (it has a "scale" leaf)
    tx = entry.make(**kwargs)
    base = optax.adam(1e-2)
    return optax.chain(tx, base) if entry.position == "first" else optax.chain(base, tx)


def steps(tx, entry, params, state, batches):
    """``len(batches)`` steps (unrolled: traced once, inside one ``jit``)."""
    for x in batches:
        g = jax.grad(loss)(params, x)
        extra = {"grad_fn": lambda p, x=x: jax.grad(loss)(p, x)} if entry.needs_grad_fn else {}
        updates, state = tx.update(g, state, params, **extra)
        params = optax.apply_updates(params, updates)
    return params, state


def rel_err(a, b) -> float:
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return float("inf")
        scale = max(float(np.max(np.abs(y), initial=0.0)), 1e-30)
        worst = max(worst, float(np.max(np.abs(x - y), initial=0.0)) / scale)
    return worst


def replicated(tree):
    """Every leaf resharded to replicated (inside ``jit``: one compiled gather per run)."""
    return jax.tree.map(lambda x: jax.sharding.reshard(x, P()), tree)


def local_copy(tree):
    """A replicated global array as numpy (every process holds all of it)."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)


def check_transforms(mesh, out: dict) -> None:
    pid = jax.process_index()
    shard = jax.tree.map(
        lambda s: NamedSharding(mesh, s), SPECS, is_leaf=lambda x: isinstance(x, P)
    )
    batch_sharding = NamedSharding(mesh, P("data"))
    rng = np.random.default_rng(5)
    full_batches = [rng.normal(size=(BATCH, 8)).astype(np.float32) for _ in range(STEPS)]
    half = BATCH // jax.process_count()
    local = [b[pid * half : (pid + 1) * half] for b in full_batches]
    from registry import ENTRIES  # (builds arrays: only after jax.distributed.initialize)

    seen = set()
    for entry in ENTRIES:
        if entry.factory in seen:
            continue
        tx = build(entry)
        if tx is None:
            continue
        seen.add(entry.factory)
        params = jax.tree.map(
            lambda a, s: jax.make_array_from_process_local_data(s, a), tree(0), shard
        )
        batches = [jax.make_array_from_process_local_data(batch_sharding, b) for b in local]
        with jax.set_mesh(mesh):
            s_shard = optareg.state_shardings(tx, params, shard, mesh)
            state = jax.jit(tx.init, out_shardings=s_shard)(params)
            run = jax.jit(lambda p, s, bs: replicated(steps(tx, entry, p, s, bs)))
            p_out, s_out = local_copy(run(params, state, batches))
        if pid == 0:
            ref_p, ref_s = _single_device(tx, entry, full_batches)
            out[entry.id] = max(rel_err(p_out, ref_p), rel_err(s_out, ref_s))


def _single_device(tx, entry, batches):
    dev = jax.local_devices()[0]
    put = lambda t: jax.device_put(t, dev)  # noqa: E731
    params = put(tree(0))
    run = jax.jit(lambda p, bs: steps(tx, entry, p, tx.init(p), bs))
    return jax.tree.map(np.asarray, run(params, [put(b) for b in batches]))


def check_sam(out: dict) -> None:
    """m-sharpness: each device's micro-batch perturbs on its own (``pcast``), then ``pmean``."""
    mesh = jax.make_mesh(
        (jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Explicit,)
    )
    n, micro = jax.device_count(), 2
    rng = np.random.default_rng(7)
    params = {
        "w1": rng.normal(size=(6, 8)).astype(np.float32) / 3,
        "w2": rng.normal(size=(8, 3)).astype(np.float32) / 3,
    }
    x = rng.normal(size=(n * micro, 6)).astype(np.float32)
    y = rng.normal(size=(n * micro, 3)).astype(np.float32)

    def mse(p, x, y):
        return jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)

    def sam_grad(tx, p, x, y):
        gf = lambda q: jax.grad(mse)(q, x, y)  # noqa: E731
        return tx.update(gf(p), tx.init(p), p, grad_fn=gf)[0]

    def local_fn(p, x, y):
        p = jax.lax.pcast(p, "data", to="varying")
        return jax.lax.pmean(sam_grad(optareg.sam_perturb(0.5, axis_name="data"), p, x, y), "data")

    half = (n * micro) // jax.process_count()
    sl = slice(jax.process_index() * half, (jax.process_index() + 1) * half)
    xs = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), x[sl])
    ys = jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), y[sl])
    ps = jax.device_put(params, NamedSharding(mesh, P()))
    f = jax.shard_map(local_fn, mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P())
    got = local_copy(jax.jit(f)(ps, xs, ys))  # out_specs=P(): replicated
    if jax.process_index() == 0:
        tx = optareg.sam_perturb(0.5)
        per = [
            sam_grad(tx, params, x[i * micro : (i + 1) * micro], y[i * micro : (i + 1) * micro])
            for i in range(n)
        ]
        want = jax.tree.map(lambda *u: np.mean(np.stack(u), axis=0), *per)
        plain = sam_grad(tx, params, x, y)
        out["sam_m_sharpness"] = rel_err(got, want)
        out["sam_vs_plain"] = rel_err(want, plain)  # must be large: else the check proves nothing


def main() -> None:
    result_path = sys.argv[1]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives
    namespace: dict = {}
    exec(compile(readme_snippet(), "README.md (multi-host snippet)", "exec"), namespace)
    mesh = namespace["mesh"]
    assert jax.process_count() == 2 and jax.device_count() == 4, (
        jax.process_count(),
        jax.devices(),
    )
    out: dict = {"readme_state_leaves": len(jax.tree.leaves(namespace["opt_state"]))}
    check_transforms(mesh, out)
    check_sam(out)
    if jax.process_index() == 0:
        with open(result_path, "w", encoding="utf-8") as f:
            json.dump(out, f)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()

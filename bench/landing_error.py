"""Where post-step transforms land: the worst landing error per transform (issue 28).

For every transform and dtype, one step from 1e3, 1e4 and 1e6 times the bound (random
directions, the cases of ``tests/test_landing.py``) and one from a start near the set:

* inequality constraints: the worst relative excess of the landed parameters over the bound
  (``≤ 0``: inside; norms / σ_max in numpy float64);
* every transform: the worst entrywise ``|θ_new − P(θ + u)| / (½ulp(θ) + ulp(P))`` (``≤ 1``: the
  landing guarantee; above 1 only where an inequality pulled a unit in).

Run: ``python -m bench.landing_error`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_landing as tl  # noqa: E402  (the test cases: one definition of each)

import optareg  # noqa: E402


def _ratio(tx, params, updates, dtype):
    new = tl._land(tx, params, updates)
    cdt = jnp.float64 if dtype == jnp.float64 else jnp.float32
    x = jax.tree.map(lambda p, u: p.astype(cdt) + u.astype(cdt), params, updates)
    target = tl._op_result(tx, x, dtype)
    worst = 0.0
    for z, y, p in zip(tl._leaves(new), tl._leaves(target), tl._leaves(params), strict=True):
        bound = 0.5 * tl._ulp(p, dtype) + tl._ulp(y, dtype)
        worst = max(worst, float(np.max(np.abs(z - y) / bound)))
    return new, worst


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.parse_args(argv)
    cases = list(tl._INEQUALITIES)
    cases += [(name, factory, None, 1.0, tl._col_norms) for name, factory in tl._GENERAL]
    cases.append(("non_neg", optareg.non_neg, lambda x: -x, 0.0, tl._col_norms))
    print(
        f"{'transform':<24} {'dtype':<9} {'max excess / bound':>19} {'max |err|/(½ulp θ+ulp P)':>25}"
    )
    for name, factory, measure, bound, start in cases:
        for dtype in tl.DTYPES:
            with tl._x64(dtype):
                params, updates = tl._far(dtype, (12, 8), start, bound or 1.0)
                new, ratio = _ratio(factory(), params, updates, dtype)
                excess = ""
                if measure is not None:
                    worst = max(float(np.max(measure(leaf))) for leaf in tl._leaves(new))
                    excess = f"{(worst - bound) / (bound or 1.0):+.2e}"
                print(f"{name:<24} {jnp.dtype(dtype).name:<9} {excess:>19} {ratio:>25.3g}")


if __name__ == "__main__":
    main()

"""optax's own interoperability checklist, run over optareg's transforms.

optax checks every optimizer it ships in ``optax/contrib/_common_test.py`` (installed with the
package): extra keyword arguments without recompiling, convergence on four targets over 30,000
``lax.scan`` steps with a no-op ``optax.tree.map_params``, ``inject_hyperparams`` giving the
same updates and state, dtype preservation (bfloat16, float32), ``optax.MultiSteps``
accumulation, state shape/dtype stability under ``lax.cond`` in float16 to float64, and learning
rate schedules. This module loads that installed file, replaces only its list of optimizers
under test with optareg transforms (each chained to ``optax.adam`` at the place the docs say it
goes, at a strength that leaves the targets' minimizers where they are), and collects its
``ContribTest`` class, so the checks are optax's own, line for line, for the version installed.

Left out, and why: ``sam_perturb`` and ``sharpness_monitor`` need a ``grad_fn`` the checklist
cannot pass (checked in ``tests/test_sam_real_use.py`` and ``tests/test_sharpness.py``);
``unit_norm`` and ``non_neg`` move the minimizers of the targets by design (they are checked
against their projections in ``tests/test_constraints.py``).
"""

import importlib.util
import pathlib
import types

import optax
import pytest

import optareg

# ----------------------------------------------------------------------------------------------
# the optimizers under test: numeric arguments only, so inject_hyperparams can trace each one
# ----------------------------------------------------------------------------------------------

_TINY = 1e-7  # strengths: a regularizer that acts, with a minimizer within 1e-5 of the target's


def optareg_add_decayed_weights(learning_rate: optax.ScalarOrSchedule, weight_decay=_TINY):
    return optareg.chain(optareg.add_decayed_weights(weight_decay), optax.adam(learning_rate))


def optareg_decoupled_weight_decay(learning_rate: optax.ScalarOrSchedule, weight_decay=_TINY):
    return optareg.chain(optax.adam(learning_rate), optareg.decoupled_weight_decay(weight_decay))


def optareg_add_penalty(learning_rate: optax.ScalarOrSchedule, strength=_TINY):
    return optareg.chain(
        optareg.add_penalty(optareg.penalties.l2, strength), optax.adam(learning_rate)
    )


def optareg_prox_l1(learning_rate: optax.ScalarOrSchedule, l1=_TINY):
    return optareg.chain(optax.adam(learning_rate), optareg.prox_l1(l1, learning_rate))


def optareg_prox_elastic_net(learning_rate: optax.ScalarOrSchedule, l1=_TINY, l2=_TINY):
    return optareg.chain(optax.adam(learning_rate), optareg.prox_elastic_net(l1, l2, learning_rate))


def optareg_prox_group_lasso(learning_rate: optax.ScalarOrSchedule, strength=_TINY):
    return optareg.chain(
        optax.adam(learning_rate), optareg.prox_group_lasso(strength, learning_rate)
    )


def optareg_prox_nuclear(learning_rate: optax.ScalarOrSchedule, strength=_TINY):
    return optareg.chain(optax.adam(learning_rate), optareg.prox_nuclear(strength, learning_rate))


def optareg_prox_adam(learning_rate: optax.ScalarOrSchedule, l1=_TINY):
    return optareg.prox_adam(learning_rate, l1)


def optareg_max_norm(learning_rate: optax.ScalarOrSchedule, max_value=100.0):
    return optareg.chain(optax.adam(learning_rate), optareg.max_norm(max_value))


def optareg_project(learning_rate: optax.ScalarOrSchedule, radius=100.0):
    ball = lambda tree: optax.projections.projection_l2_ball(tree, radius)  # noqa: E731
    return optareg.chain(optax.adam(learning_rate), optareg.project(ball))


def optareg_spectral_clip(learning_rate: optax.ScalarOrSchedule, max_norm=100.0):
    return optareg.chain(optax.adam(learning_rate), optareg.spectral_clip(max_norm))


def optareg_spectral_clip_power(learning_rate: optax.ScalarOrSchedule, max_norm=100.0):
    return optareg.chain(optax.adam(learning_rate), optareg.spectral_clip(max_norm, method="power"))


def optareg_low_precision_updates(learning_rate: optax.ScalarOrSchedule):
    return optareg.chain(optax.adam(learning_rate), optareg.low_precision_updates())


def optareg_track(learning_rate: optax.ScalarOrSchedule):
    return optareg.chain(
        optareg.track(name="raw"), optax.adam(learning_rate), optareg.track(metrics_every=3)
    )


FACTORIES = {
    f.__name__: f
    for f in (
        optareg_add_decayed_weights,
        optareg_decoupled_weight_decay,
        optareg_add_penalty,
        optareg_prox_l1,
        optareg_prox_elastic_net,
        optareg_prox_group_lasso,
        optareg_prox_nuclear,
        optareg_prox_adam,
        optareg_max_norm,
        optareg_project,
        optareg_spectral_clip,
        optareg_spectral_clip_power,
        optareg_low_precision_updates,
        optareg_track,
    )
}

# ----------------------------------------------------------------------------------------------
# optax's file, with our list in place of its own
# ----------------------------------------------------------------------------------------------

_FILE = pathlib.Path(optax.__file__).parent / "contrib" / "_common_test.py"
_START, _END = "_MAIN_OPTIMIZERS_UNDER_TEST = [", "def _get_opt_factory(opt_name):"

_OURS = """
_MAIN_OPTIMIZERS_UNDER_TEST = tuple(
    {"opt_name": name, "opt_kwargs": {"learning_rate": 1e-2}, "wrapper_name": None,
     "wrapper_kwargs": None}
    for name in OPTAREG_FACTORIES
)
_ALL_OPTIMIZERS_UNDER_TEST = _MAIN_OPTIMIZERS_UNDER_TEST


def _get_opt_factory(opt_name):
  return OPTAREG_FACTORIES[opt_name]


def _unused_get_opt_factory(opt_name):"""


def _load_checklist() -> types.ModuleType | None:
    if importlib.util.find_spec("absl") is None or not _FILE.exists():
        return None
    source = _FILE.read_text()
    start, end = source.find(_START), source.find(_END)
    if start < 0 or end < start:
        raise RuntimeError(
            f"{_FILE} no longer has the layout this module patches (`{_START}` ... `{_END}`): "
            "update _START/_END for the installed optax."
        )
    module = types.ModuleType("optareg_optax_checklist")
    module.__dict__["OPTAREG_FACTORIES"] = FACTORIES
    code = compile(source[:start] + _OURS + source[end + len(_END) :], str(_FILE), "exec")
    exec(code, module.__dict__)  # noqa: S102 - optax's installed test file, one list replaced
    return module


_CHECKLIST = _load_checklist()
if _CHECKLIST is None:
    pytest.skip(f"optax's checklist needs absl-py and {_FILE}", allow_module_level=True)


class TestOptaxChecklist(_CHECKLIST.ContribTest):
    """optax's ``ContribTest``, collected by pytest (it is a ``unittest.TestCase``)."""


def test_every_optimizer_is_under_test():
    """The patch took: optax's lists hold optareg's factories and nothing else."""
    for table in (_CHECKLIST._MAIN_OPTIMIZERS_UNDER_TEST, _CHECKLIST._ALL_OPTIMIZERS_UNDER_TEST):
        assert [row["opt_name"] for row in table] == list(FACTORIES)
    assert _CHECKLIST._get_opt_factory("optareg_prox_l1") is optareg_prox_l1

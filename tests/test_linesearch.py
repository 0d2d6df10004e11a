"""Our L-BFGS takes stock jaxopt's steps with its one-call-site zoom line search, and its
epoch calls the objective at one place."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params

import stylejax
from stylejax.jaxopt_lbfgs import lbfgs
from stylejax.solvers import SolverConfig, init_state, run_epoch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import jaxopt


def rosenbrock(x):
    x = x.ravel()
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def wiggly(x):
    return jnp.sum(jnp.log(jnp.cosh(7 * x)) + 0.3 * jnp.sin(25 * x))


# (objective, maxls, x0), exercising in turn: many zooms; failed searches and their fall-back
# step (3 trials are too few early on); zooms on a non-convex function.
CASES = [(rosenbrock, 20, -1.2 * jnp.ones(20)), (rosenbrock, 3, -1.2 * jnp.ones(20)),
         (wiggly, 4, jnp.linspace(-2.0, 3.0, 30))]


def _stock(fun, maxls, history):
    """jaxopt's L-BFGS as shipped, with our line-search settings."""
    return jaxopt.LBFGS(fun=fun, value_and_grad=True, maxiter=1, tol=0.0, history_size=history,
                        linesearch="zoom", linesearch_init="max", max_stepsize=1.0, maxls=maxls)


def _trace(solver, x0, iterations):
    """Per iteration: (x, value, stepsize, line-search trials so far, failed)."""
    x, inner = x0, solver.init_state(x0)
    step, out = jax.jit(solver.update), []
    for _ in range(iterations):
        x, inner = step(x, inner)
        out.append((np.asarray(x), float(inner.value), float(inner.stepsize),
                    int(inner.num_linesearch_iter), bool(inner.failed_linesearch)))
    return out


@pytest.mark.parametrize("case", range(len(CASES)))
def test_lbfgs_takes_stock_jaxopt_steps(case):
    fun, maxls, x0 = CASES[case]
    fun = jax.value_and_grad(fun)
    ours = _trace(lbfgs(fun, iterations=1, history=10, lr=0.0, maxls=maxls), x0, 40)
    stock = _trace(_stock(fun, maxls, 10), x0, 40)
    for i, (a, b) in enumerate(zip(ours, stock)):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-6, atol=1e-7, err_msg=f"iteration {i}")
        np.testing.assert_allclose(a[1:3], b[1:3], rtol=1e-6, err_msg=f"iteration {i}")
        assert a[3:] == b[3:], (i, a[3:], b[3:])
    trials, failures = stock[-1][3], sum(t[4] for t in stock)
    assert trials > len(stock), "the line search never zoomed"
    if maxls == 3:
        assert failures > 0, "no line search failed: the fall-back step went untested"


def _calls(jaxpr, name):
    """Equations calling the jitted function ``name``, through every nested jaxpr."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.params.get("name") == name:
            count += 1
        for sub in jaxprs_in_params(eqn.params):
            count += _calls(sub, name)
    return count


def test_epoch_calls_the_objective_once(vgg, content_image, style_image):
    """jaxopt's own zoom left seven calls in this jaxpr (three branches per update, the
    peeled first update's three, an unused `aux` evaluation) and four VGG copies in the
    compiled program, about 2 s of compile apiece at 192 px."""
    cfg = stylejax.preset_config("johnson")
    targets = stylejax.make_targets(vgg, content_image, style_image, cfg)
    scfg = SolverConfig("lbfgs", iterations=2, history=10)
    state = init_state(scfg, vgg, jnp.asarray(content_image[None]), targets, cfg)
    jaxpr = jax.make_jaxpr(lambda s: run_epoch(s, vgg, targets, cfg=cfg, scfg=scfg))(state)
    assert _calls(jaxpr.jaxpr, "_value_and_grad") == 1

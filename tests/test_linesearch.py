"""Our L-BFGS takes stock jaxopt's steps: its one-call-site zoom line search exactly (float32),
its inverse-Hessian product from kept inner products to rounding (float64, where rounding is
out of the way); and its epoch calls the objective at one place."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import jaxprs_in_params

import stylejax
from stylejax.lbfgs import _with_newest_pair, inverse_hessian_product
from stylejax.linesearch import OneEvaluationZoom
from stylejax.solvers import SolverConfig, _jaxopt_lbfgs, init_state, run_epoch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import jaxopt
    from jaxopt._src.lbfgs import inv_hessian_product


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


def _jaxopt_state(inner):
    """jaxopt's `LbfgsState`, ours (`GramLbfgsState`: it and the history's products) or
    stock."""
    return getattr(inner, "lbfgs", inner)


def _trace(solver, x0, iterations):
    """Per iteration: (x, value, stepsize, line-search trials so far, failed)."""
    x, state = x0, solver.init_state(x0)
    step = jax.jit(lambda x, state: tuple(solver.update(x, state)))
    out = []
    for _ in range(iterations):
        x, state = step(x, state)
        inner = _jaxopt_state(state)
        out.append((np.asarray(x), float(inner.value), float(inner.stepsize),
                    int(inner.num_linesearch_iter), bool(inner.failed_linesearch)))
    return out


def _compare(ours, stock, rtol):
    for i, (a, b) in enumerate(zip(ours, stock)):
        np.testing.assert_allclose(a[0], b[0], rtol=rtol, atol=rtol / 10, err_msg=f"iteration {i}")
        np.testing.assert_allclose(a[1:3], b[1:3], rtol=rtol, err_msg=f"iteration {i}")
        assert a[3:] == b[3:], (i, a[3:], b[3:])


@pytest.mark.parametrize("case", range(len(CASES)))
def test_line_search_takes_stock_jaxopt_steps(case):
    """jaxopt's L-BFGS with `OneEvaluationZoom` against jaxopt's own zoom: the same float32
    steps, trial counts and failures."""
    fun, maxls, x0 = CASES[case]
    fun = jax.value_and_grad(fun)
    search = OneEvaluationZoom(fun=fun, value_and_grad=True, maxiter=maxls, max_stepsize=1.0)
    ours = jaxopt.LBFGS(fun=fun, value_and_grad=True, maxiter=1, tol=0.0, history_size=10,
                        linesearch=search, linesearch_init="max", max_stepsize=1.0)
    stock = _trace(_stock(fun, maxls, 10), x0, 40)
    _compare(_trace(ours, x0, 40), stock, 1e-6)
    trials, failures = stock[-1][3], sum(t[4] for t in stock)
    assert trials > len(stock), "the line search never zoomed"
    if maxls == 3:
        assert failures > 0, "no line search failed: the fall-back step went untested"


@pytest.mark.parametrize("case", range(len(CASES)))
def test_lbfgs_takes_stock_jaxopt_steps(case):
    """The solver's L-BFGS (`GramLBFGS`, `OneEvaluationZoom`) against stock jaxopt, 10
    iterations with history 4 (the circular buffer wraps twice), in float64: the product's
    algebra is the two-loop's, so only rounding may differ. The non-convex case is chaotic
    (stock jaxopt from x0 moved by 1e-15 is 3e-5 away after 12 iterations, 6e-2 after 24),
    hence only 10."""
    fun, maxls, x0 = CASES[case]
    fun = jax.value_and_grad(fun)
    scfg = SolverConfig("lbfgs", iterations=1, history=4, maxls=maxls)
    with jax.enable_x64(True):
        x0 = x0.astype(jnp.float64)
        _compare(_trace(_jaxopt_lbfgs(scfg, fun), x0, 10), _trace(_stock(fun, maxls, 4), x0, 10),
                 1e-7)


def test_product_matches_the_two_loop_in_float32():
    """Float32 rounding of the kept products against jaxopt's two loops, on the history 25
    iterations leave (history 10, so it has wrapped)."""
    fun = jax.value_and_grad(CASES[2][0])
    solver = _jaxopt_lbfgs(SolverConfig("lbfgs", iterations=1, history=10), fun)
    x, state = CASES[2][2], solver.init_state(CASES[2][2])
    step = jax.jit(lambda x, state: tuple(solver.update(x, state)))
    for _ in range(25):
        x, state = step(x, state)
    st = state.lbfgs
    ours = inverse_hessian_product(st, *_with_newest_pair(st, state.products))
    theirs = inv_hessian_product(-st.grad, st.s_history, st.y_history, st.rho_history,
                                 st.gamma, st.iter_num % 10)
    assert float(jnp.linalg.norm(ours - theirs) / jnp.linalg.norm(theirs)) < 1e-5


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

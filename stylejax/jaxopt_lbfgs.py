"""Everything that reaches into jaxopt's private internals, in one module.

jaxopt (0.8.5) is no longer developed and is pinned below 0.9 in pyproject.toml; this module
leans on its private `_src` names (`LbfgsState`, `LineSearchStep`, `NUM_EVAL_DTYPE`) and on
`ZoomLineSearch`'s private methods (`_value_and_slope_on_line`, `_zoom_into_interval`,
`_search_interval`). tests/test_linesearch.py pins the behaviour: our L-BFGS takes stock
jaxopt's steps, and `fresh_lbfgs_state` is jaxopt's `init_state` type for type.

Why the line search is rewritten: jaxopt's zoom (strong Wolfe) line search calls the
objective in several places.

jaxopt's `ZoomLineSearch.update` evaluates the objective in three branches (widen the bracket,
zoom into it, fall back to the last safe step when the search fails), and its `run` peels the
first update off its loop. An L-BFGS program built on it therefore held four copies of the
whole VGG value+grad, and XLA compiles each: about 2 s apiece at 192 px on a CPU, 8 s of the
first epoch's compile. Under `vmap` (batched pairs) each `lax.cond` becomes a select, so every
update evaluated all three branches for every pair.

`OneEvaluationZoom` takes the same steps with one call site. Each update first runs jaxopt's
bracket logic with the evaluation stubbed, which yields the step it wants to try (XLA drops the
stub's arithmetic); it evaluates the objective there, then runs the same logic again with that
result. A failed search's fall-back evaluation is a second trip through the same call site.
"""

from __future__ import annotations

import copy
import warnings

import jax
import jax.numpy as jnp

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # jaxopt's "no longer maintained" notice
    import jaxopt
    from jaxopt._src import base
    from jaxopt._src.base import LineSearchStep
    from jaxopt._src.lbfgs import LbfgsState


class OneEvaluationZoom(jaxopt.ZoomLineSearch):
    """`jaxopt.ZoomLineSearch`, the same steps and counters, one objective call site.

    Construct it as jaxopt's (``fun``, ``value_and_grad``, ``maxiter``, ``max_stepsize``...)
    and pass it as ``jaxopt.LBFGS(linesearch=...)``.
    """

    _evaluated = None  # (value, slope, point, grad, aux) to return instead of evaluating

    def _value_and_slope_on_line(self, params, stepsize, descent_direction, args, kwargs):
        if self._evaluated is None:
            return super()._value_and_slope_on_line(params, stepsize, descent_direction, args,
                                                    kwargs)
        return self._evaluated

    def _given(self, evaluated):
        """This search, answering its evaluation with ``evaluated``."""
        given = copy.copy(self)
        given._evaluated = evaluated
        return given

    def run(self, init_stepsize, params, value=None, grad=None, descent_direction=None,
            fun_args=(), fun_kwargs=None) -> LineSearchStep:
        """As jaxopt's, without the peeled first update (its state types are stable)."""
        fun_kwargs = fun_kwargs or {}
        state = self.init_state(init_stepsize, params, value, grad, descent_direction,
                                fun_args, fun_kwargs)
        init = LineSearchStep(jnp.asarray(init_stepsize, state.prev_stepsize.dtype), state)

        def body(step):
            return self.update(step.stepsize, step.state, params, fun_args=fun_args,
                               fun_kwargs=fun_kwargs)

        return jax.lax.while_loop(lambda step: ~(step.state.done | step.state.failed), body,
                                  init)

    def update(self, stepsize, state, params=None, value=None, grad=None,
               descent_direction=None, fun_args=(), fun_kwargs=None) -> LineSearchStep:
        """One trial step: jaxopt's update (Nocedal & Wright, Algorithms 3.5 and 3.6)."""
        del params, value, grad, descent_direction  # recorded in ``state`` at init
        fun_kwargs = fun_kwargs or {}
        stepsize = jnp.asarray(stepsize).astype(state.prev_stepsize.dtype)

        def bracket(evaluated):
            search = self._given(evaluated)
            return jax.lax.cond(state.interval_found, search._zoom_into_interval,
                                search._search_interval, stepsize, state, fun_args, fun_kwargs)

        stub = (state.value_init, state.slope_init, state.params, state.grad, state.aux)
        planned = bracket(stub)  # its stepsize is where the search evaluates next

        def trip(carry):
            n, t, out = carry
            evaluated = super(OneEvaluationZoom, self)._value_and_slope_on_line(
                state.params, t, state.descent_direction, fun_args, fun_kwargs)

            def first():
                step = bracket(evaluated)
                # As jaxopt's _make_safe_step: a failed search falls back to the largest step
                # that decreased the objective enough (if any; else keeps its last trial).
                s = step.state
                fallback = (s.safe_stepsize > 0.0) | jnp.isinf(s.decrease_error)
                return jnp.where(fallback, s.safe_stepsize, step.stepsize), step

            def second():
                v, _, point, g, aux = evaluated
                return t, LineSearchStep(t, out.state._replace(params=point, value=v, grad=g,
                                                                aux=aux))

            t, out = jax.lax.cond(n == 0, first, second)
            return n + 1, t, out

        def another(carry):
            n, _, out = carry
            return (n == 0) | ((n == 1) & out.state.failed)

        trips, _, out = jax.lax.while_loop(another, trip, (0, planned.stepsize, planned))
        evals = trips.astype(out.state.num_fun_eval.dtype)
        return out._replace(state=out.state._replace(
            num_fun_eval=out.state.num_fun_eval + evals,
            num_grad_eval=out.state.num_grad_eval + evals))


def lbfgs(value_and_grad, *, iterations: int, history: int, lr: float, maxls: int):
    """jaxopt's L-BFGS on ``value_and_grad(x, *args) -> (loss, d loss / d x)``: fixed steps
    of ``lr`` along the L-BFGS direction if ``lr > 0`` (as the seed repository), else the
    zoom line search with one objective call site (`OneEvaluationZoom`)."""
    if lr > 0:
        return jaxopt.LBFGS(fun=value_and_grad, value_and_grad=True, maxiter=iterations,
                            history_size=history, tol=0.0, stepsize=lr)
    # The first trial step is the full quasi-Newton step (1) at every iteration, as torch's
    # L-BFGS does. jaxopt's default ("increase") restarts from 1.5x the previous accepted
    # step, so after one short step it needs many iterations to grow back to 1.
    search = OneEvaluationZoom(fun=value_and_grad, value_and_grad=True, maxiter=maxls,
                               max_stepsize=1.0)
    return jaxopt.LBFGS(fun=value_and_grad, value_and_grad=True, maxiter=iterations,
                        history_size=history, tol=0.0, linesearch=search,
                        linesearch_init="max", max_stepsize=1.0)


def fresh_lbfgs_state(shape, history: int):
    """An L-BFGS state for variables of ``shape`` that has not evaluated the objective:
    ``iter_num`` -1, value +inf, zero gradient and history. Every field is its own buffer,
    typed as jaxopt's `init_state` types them, so a program compiled for one runs the other."""
    real, count = jnp.float32, base.NUM_EVAL_DTYPE
    return LbfgsState(
        iter_num=jnp.asarray(-1), value=jnp.asarray(jnp.inf, real),
        grad=jnp.zeros(shape, real), stepsize=jnp.asarray(1.0, real),
        error=jnp.asarray(jnp.inf, real), s_history=jnp.zeros((history,) + shape, real),
        y_history=jnp.zeros((history,) + shape, real),
        rho_history=jnp.zeros((history,), real), gamma=jnp.asarray(1.0, real), aux=None,
        failed_linesearch=jnp.asarray(False), num_fun_eval=jnp.asarray(0, count),
        num_grad_eval=jnp.asarray(0, count), num_linesearch_iter=jnp.asarray(0, count))

"""jaxopt's L-BFGS with the inverse-Hessian product computed from kept inner products.

jaxopt's two-loop recursion (Nocedal & Wright, Algorithm 7.4) walks the history one pair at a
time: 2m dot products and 2m vector updates in sequence, each its own pass over an image-sized
vector and its own small XLA kernel. On a 2-core CPU at 192 px with history 100 that is ~21 ms
of a ~150 ms iteration, where reading the history twice takes 5 ms.

The same product follows from inner products alone (Byrd, Nocedal & Schnabel, 1994): with
A[i, j] = s_i.y_j, B[i, j] = y_i.y_j and the current gradient's s_i.g and y_i.g, the first
loop's scalars solve an upper-triangular m x m system and the second loop's a lower-triangular
one, and the direction is gamma * v plus one combination of the history's vectors. The matrices
are kept current in the solver state: each iteration adds one pair, and a single pass of the
history against (s, y, new gradient) gives the pair's row and column of A and B and the next
iteration's s_i.g and y_i.g. Two passes over the history per iteration, a handful of kernels.

In exact arithmetic this is the two-loop's direction; in float32 it agrees to rounding
(`tests/test_lbfgs.py` compares both on a real run's history). Parameters are one array (the
image), not a pytree.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

with warnings.catch_warnings():
    # jaxopt announces on import that it is no longer maintained; we know, and keep it
    # working behind the solvers' interface (optax-lbfgs is the maintained alternative).
    warnings.simplefilter("ignore")
    import jaxopt
    from jaxopt._src import base
    from jaxopt._src.lbfgs import LbfgsState
    from jaxopt._src.linesearch_util import _init_stepsize

_HIGHEST = lax.Precision.HIGHEST  # the history's products in full float32 (no TF32 on GPU)


class HistoryProducts(NamedTuple):
    """Inner products of the L-BFGS history, indexed by its circular-buffer slots. They cover
    every pair but the newest, which the next update adds (see `_with_newest_pair`)."""

    sy: jax.Array  # [m, m]: s_i . y_j
    yy: jax.Array  # [m, m]: y_i . y_j


class GramLbfgsState(NamedTuple):
    """jaxopt's L-BFGS state and the history's inner products."""

    lbfgs: LbfgsState
    products: HistoryProducts


def _dot(a, b):
    return jnp.matmul(a, b, precision=_HIGHEST)


def _flat(history):
    return history.reshape(history.shape[0], -1)


def _with_newest_pair(state: LbfgsState, products: HistoryProducts):
    """``products`` with the newest pair's row and column, and the history's inner products
    with the current gradient: (products, s_i . g [m], y_i . g [m]). One pass over both
    histories, made before the line search: reading them after it, next to their in-place
    update, made XLA copy both (44 MB each at 192 px, history 100)."""
    newest = (state.iter_num - 1) % state.rho_history.shape[0]
    s = lax.dynamic_index_in_dim(state.s_history, newest, 0, keepdims=False)
    y = lax.dynamic_index_in_dim(state.y_history, newest, 0, keepdims=False)
    vectors = jnp.stack([s.ravel(), y.ravel(), state.grad.ravel()], axis=1)  # [n, 3]
    with_s = _dot(_flat(state.s_history), vectors)  # [m, 3]: s_i . (s, y, g)
    with_y = _dot(_flat(state.y_history), vectors)  # [m, 3]: y_i . (s, y, g)
    sy = products.sy.at[:, newest].set(with_s[:, 1]).at[newest, :].set(with_y[:, 0])
    yy = products.yy.at[:, newest].set(with_y[:, 1]).at[newest, :].set(with_y[:, 1])
    return HistoryProducts(sy, yy), with_s[:, 2], with_y[:, 2]


def inverse_hessian_product(state: LbfgsState, products: HistoryProducts, sg, yg):
    """-H g, the L-BFGS descent direction at ``state``'s gradient g (the inverse Hessian from
    its history, scaled by ``state.gamma``), as jaxopt's two-loop `inv_hessian_product`
    computes it, from the history's inner products (``products`` complete, ``sg`` = s_i . g,
    ``yg`` = y_i . g, each [m]) and one pass over the history: [*g.shape]."""
    v = -state.grad
    m = state.rho_history.shape[0]
    start = state.iter_num % m
    order = (start + jnp.arange(m)) % m  # the buffer's slots, oldest pair first
    rho = state.rho_history[order]
    sy = products.sy[order][:, order]
    yy = products.yy[order][:, order]
    sv, yv = -sg[order], -yg[order]
    gamma = state.gamma.astype(v.dtype)
    eye = jnp.eye(m, dtype=v.dtype)

    def solve(matrix, rhs, lower):
        return lax.linalg.triangular_solve(matrix, rhs[:, None], left_side=True,
                                           lower=lower)[:, 0]

    # First loop, newest to oldest: alpha_i = rho_i (s_i.v - sum_{j>i} alpha_j s_i.y_j).
    alpha = solve(eye + rho[:, None] * jnp.triu(sy, 1), rho * sv, lower=False)
    # Second loop, oldest to newest, on r = gamma (v - sum_j alpha_j y_j) + ...:
    # beta_i = rho_i (gamma (y_i.v - sum_j alpha_j y_i.y_j) + sum_{j<i} (alpha_j - beta_j) s_j.y_i).
    ys = jnp.tril(sy.T, -1)
    rhs = rho * (gamma * (yv - _dot(yy, alpha)) + _dot(ys, alpha))
    beta = solve(eye + rho[:, None] * ys, rhs, lower=True)
    s_coef = jnp.zeros_like(alpha).at[order].set(alpha - beta)
    y_coef = jnp.zeros_like(alpha).at[order].set(-gamma * alpha)
    combined = _dot(s_coef, _flat(state.s_history)) + _dot(y_coef, _flat(state.y_history))
    return gamma * v + combined.reshape(v.shape)


def _add_pair(state: LbfgsState, s, y):
    """(s_history, y_history, rho_history, gamma) with (s, y) written over the oldest pair,
    in place; gamma as Nocedal & Wright (7.20), from the new pair."""
    slot = state.iter_num % state.rho_history.shape[0]
    dtype = state.rho_history.dtype
    s_dot_y, y_dot_y = jnp.vdot(s, y), jnp.vdot(y, y)
    rho = jnp.where(s_dot_y == 0, 0.0, 1.0 / s_dot_y)
    gamma = jnp.where(y_dot_y > 0, s_dot_y / y_dot_y, 1.0)
    return (lax.dynamic_update_index_in_dim(state.s_history, s, slot, 0),
            lax.dynamic_update_index_in_dim(state.y_history, y, slot, 0),
            state.rho_history.at[slot].set(rho.astype(dtype)), gamma.astype(dtype))


class GramLBFGS(jaxopt.LBFGS):
    """`jaxopt.LBFGS` (the same settings, line search and step rules) whose update computes
    the descent direction by `inverse_hessian_product`; its state is a `GramLbfgsState`.
    Needs ``history_size >= 1``."""

    def init_state(self, init_params, *args, **kwargs) -> GramLbfgsState:
        state = super().init_state(init_params, *args, **kwargs)
        m, dtype = self.history_size, state.rho_history.dtype
        zeros = jnp.zeros((m, m), dtype)
        return GramLbfgsState(state, HistoryProducts(zeros, zeros))

    def update(self, params, state: GramLbfgsState, *args, **kwargs) -> base.OptStep:
        """One L-BFGS iteration from ``params`` (one array); returns (params, state)."""
        if isinstance(params, base.OptStep):
            params = params.params
        st, products = state
        products, sg, yg = _with_newest_pair(st, products)
        direction = inverse_hessian_product(st, products, sg, yg)
        if callable(self.stepsize) or self.stepsize > 0:
            stepsize = (self.stepsize(st.iter_num) if callable(self.stepsize)
                        else self.stepsize)
            new_params = params + stepsize * direction
            (value, aux), grad = self._value_and_grad_with_aux(new_params, *args, **kwargs)
            failed, evals, ls_iters = jnp.asarray(False), 1, 0
        else:
            init = _init_stepsize(self.linesearch_init, self.max_stepsize, self.min_stepsize,
                                  self.increase_factor, st.stepsize)
            stepsize, ls = self.run_ls(init, params, value=st.value, grad=st.grad,
                                       descent_direction=direction, fun_args=args,
                                       fun_kwargs=kwargs)
            new_params, value, grad, aux = ls.params, ls.value, ls.grad, ls.aux
            failed, evals, ls_iters = ls.failed, ls.num_fun_eval, ls.iter_num
        s_history, y_history, rho_history, gamma = _add_pair(st, new_params - params,
                                                             grad - st.grad)
        dtype = st.rho_history.dtype
        new = LbfgsState(
            iter_num=st.iter_num + 1, value=value, grad=grad,
            stepsize=jnp.asarray(stepsize, dtype),
            error=jnp.sqrt(jnp.sum(jnp.square(grad))).astype(dtype),
            s_history=s_history, y_history=y_history, rho_history=rho_history, gamma=gamma,
            aux=aux, failed_linesearch=failed, num_fun_eval=st.num_fun_eval + evals,
            num_grad_eval=st.num_grad_eval + evals,
            num_linesearch_iter=st.num_linesearch_iter + ls_iters)
        return base.OptStep(params=new_params, state=GramLbfgsState(new, products))

    def _cond_fun(self, inputs):
        _, state = inputs[0]
        return super()._cond_fun(((None, state.lbfgs),))

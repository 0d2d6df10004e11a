"""Optimizers behind one interface: "run k iterations from this state", compiled once.

    scfg = SolverConfig("lbfgs", iterations=100)
    state = init_state(scfg, vgg, image, targets, cfg)        # once
    state = run_epoch(state, vgg, targets, cfg=cfg, scfg=scfg)  # every epoch, no recompile
    image, loss = state.image, state.value

The solver state (L-BFGS history, Adam moments) is carried across epochs, so k iterations
twice equal 2k iterations once. Backends:

- ``lbfgs``: jaxopt's `LBFGS` (the default). ``lr > 0`` takes fixed steps of that size along
  the L-BFGS direction (as the seed repository); ``lr == 0`` uses jaxopt's zoom (strong
  Wolfe) line search, its steps taken with one objective call site (`linesearch`).
- ``optax-lbfgs``: optax's `lbfgs` (maintained; zoom line search).
- ``adam``: optax's Adam with learning rate ``lr`` (in [0, 1] image units).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from stylejax.errors import StylejaxError
from stylejax.linesearch import OneEvaluationZoom
from stylejax.losses import LossConfig, loss_fn
from stylejax.vgg import prepare_kernels

with warnings.catch_warnings():
    # jaxopt announces on import that it is no longer maintained; we know, and keep it
    # working behind this interface (optax-lbfgs is the maintained alternative).
    warnings.simplefilter("ignore")
    import jaxopt

OPTIMIZERS = ("lbfgs", "optax-lbfgs", "adam")


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Static solver settings (hashable: part of the compiled epoch's identity).

    Attributes:
      kind: "lbfgs" (jaxopt), "optax-lbfgs" or "adam".
      iterations: solver iterations per epoch (one compiled call).
      lr: fixed step (lbfgs; 0 = line search) or Adam learning rate (default 0.02).
      history: L-BFGS memory (pairs of image-sized vectors kept).
      maxls: most function evaluations per line search.
    """

    kind: str = "lbfgs"
    iterations: int = 100
    lr: float = 0.0
    history: int = 100
    maxls: int = 20

    def __post_init__(self):
        if self.kind not in OPTIMIZERS:
            raise StylejaxError(f"Unknown optimizer {self.kind!r}: use one of {', '.join(OPTIMIZERS)}.")
        if self.iterations < 1:
            raise StylejaxError(f"Iterations per epoch must be >= 1, got {self.iterations}.")
        if self.lr < 0:
            raise StylejaxError(f"The learning rate must be >= 0, got {self.lr}.")
        if self.history < 1:
            raise StylejaxError(f"The L-BFGS history must be >= 1, got {self.history}.")


class SolverState(NamedTuple):
    """``image`` [1, H, W, 3] being optimized, the backend's state, and the latest loss."""

    image: jax.Array
    inner: Any
    value: jax.Array


def _objective(vgg, targets, cfg: LossConfig):
    return lambda x: loss_fn(vgg, x, targets, cfg)


@functools.partial(jax.jit, static_argnames="cfg")
def _value_and_grad(vgg, x, targets, cfg: LossConfig):
    # Jitted so that jaxopt's L-BFGS, which calls it at its initial state and in its line
    # search, traces and lowers it once.
    return jax.value_and_grad(loss_fn, argnums=1)(vgg, x, targets, cfg)


def _objective_value_and_grad(cfg: LossConfig):
    """``f(x, vgg, targets) -> (loss, d loss / d x)``: jaxopt's argument order."""
    return lambda x, vgg, targets: _value_and_grad(vgg, x, targets, cfg)


def _jaxopt_lbfgs(scfg: SolverConfig, value_and_grad):
    """jaxopt's L-BFGS on ``value_and_grad(x, *args) -> (loss, d loss / d x)``."""
    if scfg.lr > 0:
        return jaxopt.LBFGS(fun=value_and_grad, value_and_grad=True, maxiter=scfg.iterations,
                            history_size=scfg.history, tol=0.0, stepsize=scfg.lr)
    # Line-search settings chosen by measurement (see README, "Performance"): the first
    # trial step is the full quasi-Newton step (1) at every iteration, as torch's L-BFGS
    # does. jaxopt's default ("increase") restarts from 1.5x the previous accepted step, so
    # after one short step it needs many iterations to grow back to 1.
    search = OneEvaluationZoom(fun=value_and_grad, value_and_grad=True, maxiter=scfg.maxls,
                               max_stepsize=1.0)
    return jaxopt.LBFGS(fun=value_and_grad, value_and_grad=True, maxiter=scfg.iterations,
                        history_size=scfg.history, tol=0.0, linesearch=search,
                        linesearch_init="max", max_stepsize=1.0)


def _optax_tx(scfg: SolverConfig):
    if scfg.kind == "adam":
        return optax.adam(scfg.lr or 0.02)
    return optax.lbfgs(memory_size=scfg.history, linesearch=optax.scale_by_zoom_linesearch(
        max_linesearch_steps=scfg.maxls, initial_guess_strategy="one"))


@functools.partial(jax.jit, static_argnames=("cfg", "scfg"))
def init_state(scfg: SolverConfig, vgg, image, targets, cfg: LossConfig) -> SolverState:
    """The solver state at ``image`` [1, H, W, 3] (evaluates the loss and gradient once).

    That one-off evaluation uses the exact direct convolution whatever ``cfg.conv`` says, as
    the targets do: it compiles in about a third of a Winograd program's time, and the
    epochs that follow evaluate with ``cfg.conv``.
    """
    image = jnp.asarray(image, jnp.float32)
    cfg = dataclasses.replace(cfg, conv="direct")
    if scfg.kind == "lbfgs":
        inner = _jaxopt_lbfgs(scfg, _objective_value_and_grad(cfg)).init_state(image, vgg,
                                                                                targets)
        # The first iteration has no curvature pairs yet; like torch's L-BFGS, scale the
        # steepest-descent step by min(1, 1/|g|_1) instead of stepping the raw gradient.
        gamma = jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(inner.grad)))
        inner = inner._replace(gamma=gamma.astype(inner.gamma.dtype))
        return SolverState(image, inner, inner.value)
    inner = _optax_tx(scfg).init(image)
    return SolverState(image, inner, loss_fn(vgg, image, targets, cfg))


def _jaxopt_iterations(solver, state: SolverState, iterations: int, *args) -> SolverState:
    """``iterations`` of ``solver`` (from `_jaxopt_lbfgs`) from ``state``; ``args`` go to its
    objective."""
    def body(_, carry):
        x, inner = carry
        return tuple(solver.update(x, inner, *args))

    x, inner = jax.lax.fori_loop(0, iterations, body, (state.image, state.inner))
    return SolverState(x, inner, inner.value)


def _optax_epoch(state, vgg, targets, cfg, scfg):
    tx = _optax_tx(scfg)
    f = _objective(vgg, targets, cfg)
    value_and_grad = (optax.value_and_grad_from_state(f) if scfg.kind == "optax-lbfgs"
                      else jax.value_and_grad(f))

    def body(_, carry):
        x, inner, _ = carry
        if scfg.kind == "optax-lbfgs":
            value, grad = value_and_grad(x, state=inner)
            updates, inner = tx.update(grad, inner, x, value=value, grad=grad, value_fn=f)
        else:
            value, grad = value_and_grad(x)
            updates, inner = tx.update(grad, inner, x)
        return optax.apply_updates(x, updates), inner, value

    x, inner, value = jax.lax.fori_loop(0, scfg.iterations, body,
                                        (state.image, state.inner, state.value))
    if scfg.kind == "optax-lbfgs":
        value = optax.tree_utils.tree_get(inner, "value")
    return SolverState(x, inner, value)


@functools.partial(jax.jit, static_argnames=("cfg", "scfg"), donate_argnames=("state",))
def run_epoch(state: SolverState, vgg, targets, *, cfg: LossConfig,
              scfg: SolverConfig) -> SolverState:
    """Runs ``scfg.iterations`` solver iterations from ``state``; one compiled call.

    ``state`` is donated: don't read it after the call. The returned ``value`` is the loss at
    the returned image (for Adam, at the image before the last update). A ``vgg`` from
    `vgg.prepare_kernels` (for this image size) saves each call the kernels' preparation
    (Winograd's transform, the direct layers' flip); a plain one is prepared inside the call.
    """
    vgg = prepare_kernels(vgg, cfg.layers, cfg.conv, cfg.dtype,  # once, not per
                          state.image.shape)  # evaluation
    if scfg.kind == "lbfgs":
        return _jaxopt_iterations(_jaxopt_lbfgs(scfg, _objective_value_and_grad(cfg)), state,
                                  scfg.iterations, vgg, targets)
    return _optax_epoch(state, vgg, targets, cfg, scfg)

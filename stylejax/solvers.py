"""Optimizers behind one interface: "run k iterations from this state", compiled once.

    scfg = SolverConfig("lbfgs", iterations=100)
    state = init_state(scfg, vgg, image, targets, cfg)        # once (or fresh_state(scfg, image))
    state = run_epoch(state, vgg, targets, cfg=cfg, scfg=scfg)  # every epoch, no recompile
    image, loss = state.image, state.value

The solver state (L-BFGS history, Adam moments) is carried across epochs, so k iterations
twice equal 2k iterations once. Preconditioned (L-BFGS with a line search, by default), the
solver works on variables ``z`` whose image is ``precondition.smooth(z)`` (same loss, a
better-conditioned path to it; ``state.image`` is always the image). Backends:

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
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from stylejax.errors import StylejaxError
from stylejax.linesearch import OneEvaluationZoom
from stylejax.losses import LossConfig, loss_fn
from stylejax.precondition import DFTS, in_smooth_variables, smooth, unsmooth
from stylejax.vgg import prepare_kernels

with warnings.catch_warnings():
    # jaxopt announces on import that it is no longer maintained; we know, and keep it
    # working behind this interface (optax-lbfgs is the maintained alternative).
    warnings.simplefilter("ignore")
    import jaxopt
    from jaxopt._src import base
    from jaxopt._src.lbfgs import LbfgsState

OPTIMIZERS = ("lbfgs", "optax-lbfgs", "adam")
# L-BFGS with a line search smooths by default at this fraction of the image's shorter side
# (a wavelength in px); see README, "Optimizers", for the measurements.
PRECONDITION_FRACTION = 1 / 8


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Static solver settings (hashable: part of the compiled epoch's identity).

    Attributes:
      kind: "lbfgs" (jaxopt), "optax-lbfgs" or "adam".
      iterations: solver iterations per epoch (one compiled call).
      lr: fixed step (lbfgs; 0 = line search) or Adam learning rate (default 0.02).
      history: L-BFGS memory (pairs of image-sized vectors kept).
      maxls: most function evaluations per line search.
      precondition: wavelength in pixels of the change of variables (`stylejax.precondition`);
        0 = optimize the pixels themselves. None (the default): for ``lbfgs`` with a line
        search, PRECONDITION_FRACTION of each image's shorter side (`wavelength`); for the
        others 0 (fixed steps and Adam's rate keep their pixel-space meaning).
      dft: how that change of variables transforms: "fft", or "matmul" (`stylejax.batch`
        sets it for programs sharded over several devices, where XLA's CPU FFT fails).
    """

    kind: str = "lbfgs"
    iterations: int = 100
    lr: float = 0.0
    history: int = 100
    maxls: int = 20
    precondition: Optional[float] = None
    dft: str = "fft"

    def __post_init__(self):
        if self.precondition is None and (self.kind != "lbfgs" or self.lr > 0):
            object.__setattr__(self, "precondition", 0.0)
        elif self.precondition is not None:
            object.__setattr__(self, "precondition", float(self.precondition))
        if self.kind not in OPTIMIZERS:
            raise StylejaxError(f"Unknown optimizer {self.kind!r}: use one of {', '.join(OPTIMIZERS)}.")
        if self.iterations < 1:
            raise StylejaxError(f"Iterations per epoch must be >= 1, got {self.iterations}.")
        if self.lr < 0:
            raise StylejaxError(f"The learning rate must be >= 0, got {self.lr}.")
        if self.history < 1:
            raise StylejaxError(f"The L-BFGS history must be >= 1, got {self.history}.")
        if self.dft not in DFTS:
            raise StylejaxError(f"Unknown DFT {self.dft!r}: use one of {', '.join(DFTS)}.")
        if self.precondition is not None and not self.precondition >= 0:
            raise StylejaxError(f"The preconditioning wavelength must be >= 0 px (0: off), got "
                                f"{self.precondition:g}.")


class SolverState(NamedTuple):
    """``image`` [1, H, W, 3] being optimized, the backend's state, the latest loss, and
    ``point``: the solver's own variables when preconditioned (``image`` is their
    `smooth`-ed image), else None."""

    image: jax.Array
    inner: Any
    value: jax.Array
    point: Any = None


def wavelength(scfg: SolverConfig, shape) -> float:
    """The preconditioning wavelength in px (0: none) for images of ``shape`` [..., H, W, 3]."""
    if scfg.precondition is None:
        return PRECONDITION_FRACTION * min(shape[-3:-1])
    return scfg.precondition


def _variables(scfg: SolverConfig, image):
    """The solver's variables for ``image``."""
    length = wavelength(scfg, image.shape)
    return unsmooth(image, length, scfg.dft) if length else image


# Compiled, as inside init_state, so that both starts hold bit-identical variables: L-BFGS
# grows a last-bit difference in its start to 1e-3 of the image within 6 iterations.
_compiled_variables = jax.jit(_variables, static_argnums=0)


def _state(scfg: SolverConfig, point, inner, value) -> SolverState:
    """The state at the solver's variables ``point``."""
    if length := wavelength(scfg, point.shape):
        return SolverState(smooth(point, length, scfg.dft), inner, value, point)
    return SolverState(point, inner, value)


def _in_variables(scfg: SolverConfig, value_and_grad):
    """``value_and_grad(x, *args)`` as a function of the solver's variables (`_variables`)."""
    if scfg.precondition == 0:
        return value_and_grad

    def f(point, *args):
        length = wavelength(scfg, point.shape)
        return in_smooth_variables(value_and_grad, length, scfg.dft)(point, *args)

    return f


def _point(state: SolverState):
    return state.image if state.point is None else state.point


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
    """jaxopt's L-BFGS on ``value_and_grad(x, *args) -> (loss, d loss / d x)``, over the
    preconditioned variables if ``scfg.precondition``."""
    value_and_grad = _in_variables(scfg, value_and_grad)
    if scfg.lr > 0:
        return jaxopt.LBFGS(fun=value_and_grad, value_and_grad=True, maxiter=scfg.iterations,
                            history_size=scfg.history, tol=0.0, stepsize=scfg.lr)
    # Line-search settings chosen by measurement (see README, "Optimizers"): the first
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


def _first_gamma(grad):
    """The first iteration has no curvature pairs yet; like torch's L-BFGS, scale the
    steepest-descent step by min(1, 1/|g|_1) instead of stepping the raw gradient."""
    return jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(grad)))


@functools.partial(jax.jit, static_argnames=("cfg", "scfg"))
def init_state(scfg: SolverConfig, vgg, image, targets, cfg: LossConfig) -> SolverState:
    """The solver state at ``image`` [1, H, W, 3] (evaluates the loss and gradient once).

    That one-off evaluation uses the exact direct convolution whatever ``cfg.conv`` says, as
    the targets do: it compiles in about a third of a Winograd program's time, and the
    epochs that follow evaluate with ``cfg.conv``. For L-BFGS, `fresh_state` needs no
    evaluation and no program of its own (preconditioned, one small FFT program for ``z``).
    """
    point = _variables(scfg, jnp.asarray(image, jnp.float32))
    cfg = dataclasses.replace(cfg, conv="direct")
    if scfg.kind == "lbfgs":
        inner = _jaxopt_lbfgs(scfg, _objective_value_and_grad(cfg)).init_state(point, vgg,
                                                                                targets)
        inner = inner._replace(gamma=_first_gamma(inner.grad).astype(inner.gamma.dtype))
        return _state(scfg, point, inner, inner.value)
    inner = _optax_tx(scfg).init(point)
    state = _state(scfg, point, inner, 0.0)
    return state._replace(value=loss_fn(vgg, state.image, targets, cfg))


def fresh_state(scfg: SolverConfig, image) -> SolverState:
    """An L-BFGS state at ``image`` [1, H, W, 3] not yet evaluated (``value`` is +inf): the
    first `run_epoch` spends one extra iteration evaluating there, then goes on exactly as
    from `init_state`. No evaluation to compile (192 px on a 2-core CPU: the first state's
    1.4-1.8 s becomes about 0.1 s, plus one evaluation inside the first epoch).

    The extra iteration is jaxopt's update from a zero gradient: its direction is zero, so
    the line search's first trial is ``image`` itself, which passes both Wolfe tests against
    a value of +inf and a slope of 0; the pair it records (s = 0, so rho = 0) adds nothing to
    later directions, and ``iter_num`` = -1 marks the state so the epoch runs it on top of
    its iterations and resets the step scaling (`_first_gamma`).
    """
    if scfg.kind != "lbfgs":
        raise StylejaxError(f"fresh_state is for L-BFGS; use init_state for {scfg.kind}.")
    image = jnp.array(image, jnp.float32)  # a copy: the caller's array is not donated
    inner, value = _fresh_fields(image.shape, scfg.history)
    if wavelength(scfg, image.shape):
        return SolverState(image, inner, value, _compiled_variables(scfg, image))
    return SolverState(image, inner, value)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _fresh_fields(shape, history: int):
    """`fresh_state`'s jaxopt state and value for an image of ``shape``, made by one small
    program rather than an eagerly compiled one per array (0.1 of 0.16 s at 192 px).

    Every field is its own buffer (the epoch donates them), typed as jaxopt's init_state
    types them, so the epoch compiled for this state runs the states it returns."""
    real, count = jnp.float32, base.NUM_EVAL_DTYPE
    inner = LbfgsState(
        iter_num=jnp.asarray(-1), value=jnp.asarray(jnp.inf, real),
        grad=jnp.zeros(shape, real), stepsize=jnp.asarray(1.0, real),
        error=jnp.asarray(jnp.inf, real), s_history=jnp.zeros((history,) + shape, real),
        y_history=jnp.zeros((history,) + shape, real),
        rho_history=jnp.zeros((history,), real), gamma=jnp.asarray(1.0, real), aux=None,
        failed_linesearch=jnp.asarray(False), num_fun_eval=jnp.asarray(0, count),
        num_grad_eval=jnp.asarray(0, count), num_linesearch_iter=jnp.asarray(0, count))
    return inner, jnp.asarray(jnp.inf, real)


def _is_fresh(inner):
    """Whether jaxopt's L-BFGS state ``inner`` is a `fresh_state`'s, not yet evaluated."""
    return inner.iter_num < 0


def _jaxopt_iterations(solver, scfg: SolverConfig, state: SolverState, *args) -> SolverState:
    """``scfg.iterations`` of ``solver`` (`_jaxopt_lbfgs(scfg, ...)`) from ``state``, plus
    the evaluating one a `fresh_state` needs first; ``args`` go to its objective."""
    def body(_, carry):
        x, inner = carry
        x, new = solver.update(x, inner, *args)
        # After evaluating a fresh state, start as init_state does (the sum over the
        # gradient only then, not every iteration).
        gamma = jax.lax.cond(_is_fresh(inner),
                             lambda g: _first_gamma(g).astype(new.gamma.dtype),
                             lambda _: new.gamma, new.grad)
        return x, new._replace(gamma=gamma)

    extra = _is_fresh(state.inner).astype(jnp.int32)
    point, inner = jax.lax.fori_loop(0, scfg.iterations + extra, body,
                                     (_point(state), state.inner))
    return _state(scfg, point, inner, inner.value)


def _optax_epoch(state, vgg, targets, cfg, scfg):
    tx = _optax_tx(scfg)
    f = _objective(vgg, targets, cfg)
    if length := wavelength(scfg, state.image.shape):
        pixels = f
        f = lambda z: pixels(smooth(z, length, scfg.dft))  # noqa: E731
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

    point, inner, value = jax.lax.fori_loop(0, scfg.iterations, body,
                                            (_point(state), state.inner, state.value))
    if scfg.kind == "optax-lbfgs":
        value = optax.tree_utils.tree_get(inner, "value")
    return _state(scfg, point, inner, value)


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
        return _jaxopt_iterations(_jaxopt_lbfgs(scfg, _objective_value_and_grad(cfg)), scfg,
                                  state, vgg, targets)
    return _optax_epoch(state, vgg, targets, cfg, scfg)

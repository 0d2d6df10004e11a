"""Optimizers behind one interface: "run k iterations from this state", compiled once.

    scfg = SolverConfig("lbfgs", iterations=100)
    state = init_state(scfg, vgg, image, targets, cfg)        # once (or fresh_state(scfg, image))
    state = run_epoch(state, vgg, targets, cfg=cfg, scfg=scfg)  # every epoch, no recompile
    image, loss = state.image, state.value

The solver state (L-BFGS history, Adam moments) is carried across epochs, so k iterations
twice equal 2k iterations once. By default every solver works on the pixels, as Gatys et al.
and jcjohnson/neural-style do. With ``precondition`` (opt-in) it works on variables ``z``
whose image is ``precondition.smooth(z)``: the same loss, a better-conditioned path to it
that damps fine detail early (see docs/optimizers.md); ``state.image`` is always the image.
Backends:

- ``lbfgs``: jaxopt's `LBFGS` (the default). ``lr > 0`` takes fixed steps of that size along
  the L-BFGS direction (as the seed repository); ``lr == 0`` uses the zoom (strong Wolfe)
  line search, its steps taken with one objective call site (`stylejax.jaxopt_lbfgs`).
- ``optax-lbfgs``: optax's `lbfgs` (maintained; zoom line search).
- ``adam``: optax's Adam with learning rate ``lr`` (in [0, 1] image units).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from stylejax.cpu.kernels import prepare_kernels
from stylejax.errors import StylejaxError
from stylejax.execution import Execution, as_execution
from stylejax.jaxopt_lbfgs import fresh_lbfgs_state, lbfgs
from stylejax.losses import LossConfig, loss_fn
from stylejax.precondition import DFTS, in_smooth_variables, smooth, unsmooth

OPTIMIZERS = ("lbfgs", "optax-lbfgs", "adam")
PRECONDITION_FRACTION = 1 / 8
"""``precondition="auto"``: the wavelength as this fraction of the image's shorter side."""


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Static solver settings (hashable: part of the compiled epoch's identity). The
    defaults here are the library's and the command line's.

    Attributes:
      kind: "lbfgs" (jaxopt), "optax-lbfgs" or "adam".
      iterations: solver iterations per epoch (one compiled call).
      lr: fixed step (lbfgs; 0 = line search) or Adam learning rate (0: 0.02).
      history: L-BFGS memory (pairs of image-sized vectors kept).
      maxls: most function evaluations per line search.
      precondition: 0 (the default): optimize the pixels themselves. A wavelength in px, or
        "auto" (`PRECONDITION_FRACTION` of the image's shorter side): optimize a smoothed
        parametrization instead (`stylejax.precondition`); opt-in, since with a fixed budget
        it changes which image comes out.
      dft: how that change of variables transforms: "fft", or "matmul" (dense DFT products;
        `stylejax.batch` uses them where an image is split over devices).
    """

    kind: str = "lbfgs"
    iterations: int = 100
    lr: float = 0.0
    history: int = 100
    maxls: int = 20
    precondition: Union[float, str] = 0.0
    dft: str = "fft"

    def __post_init__(self):
        if self.kind not in OPTIMIZERS:
            raise StylejaxError(f"Unknown optimizer {self.kind!r}: use one of {', '.join(OPTIMIZERS)}.")
        if self.iterations < 1:
            raise StylejaxError(f"Iterations per epoch must be >= 1, got {self.iterations}.")
        if not self.lr >= 0:
            raise StylejaxError(f"The learning rate must be >= 0, got {self.lr}.")
        if self.history < 1:
            raise StylejaxError(f"The L-BFGS history must be >= 1, got {self.history}.")
        if self.dft not in DFTS:
            raise StylejaxError(f"Unknown DFT {self.dft!r}: use one of {', '.join(DFTS)}.")
        object.__setattr__(self, "precondition", parse_precondition(self.precondition))


def parse_precondition(value) -> Union[float, str]:
    """``value`` as a `SolverConfig.precondition`: "auto", or a float >= 0 (None: 0)."""
    if value is None:
        return 0.0
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return "auto"
        try:
            value = float(value)
        except ValueError:
            value = float("nan")
    if not float(value) >= 0:
        raise StylejaxError(f"The preconditioning wavelength must be 'auto' or >= 0 px (0: "
                            f"off), got {value}.")
    return float(value)


def solver_config(kind: Optional[str] = None, iterations: Optional[int] = None,
                  lr: Optional[float] = None, history: Optional[int] = None,
                  precondition=None) -> SolverConfig:
    """A `SolverConfig` from the settings given; those left None keep its defaults."""
    given = dict(kind=kind, iterations=iterations, lr=lr, history=history,
                 precondition=precondition)
    return SolverConfig(**{k: v for k, v in given.items() if v is not None})


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
    if scfg.precondition == "auto":
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


def _point(state: SolverState):
    return state.image if state.point is None else state.point


def objective(vgg, cfg: LossConfig, execution: Optional[Execution] = None) -> Callable:
    """``f(x, targets) -> (loss, d loss / d x)`` for one image ``x`` [1, H, W, 3]."""
    return lambda x, targets: _value_and_grad(vgg, x, targets, cfg, execution)


@functools.partial(jax.jit, static_argnames=("cfg", "execution"))
def _value_and_grad(vgg, x, targets, cfg: LossConfig, execution):
    # Jitted so that jaxopt's L-BFGS, which calls it at its initial state and in its line
    # search, traces and lowers it once.
    return jax.value_and_grad(loss_fn, argnums=1)(vgg, x, targets, cfg, execution)


def _lbfgs(scfg: SolverConfig, value_and_grad):
    """jaxopt's L-BFGS on ``value_and_grad(x, *args)``, over the solver's variables."""
    if scfg.precondition != 0:
        pixels = value_and_grad

        def value_and_grad(point, *args):
            length = wavelength(scfg, point.shape)
            return in_smooth_variables(pixels, length, scfg.dft)(point, *args)

    return lbfgs(value_and_grad, iterations=scfg.iterations, history=scfg.history,
                 lr=scfg.lr, maxls=scfg.maxls)


def _optax_tx(scfg: SolverConfig):
    if scfg.kind == "adam":
        return optax.adam(scfg.lr or 0.02)
    return optax.lbfgs(memory_size=scfg.history, linesearch=optax.scale_by_zoom_linesearch(
        max_linesearch_steps=scfg.maxls, initial_guess_strategy="one"))


def _first_gamma(grad):
    """The first iteration has no curvature pairs yet; like torch's L-BFGS, scale the
    steepest-descent step by min(1, 1/|g|_1) instead of stepping the raw gradient."""
    return jnp.minimum(1.0, 1.0 / jnp.sum(jnp.abs(grad)))


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "execution"))
def init_state(scfg: SolverConfig, vgg, image, targets, cfg: LossConfig,
               execution: Optional[Execution] = None) -> SolverState:
    """The solver state at ``image`` [1, H, W, 3] (evaluates the loss and gradient once).

    That one-off evaluation uses the direct convolution whatever ``execution.conv`` says, as
    the targets do: it compiles in about a third of a Winograd program's time. For L-BFGS,
    `fresh_state` needs no evaluation and no program of its own.
    """
    point = _variables(scfg, jnp.asarray(image, jnp.float32))
    direct = Execution("direct", as_execution(execution).dtype)
    if scfg.kind == "lbfgs":
        inner = _lbfgs(scfg, objective(vgg, cfg, direct)).init_state(point, targets)
        inner = inner._replace(gamma=_first_gamma(inner.grad).astype(inner.gamma.dtype))
        return _state(scfg, point, inner, inner.value)
    inner = _optax_tx(scfg).init(point)
    state = _state(scfg, point, inner, 0.0)
    return state._replace(value=loss_fn(vgg, state.image, targets, cfg, direct))


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
    """`fresh_state`'s jaxopt state and value, made by one small program rather than an
    eagerly compiled one per array (0.1 of 0.16 s at 192 px)."""
    return fresh_lbfgs_state(shape, history), jnp.asarray(jnp.inf, jnp.float32)


def _is_fresh(inner):
    """Whether jaxopt's L-BFGS state ``inner`` is a `fresh_state`'s, not yet evaluated."""
    return inner.iter_num < 0


def lbfgs_epoch(state: SolverState, value_and_grad, scfg: SolverConfig, *args) -> SolverState:
    """``scfg.iterations`` L-BFGS iterations on ``value_and_grad(x, *args) -> (loss, grad)``
    from ``state``, plus the evaluating one a `fresh_state` needs first. Pure (trace it
    inside `jax.jit`, `jax.vmap` or `shard_map`)."""
    solver = _lbfgs(scfg, value_and_grad)

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


def _optax_epoch(state, vgg, targets, cfg, scfg, execution):
    tx = _optax_tx(scfg)
    f = lambda x: loss_fn(vgg, x, targets, cfg, execution)  # noqa: E731
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


def epoch(state: SolverState, vgg, targets, cfg: LossConfig, scfg: SolverConfig,
          execution: Optional[Execution] = None, value_and_grad=None) -> SolverState:
    """`run_epoch`'s body, unjitted (for use inside another transformation).
    ``value_and_grad``: the L-BFGS objective ``f(x, targets)`` (default `objective`)."""
    execution = as_execution(execution)
    if scfg.kind == "lbfgs":
        f = value_and_grad or objective(vgg, cfg, execution)
        return lbfgs_epoch(state, f, scfg, targets)
    return _optax_epoch(state, vgg, targets, cfg, scfg, execution)


@functools.partial(jax.jit, static_argnames=("cfg", "scfg", "execution"),
                   donate_argnames=("state",))
def run_epoch(state: SolverState, vgg, targets, *, cfg: LossConfig, scfg: SolverConfig,
              execution: Optional[Execution] = None) -> SolverState:
    """Runs ``scfg.iterations`` solver iterations from ``state``; one compiled call.

    ``state`` is donated: don't read it after the call. The returned ``value`` is the loss at
    the returned image (for Adam, at the image before the last update). A ``vgg`` from
    `cpu.kernels.prepare_kernels` (for this image size) saves each call the kernels'
    preparation; a plain one is prepared inside the call.
    """
    vgg = prepare_kernels(vgg, cfg.layers, execution, state.image.shape)  # once, not per
    return epoch(state, vgg, targets, cfg, scfg, execution)              # evaluation

"""3x3 'same' convolutions by Winograd's minimal filtering, F(4x4, 3x3) (Lavin & Gray, 2016).

Each 4x4 block of outputs is computed from a 6x6 input tile with 36 multiplications per
input/output channel pair instead of 144: the tile and the kernel are taken to a 6x6
"Winograd domain" (``B^T d B``, ``G g G^T``), multiplied there as 36 independent matrix
products over the channels, and brought back (``A^T m A``). On a CPU, where a direct
convolution already runs at the matmul peak, this is the only way to do fewer FLOPs.

The interpolation points are 0, 1, -1, 1/2, -1/2 and infinity. The usual 0, ±1, ±2 have the
same cost but a 2-7x larger float32 error through VGG-19 (their output transform multiplies
by 8).

Accuracy (float32 against float64; tests/test_winograd.py holds both to 1e-5): one layer at
VGG-19's shapes is 2-5e-6 off in relative L2, forward and input gradient alike, either form
of the input gradient's product (XLA's direct convolution: 3e-7). Most of it is the float32
sums over the input channels in the Winograd domain (it grows with them), whose terms are
~10x the outputs the output transform makes of them; summing in 4 chunks would take it to
1.0-1.5e-6, not to direct's. A whole loss gradient given the same ReLU masks and max-pool
choices as float64's is 1-4e-6 off (direct 2-9e-7). Without that proviso any float32
network's gradient, direct or PyTorch's too, is sometimes 1e-4 to 1e-2 off: a ReLU
pre-activation, or a max-pool window's second value, within rounding of the decision goes
the other way, and the gradient is piecewise constant in those choices. Winograd's coarser
rounding makes it about twice as likely at 64 px (johnson preset: 11 of 40 random images
against direct's 5 and PyTorch's 3 beyond 1e-4); at 256 px it is the rule for all three (8, 7
and 6 of 8). Which unit flips depends on the compiled program, not only on the inputs.

All functions are pure, NHWC, float32, any height and width (the image is zero-padded to
whole tiles and the result cropped), and need no XLA extension.
"""

from __future__ import annotations

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

TILE = 4  # outputs per tile side
WINDOW = TILE + 2  # inputs per tile side
FEW_TILES = 64  # up to this many tiles (32x32 outputs) the input gradient's product is
# computed the other way round (see `conv3x3_input_grad`)

# A^T [4, 6], G [6, 3], B^T [6, 6] for the points above (exact in binary except G's thirds).
AT = np.array([[1, 1, 1, 1, 1, 0],
               [0, 1, -1, 1 / 2, -1 / 2, 0],
               [0, 1, 1, 1 / 4, 1 / 4, 0],
               [0, 1, -1, 1 / 8, -1 / 8, 1]])
G = np.array([[4, 0, 0],
              [2 / 3, 2 / 3, 2 / 3],
              [2 / 3, -2 / 3, 2 / 3],
              [-8 / 3, -4 / 3, -2 / 3],
              [-8 / 3, 4 / 3, -2 / 3],
              [0, 0, 1]])
BT = np.array([[1 / 4, 0, -5 / 4, 0, 1, 0],
               [0, -1 / 4, -1 / 4, 1, 1, 0],
               [0, 1 / 4, -1 / 4, -1, 1, 0],
               [0, -1 / 2, -1, 1 / 2, 1, 0],
               [0, 1 / 2, -1, -1 / 2, 1, 0],
               [0, 1 / 4, 0, -5 / 4, 0, 1]])


def _apply(mat, x, axis: int, out_axis: int):
    """``mat`` [r, n] applied along ``x``'s axis ``axis`` (size n); the r results are stacked
    at ``out_axis`` of the output. Unrolled into adds and scalings, skipping the zeros.

    This form is most of a Winograd program's compile time (192 px value+grad: 7.4 s, the
    direct one 1.6 s), yet the alternatives measured lose (jaxlib 0.10.2, XLA CPU): as a
    6-deep ``dot_general`` it compiles in 3.5 s but runs 5-10% slower; as a broadcast multiply
    and sum over the n inputs (4.0 s) XLA miscompiles the whole jitted network (128 px:
    relu2_1 off by 1e13, each forward transform alone enough), though each convolution
    alone is right.

    Written in `lax` primitives, not `jnp` operators: each ``jnp`` add or multiply is a small
    jitted function whose dispatch costs ~0.2 ms per call to trace, and the transforms make
    thousands of them (192 px value+grad: tracing and lowering 2.7 -> 1.9 s; the program is
    the same)."""
    parts = [lax.index_in_dim(x, i, axis, keepdims=False) for i in range(x.shape[axis])]
    rows = []
    for coefs in mat:
        acc = None
        for c, part in zip(coefs, parts):
            if c == 0:
                continue
            term = (part if c == 1 else lax.neg(part) if c == -1
                    else lax.mul(part, np.float32(c)))
            acc = term if acc is None else lax.add(acc, term)
        rows.append(lax.expand_dims(acc, (out_axis,)))
    return lax.concatenate(rows, out_axis)


def _windows(x, axis: int, tiles: int):
    """Overlapping windows of 6 at stride 4 along ``axis``: [..., n, ...] -> [..., t, 6, ...]
    for 4t-2 < n <= 4t+4 (zero-padded at the end to 4(t+1))."""
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, TILE * (tiles + 1) - x.shape[axis])
    x = jnp.pad(x, pad)
    x = x.reshape(x.shape[:axis] + (tiles + 1, TILE) + x.shape[axis + 1:])
    head = lax.slice_in_dim(x, 0, tiles, axis=axis)
    tail = lax.slice_in_dim(lax.slice_in_dim(x, 1, tiles + 1, axis=axis), 0, WINDOW - TILE,
                            axis=axis + 1)
    return jnp.concatenate([head, tail], axis=axis + 1)


def _overlap_add(x, axis: int):
    """The transpose of `_windows`: [..., t, 6, ...] -> [..., 4(t+1), ...]."""
    head = lax.slice_in_dim(x, 0, TILE, axis=axis + 1)
    tail = lax.slice_in_dim(x, TILE, WINDOW, axis=axis + 1)
    pad = [(0, 0)] * x.ndim
    pad_head, pad_tail = list(pad), list(pad)
    pad_head[axis] = (0, 1)
    pad_tail[axis], pad_tail[axis + 1] = (1, 0), (0, 2 * TILE - WINDOW)
    total = jnp.pad(head, pad_head) + jnp.pad(tail, pad_tail)
    return total.reshape(total.shape[:axis] + (-1,) + total.shape[axis + 2:])


# G g G^T for all 36 (a, b) at once: u[a, b] = sum over (i, j) of G[a, i] G[b, j] g[i, j].
_KERNEL_TRANSFORM = np.kron(G, G).astype(np.float32)  # [36, 9]


def transform_kernel(kernel):
    """HWIO kernel [3, 3, Cin, Cout] -> its Winograd-domain form [36, Cin, Cout].

    One [36, 9] x [9, Cin*Cout] matmul: unlike the tiles' transforms it is a real matmul
    (Cin*Cout columns), and it compiles in a fraction of the unrolled form's time (all of
    VGG-19's kernels: 0.07 s against 0.6 s, and runs faster)."""
    u = jnp.dot(jnp.asarray(_KERNEL_TRANSFORM), kernel.reshape((9, -1)),
                precision=lax.Precision.HIGHEST)  # float32 on every backend (no TF32)
    return u.reshape((WINDOW * WINDOW,) + kernel.shape[2:])


def _tiles(height: int, width: int) -> tuple[int, int]:
    return -(-height // TILE), -(-width // TILE)


# Both convolutions are jitted so that each map size and channel count is traced and lowered
# once, however many layers share it and however often a custom VJP retraces it (192 px
# value+grad: 1.8 -> 1.1 s; XLA inlines the calls, so the compiled program is the same).
@jax.jit
def conv3x3(x, u):
    """3x3 'same' convolution (zero padding, no bias) of ``x`` [N, H, W, Cin] with a kernel
    given as ``transform_kernel(kernel)`` [36, Cin, Cout]; returns [N, H, W, Cout]."""
    n, h, w, c = x.shape
    th, tw = _tiles(h, w)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    v = _apply(BT, _windows(x, 1, th), 2, 0)  # [6, N, th, W+2, Cin]
    v = _apply(BT, _windows(v, 3, tw), 4, 1)  # [6, 6, N, th, tw, Cin]
    m = lax.dot_general(v.reshape(WINDOW * WINDOW, n * th * tw, c), u,
                        (((2,), (1,)), ((0,), (0,))))  # [36, N*th*tw, Cout]
    m = m.reshape(WINDOW, WINDOW, n, th, tw, -1)
    y = _apply(AT, m, 1, 4)  # [6, N, th, tw, 4, Cout]
    y = _apply(AT, y, 0, 2)  # [N, th, 4, tw, 4, Cout]
    return y.reshape(n, th * TILE, tw * TILE, -1)[:, :h, :w]


@jax.jit
def conv3x3_input_grad(g, u):
    """The gradient of `conv3x3` w.r.t. its input, for the output cotangent ``g``
    [N, H, W, Cout]; returns [N, H, W, Cin]. The exact transpose of the forward algorithm,
    so it reuses ``u`` (no flipped kernel, no second transform)."""
    n, h, w, k = g.shape
    th, tw = _tiles(h, w)
    g = jnp.pad(g, ((0, 0), (0, th * TILE - h), (0, tw * TILE - w), (0, 0)))
    g = g.reshape(n, th, TILE, tw, TILE, k)
    dm = _apply(AT.T, g, 2, 0)  # [6, N, th, tw, 4, Cout]
    dm = _apply(AT.T, dm, 4, 1)  # [6, 6, N, th, tw, Cout]
    dm = dm.reshape(WINDOW * WINDOW, n * th * tw, k)
    if n * th * tw <= FEW_TILES:
        # Few tiles: [tiles, Cout] x [Cout, Cin] runs at a third of the matmul peak on XLA
        # CPU's Eigen path; [Cin, Cout] x [Cout, tiles] nearly 2x faster (24x24 maps, 512 ->
        # 512: 27 -> 15 ms for this whole function). The kernel's form is read as it lies and
        # the small dm in place, transposed by the product itself: a transposed copy of dm
        # cost as much as the product (a 192 px iteration 3-4% faster without it). The
        # barrier keeps XLA from folding the result's transpose into the output transform,
        # which then runs slower (a 192 px iteration 1.17x).
        dvt = lax.dot_general(u, dm, (((2,), (2,)), ((0,), (0,))))  # [36, Cin, N*th*tw]
        dv = lax.optimization_barrier(dvt).transpose(0, 2, 1)
    else:
        dv = lax.dot_general(dm, u, (((2,), (2,)), ((0,), (0,))))  # [36, N*th*tw, Cin]
    dv = dv.reshape(WINDOW, WINDOW, n, th, tw, -1)
    dx = _apply(BT.T, dv, 0, 3)  # [6, N, th, 6, tw, Cin]
    dx = _apply(BT.T, dx, 0, 4)  # [N, th, 6, tw, 6, Cin]
    dx = _overlap_add(_overlap_add(dx, 3), 1)  # [N, 4(th+1), 4(tw+1), Cin]
    return dx[:, 1:h + 1, 1:w + 1]

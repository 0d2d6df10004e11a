"""Devices and sharding: which mesh a run uses, and where each array goes.

A run spreads over a 2-D `jax.sharding.Mesh` with axes ``("batch", "space")``:

- ``shard="batch"``: the devices lie along "batch"; each holds whole images (N/D of them).
- ``shard="spatial"``: the devices lie along "space"; every image's rows (its H axis) are
  split across them, and XLA's SPMD partitioner exchanges the rows each 3x3 convolution
  needs from its neighbours (the halos). For one image too large for one device.

Arrays are placed with `NamedSharding` (`place`); jitted code follows its inputs, and
`constrain` pins the solver state inside the jitted epoch so it stays where it is. The rule
for every array (`spec`): a batched array's axis 0 goes on "batch"; an image-like array
(``[..., H, W, C]``: images, L-BFGS history, content features) has its H axis on "space"
when the device count divides it; everything else (Gram targets, scalars) is replicated.

Multi-host (a TPU pod slice): `initialize_distributed` first, then the same code; the mesh
spans every host's devices, and `to_host` gathers results from all of them.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from stylejax.errors import StylejaxError

BATCH, SPACE = "batch", "space"
SHARDS = ("auto", "batch", "spatial", "none")
DISTRIBUTED_ENV = "STYLEJAX_DISTRIBUTED"


def make_mesh(shard: str = "auto", pairs: int = 1,
              devices: Optional[Sequence] = None) -> Optional[Mesh]:
    """The mesh for ``pairs`` images under ``shard``, or None for one device, unsharded.

    "auto": "batch" when several devices are visible and there are several pairs, else
    None. "batch": min(pairs, D) devices along "batch". "spatial": all D along "space".
    "none": None (the default device).
    """
    if shard not in SHARDS:
        raise StylejaxError(f"Unknown sharding {shard!r}: use one of {', '.join(SHARDS)}.")
    devices = list(jax.devices() if devices is None else devices)
    if shard == "none" or (shard == "auto" and (len(devices) == 1 or pairs == 1)):
        return None
    if shard == "spatial":
        return Mesh(np.array(devices).reshape(1, -1), (BATCH, SPACE))
    used = devices[:max(1, min(pairs, len(devices)))]
    return Mesh(np.array(used).reshape(-1, 1), (BATCH, SPACE))


def spec(shape: Sequence[int], mesh: Mesh, batched: bool = True) -> P:
    """The `PartitionSpec` of an array of ``shape`` (see the module docstring).

    Raises StylejaxError if an image-size array's H cannot be split over "space" evenly.
    """
    parts: list = [None] * len(shape)
    if batched and parts:
        parts[0] = BATCH
    space = mesh.shape[SPACE]
    if space > 1 and len(shape) >= 3 + batched:
        if shape[-3] % space == 0:
            parts[-3] = SPACE
        elif shape[-1] == 3:  # the image itself: refuse rather than silently replicate it
            raise StylejaxError(
                f"--shard spatial splits the image's {shape[-3]} rows over {space} devices and "
                f"needs a multiple of {space}: choose a --size that gives one.")
    return P(*parts)


def shardings(tree, mesh: Mesh, batched: bool = True):
    """A pytree of `NamedSharding`, one per leaf of ``tree`` (arrays or shape-dtype structs)."""
    return jax.tree.map(lambda x: NamedSharding(mesh, spec(np.shape(x), mesh, batched)), tree)


def place(tree, mesh: Optional[Mesh], batched: bool = True):
    """``tree``'s arrays as global `jax.Array`s sharded over ``mesh`` (unchanged if None).

    Built with `jax.make_array_from_callback`, so it also works across hosts when every
    process passes the same values.
    """
    if mesh is None:
        return tree

    def put(x):
        x = np.asarray(x)
        sharding = NamedSharding(mesh, spec(x.shape, mesh, batched))
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, tree)


def replicate(tree, mesh: Optional[Mesh]):
    """``tree`` (e.g. the VGG bundle) replicated on every device of ``mesh``."""
    if mesh is None:
        return tree

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, NamedSharding(mesh, P()),
                                            lambda index: x[index])

    return jax.tree.map(put, tree)


def constrain(tree, mesh: Optional[Mesh], batched: bool = True):
    """Inside `jax.jit`: pins ``tree``'s leaves to their `spec` (no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, shardings(tree, mesh, batched))


def to_host(x) -> np.ndarray:
    """A numpy copy of ``x``; gathers the shards of other hosts when it spans several."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def wants_distributed(flag: bool = False) -> bool:
    """True if ``flag`` (``--distributed``) or ``$STYLEJAX_DISTRIBUTED`` is 1/true/yes."""
    return flag or os.environ.get(DISTRIBUTED_ENV, "").strip().lower() in ("1", "true", "yes")


def initialize_distributed() -> None:
    """`jax.distributed.initialize()`, before anything else touches a device.

    On a Cloud TPU pod slice (and SLURM / Open MPI clusters) it finds the coordinator and
    the process's rank by itself; elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
    and JAX_PROCESS_ID. Every host then runs the same command on the same inputs.
    """
    try:
        jax.distributed.initialize()
    except (RuntimeError, ValueError) as e:
        detail = " ".join(str(e).split()).rstrip(".")
        raise StylejaxError(f"jax.distributed.initialize() failed ({detail}): run the same "
                            "command on every host of the pod slice, or drop --distributed.")


def is_main_process() -> bool:
    """True on the process that writes files and prints (process 0)."""
    return jax.process_index() == 0

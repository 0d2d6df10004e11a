"""An unpickler for torch state_dicts that allows only what a state_dict needs.

A ``.pth`` file is a pickle, and a pickle can name any Python callable to be run while it
loads. `StateDictUnpickler` maps the handful of names a plain state_dict uses
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor*``, ``torch._utils._rebuild_
parameter*``, ``torch.<Type>Storage``) to numpy stand-ins defined here and refuses every other
name with a StylejaxError, so nothing a file names is ever run and torch is never imported.
Tensors come out as `Tensor` records (storage, offset, size, stride, in elements) whose
`Storage` bytes the caller reads after the pickle (`Tensor.numpy` then gives the array).
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from typing import Any, BinaryIO, Callable

import numpy as np

from stylejax.errors import StylejaxError

try:  # bfloat16 for numpy; ml_dtypes comes with jax
    from ml_dtypes import bfloat16 as _bfloat16
except ImportError:  # pragma: no cover
    _bfloat16 = None

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": _bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends inside the pickle."""

    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        self.name, self.dtype = name, np.dtype(dtype)

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a storage type")


class Storage:
    """A flat typed array the pickle refers to by key; its bytes are read after the pickle."""

    __slots__ = ("key", "dtype", "numel", "root", "root_offset", "array")

    def __init__(self, key, dtype, numel, root=None, root_offset=0):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.root, self.root_offset, self.array = root, root_offset, None

    def data(self) -> np.ndarray:
        """The storage's elements, [numel] of its dtype (a slice of the root's for a view)."""
        if self.root is not None:
            return self.root.data()[self.root_offset:self.root_offset + self.numel]
        if self.array is None:
            raise StylejaxError(f"storage {self.key} was never read")
        return self.array

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a storage")


class Tensor:
    """A strided view into a `Storage` (what ``torch._utils._rebuild_tensor`` makes)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        ints = (isinstance(offset, int) and all(isinstance(v, int) for v in (*size, *stride)))
        if not isinstance(storage, Storage) or not ints or len(size) != len(stride) \
                or offset < 0 or min((*size, *stride), default=0) < 0:
            raise pickle.UnpicklingError("malformed tensor record")
        self.storage, self.offset = storage, offset
        self.size, self.stride = tuple(size), tuple(stride)

    def numpy(self) -> np.ndarray:
        """A contiguous copy of the tensor, shape ``size``, from its storage's elements."""
        flat = self.storage.data()
        if 0 in self.size:
            return np.zeros(self.size, flat.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= flat.size:
            raise pickle.UnpicklingError("tensor reaches past the end of its storage")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset:], shape=self.size,
            strides=[s * flat.itemsize for s in self.stride], writeable=False)
        return np.array(view)

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a tensor")


def _rebuild_tensor(storage, storage_offset, size, stride):
    return Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    return Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype)
       for name, dtype in _STORAGE_DTYPES.items() if dtype is not None},
}
"""Everything a plain state_dict's pickle may name, mapped to numpy stand-ins."""


class StateDictUnpickler(pickle.Unpickler):
    """Unpickles a torch state_dict; refuses any global outside `ALLOWED_GLOBALS`."""

    def __init__(self, file: BinaryIO, path, persistent_load: Callable | None = None):
        """``path`` names the file in messages; ``persistent_load(pid)`` resolves storage
        records (e.g. `storage_record` bound to a dict); without it any is refused."""
        super().__init__(file)
        self._path, self._persistent = path, persistent_load

    def find_class(self, module, name):
        """The stand-in for ``module.name``; StylejaxError for anything not allowed."""
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise StylejaxError(
                f"stylejax refuses to load {self._path}: it asks to run {module}.{name}, "
                "which a plain weight file never does (it may be malicious).") from None

    def persistent_load(self, pid):
        """Hands ``pid`` to the ``persistent_load`` given at construction."""
        if self._persistent is None:
            raise pickle.UnpicklingError("unexpected persistent id")
        return self._persistent(pid)


def storage_record(pid, storages: dict) -> Storage:
    """Resolves ``('storage', storage_type, key, location, numel[, view_metadata])``.

    ``storages`` (key -> `Storage`) collects every storage seen, so tensors sharing one get
    the same record; returns the storage, or a view (offset and size in elements) of it.
    """
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise pickle.UnpicklingError(f"unexpected persistent id {pid!r:.80}")
    storage_type, key, _location, numel = pid[1:5]
    view = pid[5] if len(pid) == 6 else None
    if not isinstance(storage_type, _StorageType) or not isinstance(numel, int) or numel < 0:
        raise pickle.UnpicklingError("malformed storage record")
    key = str(key)
    if key not in storages:
        storages[key] = Storage(key, storage_type.dtype, numel)
    root = storages[key]
    if view is None:
        return root
    # Old torch saved views of a root storage as (view_key, offset, size), in elements.
    view_key, offset, size = view
    if not (isinstance(offset, int) and isinstance(size, int) and 0 <= offset
            and offset + size <= root.numel):
        raise pickle.UnpicklingError("malformed storage view")
    view_key = f"view:{view_key}"
    if view_key not in storages:
        storages[view_key] = Storage(view_key, root.dtype, size, root, offset)
    return storages[view_key]

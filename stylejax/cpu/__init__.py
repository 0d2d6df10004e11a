"""CPU speed work behind one seam.

`stylejax.vgg` reaches the CPU forms of its convolutions through `kernels.layer` (and only
there); the loop modules compile through `compile_released` and prepare kernels once per run
through `prepare_kernels`. Both are harmless elsewhere: on GPU/TPU `prepare_kernels` returns
the bundle unchanged and `compile_released` adds no compiler options. Process-wide tuning
(`hostmem.keep_step_heap`) is never called by the library; the command line opts in.
"""

from stylejax.cpu.hostmem import compile_released
from stylejax.cpu.kernels import prepare_kernels

__all__ = ["compile_released", "prepare_kernels"]

"""CPU speed work behind one seam.

`stylejax.vgg` reaches the CPU forms of its convolutions through `kernels.layer` (and only
there); the loop modules compile through `hostmem.compile_released` and prepare kernels once
per run through `kernels.prepare_kernels`. Both are harmless elsewhere: on GPU/TPU
`prepare_kernels` returns the bundle unchanged and `compile_released` adds no compiler
options. Process-wide tuning (`hostmem.keep_step_heap`) is never called by the library; the
command line opts in. This package's modules are imported by their full names.
"""

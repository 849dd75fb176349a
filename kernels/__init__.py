"""fusedopt's Triton kernels (installed as ``fusedopt.kernels``; setup.py maps it to kernels/).

Device code only: the host half (tables, launch sizes, the algorithm table) is
fusedopt/backends/triton.py, which passes layouts and columns as constexprs. preamble.py holds the
one update kernel; each algorithm contributes its block math in the module of its name (adam.py,
sgd.py, lion.py, lars.py, lamb.py: preamble.py says what such a module holds), which the backend's
algorithm table imports; norm.py the grad-norm kernel; numerics.py the element helpers they share.
Importing this package imports triton: only fusedopt/backends/triton.py does, behind Note [import
never fails].
"""
from fusedopt.kernels.norm import norm_kernel
from fusedopt.kernels.preamble import update_kernel

__all__ = ["update_kernel", "norm_kernel"]

"""fusedopt's Triton kernels (installed as ``fusedopt.kernels``; setup.py maps it to kernels/).

One file per algorithm: adam.py, sgd.py, norm.py; table.py holds the pointer table they all walk
(Note [one launch per bucket]) and the launch-size rule. Importing this package imports triton:
only fusedopt/backends/triton.py does, behind Note [import never fails].
"""
from fusedopt.kernels.adam import adam_kernel
from fusedopt.kernels.norm import norm_kernel
from fusedopt.kernels.sgd import sgd_kernel

__all__ = ["adam_kernel", "sgd_kernel", "norm_kernel"]

"""Loads the compiled extension without ever failing the import of fusedopt.

Note [import never fails]: a missing or broken ``fusedopt._C`` (not built, built against another
torch, FUSEDOPT_NO_EXT=1) leaves ``C`` as None and keeps the reason in ``LOAD_ERROR``; the
backends that need it then report themselves unavailable with that reason.
"""
try:
    from fusedopt import _C as C
    LOAD_ERROR = None
except Exception as exc:  # ImportError, or an undefined-symbol OSError from an ABI mismatch
    C = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"

"""Loads the compiled extension without ever failing the import of fusedopt, and builds it on
first use where the install did not.

Note [import never fails]: a missing or broken ``fusedopt._C`` (not built, built against another
torch, FUSEDOPT_NO_EXT=1) leaves ``C`` as None and keeps the reason in ``LOAD_ERROR``; the
backends that need it then report themselves unavailable with that reason.

Note [jit build]: where the installed ``fusedopt._C`` is missing (``pip install .`` with pip's
build isolation has no torch to build it against) or lacks the CUDA kernels, the backend that
needs it compiles the same sources on first use, through ``jit_build``: one call of
torch.utils.cpp_extension.load (ninja), cached under torch's extension directory
(``TORCH_EXTENSIONS_DIR``, default ~/.cache/torch_extensions), so later processes only load it.
A build that compiles says so on stderr and takes about as long as the install-time one (77 s
for the CPU kernels on 2 cores); a cached one loads in about 0.3 s. The torch version is one of
the build flags, so another torch rebuilds instead of loading a module built against the old
one. Each JIT module is compiled with ``-Dfusedopt=<its module name>``: its C++ types then differ
from those of any other fusedopt extension already loaded in the process (an installed _C without
CUDA kernels, the CPU and the CUDA JIT builds, another install's _C), which pybind11 would
otherwise refuse to register twice. The sources come with the package
(``fusedopt/csrc``, installed from csrc/) or, in a source checkout, from csrc/. Nothing builds at
import. FUSEDOPT_NO_EXT=1 at run time turns the CPU build off (the CUDA one is asked for by
name, with backend='cuda' or by ``auto`` on a GPU).
"""
import glob
import os
import re
import sys
import threading

_PACKAGE = os.path.dirname(os.path.abspath(__file__))

try:
    from fusedopt import _C as C
    LOAD_ERROR = None
    # another install's editable finder (a venv with system site-packages) can hand out its own
    # _C, built from other sources than this package's
    if os.path.dirname(os.path.abspath(C.__file__)) != _PACKAGE:
        LOAD_ERROR = f"the fusedopt._C found, {C.__file__}, is not this package's ({_PACKAGE})"
        C = None
except Exception as exc:  # ImportError, or an undefined-symbol OSError from an ABI mismatch
    C = None
    LOAD_ERROR = f"{type(exc).__name__}: {exc}"
# installed package first, then the checkout an editable install points into
CSRC = next((d for d in (os.path.join(_PACKAGE, "csrc"),
                         os.path.join(os.path.dirname(_PACKAGE), "csrc"))
             if os.path.exists(os.path.join(d, "bindings.cpp"))), None)


def jit_build(name, *, cuda, what):
    """The extension compiled from CSRC under module name ``name`` (Note [jit build]): the CPU
    kernels, and with ``cuda`` the CUDA kernels too. Raises RuntimeError saying why it cannot."""
    import torch
    from torch.utils import cpp_extension
    if CSRC is None:
        raise RuntimeError(f"the C++ sources to build {what} are not installed (no csrc/ beside "
                           f"{_PACKAGE}); reinstall fusedopt from a source checkout")
    # the sources setup.py compiles
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cpp"))
                     + glob.glob(os.path.join(CSRC, "cpu", "*.cpp")))
    # Note [jit build]: the namespace renamed after the module, the torch version a flag
    defines = [f"-Dfusedopt={name}", "-DFUSEDOPT_TORCH_" + re.sub(r"\W", "_", torch.__version__)]
    if cuda:
        # the host glue (cuda/glue.cpp) and the kernels
        sources += sorted(glob.glob(os.path.join(CSRC, "cuda", "*.cpp"))
                          + glob.glob(os.path.join(CSRC, "cuda", "*.cu")))
        if os.environ.get("FUSEDOPT_CUDA_ARCHS"):          # as setup.py
            os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["FUSEDOPT_CUDA_ARCHS"]
        defines.append("-DFUSEDOPT_WITH_CUDA=1")
    # said only when it takes long, i.e. compiles: a cached build loads in ~0.3 s
    cache = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    notice = threading.Timer(2.0, lambda: print(
        f"fusedopt: compiling {what} from {len(sources)} sources: once, about 1-3 min, then "
        f"cached under {cache} (FUSEDOPT_JIT_VERBOSE=1 shows the compiler)",
        file=sys.stderr, flush=True))
    notice.daemon = True
    notice.start()
    try:
        return cpp_extension.load(
            name=name, sources=sources, extra_include_paths=[CSRC],
            extra_cflags=["-O3", "-fopenmp", *defines], extra_cuda_cflags=["-O3", *defines],
            extra_ldflags=["-fopenmp", "-l:libstdc++.so.6"],  # Note [shared libstdc++], setup.py
            verbose=os.environ.get("FUSEDOPT_JIT_VERBOSE") == "1")
    except Exception as exc:   # said here too: backend='auto' then quietly picks another one
        lines = str(exc).strip().splitlines()
        print(f"fusedopt: compiling {what} failed: {type(exc).__name__}: "
              f"{lines[0] if lines else ''}; fusedopt.available_backends() lists what works",
              file=sys.stderr, flush=True)
        raise
    finally:
        notice.cancel()

"""Build of fusedopt and its compiled extension ``fusedopt._C``.

The extension is built against the torch this Python already has: ``pip install
--no-build-isolation -e .`` (scripts/setup.sh) is the fast path. pip's default build isolation
(``pip install .``, ``pip install git+URL``) builds in a fresh environment without torch; then
the package installs without the extension, with its C++ sources, and the cpu backend compiles
them on first use, cached (Note [jit build] in fusedopt/_ext.py).

Environment flags:
  FUSEDOPT_NO_EXT=1       skip the extension (the ``reference`` backend, and ``triton`` where
                          available, still work; set at run time, no JIT build either).
  FUSEDOPT_REQUIRE_EXT=1  make a failed extension build, or no torch to build it against, fail
                          the install (CI sets it); by default a failed build only warns, and
                          ``import fusedopt`` still works.
  FUSEDOPT_NO_CUDA=1      build the CPU kernels only, even where torch has CUDA and nvcc exists.
  FUSEDOPT_REQUIRE_CUDA=1 fail unless the CUDA kernels are built (scripts/gpu_check.sh sets it);
                          FUSEDOPT_REQUIRE_EXT=1 with a CUDA torch implies it.
  FUSEDOPT_CUDA_ARCHS     e.g. "8.0;9.0" (sets TORCH_CUDA_ARCH_LIST for the CUDA sources).
  MAX_JOBS                parallel compile jobs (honoured by torch's ninja build).
"""
import glob
import os
import sys

from setuptools import setup


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _why_no_cuda(cpp_extension):
    """None when the CUDA kernels can be built here, else the reason."""
    if _flag("FUSEDOPT_NO_CUDA"):
        return "FUSEDOPT_NO_CUDA is set"
    if __import__("torch").version.cuda is None:
        return f"torch {__import__('torch').__version__} is built without CUDA"
    home = cpp_extension.CUDA_HOME
    if home is None:
        return "no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)"
    if not os.path.exists(os.path.join(home, "bin", "nvcc")):
        return f"{home}/bin/nvcc does not exist (CUDA_HOME={home})"
    return None


def _extensions():
    if _flag("FUSEDOPT_NO_EXT"):
        return [], {}
    try:
        from torch.utils import cpp_extension
    except ImportError as exc:   # pip's build isolation: a fresh environment without torch
        why = (f"torch is not importable here ({exc}): pip builds in an isolated environment "
               "unless given --no-build-isolation")
        if _flag("FUSEDOPT_REQUIRE_EXT"):
            raise RuntimeError(f"fusedopt: cannot build fusedopt._C: {why}")
        print(f"fusedopt: building without fusedopt._C: {why}. The cpu backend compiles it on "
              "first use (cached); `pip install --no-build-isolation .` builds it now.",
              file=sys.stderr)
        return [], {}

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp"]   # cpp_extension adds the -std= torch needs (c++20 for 2.13)
    # Note [shared libstdc++]: a compiler whose own library directory holds only a static
    # libstdc++ (the GPU machine's /opt/gcc/bin/g++, 2026-11-27) gives the extension a private
    # copy whose iostreams are never initialised: every TORCH_CHECK message with a number in it
    # then crashed the process (g++ 13) or lost the number (g++ 12 with -static-libstdc++). A
    # plain -lstdc++ finds that directory's library too (run 4 of bench/results/nvidia-h200);
    # naming the shared object binds the process's libstdc++, as torch's own libraries do.
    # Elsewhere it is the library g++ links anyway.
    link = ["-fopenmp", "-l:libstdc++.so.6"]
    include_dirs = [os.path.abspath("csrc")]
    why_not = _why_no_cuda(cpp_extension)
    with_cuda = why_not is None
    torch_has_cuda = __import__("torch").version.cuda is not None
    if why_not and (_flag("FUSEDOPT_REQUIRE_CUDA") or (
            _flag("FUSEDOPT_REQUIRE_EXT") and torch_has_cuda and not _flag("FUSEDOPT_NO_CUDA"))):
        raise RuntimeError(f"fusedopt: the CUDA kernels cannot be built: {why_not} "
                           "(FUSEDOPT_REQUIRE_CUDA, or FUSEDOPT_REQUIRE_EXT with a CUDA torch; "
                           "FUSEDOPT_NO_CUDA=1 builds the CPU kernels only)")
    if with_cuda:
        if os.environ.get("FUSEDOPT_CUDA_ARCHS"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["FUSEDOPT_CUDA_ARCHS"]
        ext = cpp_extension.CUDAExtension(
            "fusedopt._C",
            sources + sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu")),
            include_dirs=include_dirs,
            define_macros=[("FUSEDOPT_WITH_CUDA", "1")],
            # no --use_fast_math: it flushes fp32 subnormals (small Adam second moments) to zero
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=link,
        )
    else:
        ext = cpp_extension.CppExtension(
            "fusedopt._C", sources, include_dirs=include_dirs,
            extra_compile_args=cxx, extra_link_args=link,
        )
    # A failed build warns instead of failing the install: Note [import never fails].
    ext.optional = not _flag("FUSEDOPT_REQUIRE_EXT")
    return [ext], {"build_ext": cpp_extension.BuildExtension}


ext_modules, cmdclass = _extensions()

setup(
    packages=["fusedopt", "fusedopt.backends", "fusedopt.config", "fusedopt.schedulers",
              "fusedopt.bench", "fusedopt.kernels", "fusedopt.csrc"],
    # the C++/CUDA sources go into the package too: the JIT builds read them (Note [jit build])
    package_dir={"fusedopt.kernels": "kernels", "fusedopt.csrc": "csrc"},
    package_data={"fusedopt.csrc": ["*.cpp", "*.h", "cpu/*.cpp", "cpu/*.h", "cuda/*.cpp",
                                    "cuda/*.cu", "cuda/*.cuh", "cuda/*.h"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)

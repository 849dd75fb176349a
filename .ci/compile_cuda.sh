#!/usr/bin/env bash
# Compile-check every CUDA source under csrc/ for sm_80 and sm_90 with the machine's nvcc
# (`nvcc -c`, objects into a temporary directory that is removed), with the flags the real build
# passes (setup.py's plus torch.utils.cpp_extension's COMMON_NVCC_FLAGS, read from the installed
# torch: -D__CUDA_NO_HALF_OPERATORS__ and the rest, --expt-relaxed-constexpr). The kernels
# include only CUDA headers, so this needs no CUDA build of torch; the host glue that includes
# torch's c10/cuda headers is checked with the host compiler (below). Exits 0 with a message when
# there is no nvcc, non-zero on any compile error or warning.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC=${NVCC:-$(command -v nvcc || true)}
if [ -z "$NVCC" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
  NVCC="${CUDA_HOME:-/usr/local/cuda}/bin/nvcc"
fi
if [ -z "$NVCC" ]; then
  echo "compile_cuda: nvcc not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin):" \
       "CUDA compile check skipped"
  exit 0
fi

mapfile -t SOURCES < <(find csrc -name '*.cu' | sort)
if [ "${#SOURCES[@]}" -eq 0 ]; then
  echo "compile_cuda: no .cu files under csrc/"
  exit 0
fi

PY=${PYTHON:-python3}
mapfile -t TORCH_FLAGS < <("$PY" -c \
  "from torch.utils.cpp_extension import COMMON_NVCC_FLAGS as f; print(*f, sep='\n')")
if [ "${#TORCH_FLAGS[@]}" -eq 0 ]; then
  echo "compile_cuda: could not read torch's COMMON_NVCC_FLAGS"
  exit 1
fi

OBJ=$(mktemp -d)
trap 'rm -rf "$OBJ"' EXIT
echo "compile_cuda: $("$NVCC" --version | tail -n 1)"
status=0
for src in "${SOURCES[@]}"; do
  obj="$OBJ/$(echo "$src" | tr '/' '_').o"
  if "$NVCC" -std=c++17 -O3 -DFUSEDOPT_WITH_CUDA=1 "${TORCH_FLAGS[@]}" -Xcompiler -fPIC \
      -Icsrc -Werror all-warnings -Xcompiler -Wall,-Werror \
      -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
      -c "$src" -o "$obj"; then
    echo "compile_cuda: ok    $src (sm_80, sm_90)"
  else
    echo "compile_cuda: FAIL  $src"
    status=1
  fi
done

# The host side of the CUDA build (csrc/cuda/glue.cpp, and csrc/bindings.cpp with the CUDA entries
# bound): checked with the host compiler against torch's headers and the CUDA toolkit's, as the
# real build compiles them (-DFUSEDOPT_WITH_CUDA). A CPU wheel of torch ships the c10/cuda headers
# but not their generated config header, which C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips (it holds
# export macros only). -Wno-attributes: pybind11's visibility notes on every bound class.
# (nvcc -v names its toolkit's root: TOP=...)
CUDA_INCLUDE="$("$NVCC" -v -x cu -E /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)/include"
mapfile -t TORCH_INCLUDES < <("$PY" -c \
  "from torch.utils.cpp_extension import include_paths as p; print(*p(), sep='\n')")
mapfile -t PY_INCLUDES < <("$PY" -c "import sysconfig as s; print(s.get_paths()['include'])")
CXX=${CXX:-c++}
for src in csrc/cuda/glue.cpp csrc/bindings.cpp; do
  if "$CXX" -std=c++20 -fsyntax-only -Wall -Wno-attributes -Werror -DFUSEDOPT_WITH_CUDA=1 \
      -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE -DTORCH_EXTENSION_NAME=_C -Icsrc \
      "${TORCH_INCLUDES[@]/#/-I}" "-I$CUDA_INCLUDE" "${PY_INCLUDES[@]/#/-I}" "$src"; then
    echo "compile_cuda: ok    $src (host, with FUSEDOPT_WITH_CUDA)"
  else
    echo "compile_cuda: FAIL  $src (host, with FUSEDOPT_WITH_CUDA)"
    status=1
  fi
done
exit $status

"""Why a C++ exception crashes the process on the GPU machine (scripts/gpu_check.sh, part diag).

On the first GPU runs (H200, 2026-11-27) every C++ exception thrown by fusedopt._C ended the
process with SIGSEGV, while the same sources raise cleanly here with g++ 12 and the same torch.
Each case below runs in its own subprocess, so one crash hides nothing:
1. The bad-input cases against each fusedopt._C named by --ext (a tree whose fusedopt/ holds one:
   gpu_check.sh passes the one built there by setup.py and, with FUSEDOPT_PREBUILT, the one
   carried from the CPU machine). Each must raise RuntimeError with the numbers in its message.
2. A minimal extension that throws a TORCH_CHECK (one with a number in its message: the case
   that crashed, Note [shared libstdc++] in setup.py), throws a std::runtime_error, and throws and
   catches inside C++, built two ways: torch's JIT (load_inline: ninja, torch's flags only) and
   setuptools (BuildExtension: Python's sysconfig flags too, the way setup.py builds fusedopt).
   Which of them crash separates "every throw", "setuptools' flags" and "fusedopt's code".
3. The toolchain: compilers, sysconfig's CC/CXX/LDSHARED/CFLAGS, and for each extension the
   compiler that built it (.comment), its NEEDED libraries and any unwinder linked into it.
4. For the first crash: a native backtrace (gdb where present; else a preloaded SIGSEGV handler,
   symbolised with addr2line).
Prints plain text; exits 1 if a fusedopt._C case crashed or did not raise its message (those
verdicts are in capitals; the minimal extension's, only diagnostics, in lower case).

usage: python scripts/gpu/gpu_throw.py [--ext TREE ...] [--no-cuda] [--no-minimal]
"""
import argparse
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

BAD_INPUT = {
    "Bucket: a state of another shape than its param (CPU)": ("params[0] has [5]", """
ps = [torch.zeros(5) for _ in range(2)]
_C.Bucket(ps, [[torch.zeros(4) for p in ps]], [torch.zeros(()) for _ in ps], [0, 0], [])"""),
    "Bucket: a state of another shape than its param (CUDA)": ("params[0] has [5]", """
ps = [torch.zeros(5, device='cuda') for _ in range(2)]
_C.Bucket(ps, [[torch.zeros(4, device='cuda') for p in ps]],
          [torch.zeros((), device='cuda') for _ in ps], [0, 0], [])"""),
    "cuda_step: hp of the wrong dtype": ("of shape [1, 5]", """
p = [torch.nn.Parameter(torch.zeros(5, device='cuda'))]; p[0].grad = torch.ones(5, device='cuda')
b = _C.Bucket(p, [[torch.zeros(5, device='cuda')], [torch.zeros(5, device='cuda')]],
              [torch.zeros((), device='cuda')], [0], [])
_C.cuda_step(b, torch.zeros(1, 5, device='cuda'), 0, 4, None, None, None)"""),
}
LOAD_C = "import sys, torch; sys.path.insert(0, {tree!r}); from fusedopt import _C\n"

MINIMAL_SRC = r"""
#include <torch/extension.h>
#include <stdexcept>
void torch_check() { TORCH_CHECK(false, "a TORCH_CHECK from a minimal extension"); }
void std_throw() { throw std::runtime_error("a std::runtime_error from a minimal extension"); }
void number() { TORCH_CHECK(false, "a TORCH_CHECK with the number ", int64_t{5}); }
std::string caught_inside() {
  try { TORCH_CHECK(false, "thrown"); } catch (const std::exception&) { return "caught"; }
  return "not thrown";
}
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("torch_check", &torch_check);
  m.def("std_throw", &std_throw);
  m.def("caught_inside", &caught_inside);
  m.def("number", &number);
}
"""
SETUP_PY = """
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension
setup(name="{name}", ext_modules=[CppExtension("{name}", ["throw.cpp"],
      extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])],
      cmdclass={{"build_ext": BuildExtension}})
"""
JIT_BUILD = """
import torch.utils.cpp_extension as ce
ce.load_inline("{name}", cpp_sources=[open("throw.cpp").read()], build_directory=".",
               extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=True)
"""
SEGV_HANDLER = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void on_signal(int sig) {
  void* frames[64];
  int n = backtrace(frames, 64);
  char line[1024];
  for (int i = 0; i < n; i++) {
    Dl_info info;
    if (!dladdr(frames[i], &info) || !info.dli_fname) continue;
    int len = snprintf(line, sizeof line, "frame %d %s 0x%lx %s\n", i, info.dli_fname,
                       (unsigned long)((char*)frames[i] - (char*)info.dli_fbase),
                       info.dli_sname ? info.dli_sname : "?");
    write(2, line, len);
  }
  signal(sig, SIG_DFL);
  raise(sig);
}
__attribute__((constructor)) static void install(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESETHAND;
  sigaction(SIGSEGV, &sa, 0);
  sigaction(SIGABRT, &sa, 0);
  sigaction(SIGBUS, &sa, 0);
}
"""


def run(code, env=None, timeout=180, cwd=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def verdict(done, expect="Error"):
    last = (done.stderr.strip().splitlines() or done.stdout.strip().splitlines()
            or ["(no output)"])[-1][:200]
    if done.returncode < 0:
        return "CRASHED", f"signal {-done.returncode}: {last}"
    if done.returncode == 1 and expect in last:
        return "raised", last
    if done.returncode == 1 and "Error" in last:
        return "RAISED WRONG MESSAGE", last
    if done.returncode == 0 and expect == "":
        return "ok", done.stdout.strip()[-200:]
    return "NOT RAISED", f"exit {done.returncode}: {last}"


def sh(cmd):
    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True).stdout.strip()


def describe_so(path):
    comment = sh(f"readelf -p .comment {path} 2>/dev/null | sed -n 's/.*\\] *//p' | sort -u")
    needed = sh(f"readelf -d {path} 2>/dev/null | sed -n 's/.*Shared library: \\[\\(.*\\)\\]/\\1/p'")
    unwind = sh(f"nm {path} 2>/dev/null | grep -c ' [Tt] _Unwind_'") or "?"
    print(f"  {path}\n    built by: {' | '.join(comment.splitlines()) or '?'}\n"
          f"    NEEDED: {' '.join(needed.split())}\n"
          f"    _Unwind_* functions defined in it (a private unwinder if > 0): {unwind}")


def toolchain():
    print("toolchain:")
    for cc in ("c++", "g++", "gcc", "cc"):
        if shutil.which(cc):
            out = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
            print(f"  {cc} -> {os.path.realpath(shutil.which(cc))}: "
                  f"{out.splitlines()[0] if out else '?'}")
    for key in ("CC", "CXX", "LDSHARED", "CFLAGS", "LDFLAGS", "CCSHARED"):
        print(f"  sysconfig {key} = {sysconfig.get_config_var(key)}")
    print(f"  python {sys.executable} ({sys.version.split()[0]}), "
          f"prefix {sys.base_prefix}")
    libs = sh(f"{sys.executable} -c \"import torch; print(open('/proc/self/maps').read())\" "
              "| awk '{print $6}' | grep -E 'libstdc|libgcc_s|libgomp' | sort -u")
    print(f"  loaded with torch: {' '.join(libs.split())}")


def native_backtrace(code, workdir):
    """The crashing case once more, with a native stack."""
    if shutil.which("gdb"):
        done = subprocess.run(["gdb", "-q", "-batch", "-ex", "run", "-ex", "bt 40", "--args",
                               sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300)
        lines = [line for line in done.stdout.splitlines() if line.startswith("#")]
        print("  gdb backtrace:\n    " + "\n    ".join(lines[:40] or ["(none)"]))
        return
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        print("  no gdb and no C compiler: no native backtrace")
        return
    src, lib = os.path.join(workdir, "segv.c"), os.path.join(workdir, "segv.so")
    with open(src, "w") as f:
        f.write(SEGV_HANDLER)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", lib, src], check=True)
    done = run(code, env=dict(os.environ, LD_PRELOAD=lib), timeout=300)
    print("  native backtrace (preloaded handler; file, offset, addr2line):")
    for line in done.stderr.splitlines():
        if not line.startswith("frame "):
            continue
        _, i, path, offset, sym = line.split(" ", 4)
        where = sh(f"addr2line -f -C -e {path} {offset} 2>/dev/null | head -n 2 | tr '\\n' ' '")
        print(f"    #{i} {os.path.basename(path)} +{offset} {sym} {where}")


def fusedopt_cases(trees, cuda, workdir):
    bad, first_crash = 0, None
    for tree in trees:
        so = sh(f"ls {tree}/fusedopt/_C*.so 2>/dev/null | head -n 1")
        print(f"fusedopt._C from {tree}:")
        if not so:
            print("  no fusedopt/_C*.so there: skipped")
            continue
        describe_so(so)
        for what, (expect, case) in BAD_INPUT.items():
            if not cuda and "cuda" in case:
                continue
            code = LOAD_C.format(tree=tree) + case
            status, detail = verdict(run(code), expect)
            print(f"  {what}: {status}: {detail}", flush=True)
            if status != "raised":
                bad += 1
                first_crash = first_crash or (status == "CRASHED" and code)
    if first_crash:
        native_backtrace(first_crash, workdir)
    return bad


def minimal_cases(workdir):
    """The minimal extension, built by the JIT and by setuptools in parallel (about 40 s)."""
    builds = {}
    for how, script in (("jit", JIT_BUILD), ("setuptools", None)):
        d = os.path.join(workdir, how)
        os.makedirs(d)
        name = f"fusedopt_throw_{how}"
        with open(os.path.join(d, "throw.cpp"), "w") as f:
            f.write(MINIMAL_SRC)
        if how == "setuptools":
            with open(os.path.join(d, "setup.py"), "w") as f:
                f.write(SETUP_PY.format(name=name))
            cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
        else:
            cmd = [sys.executable, "-c", script.format(name=name)]
        log = open(os.path.join(d, "build.log"), "w")
        builds[how] = (d, name, subprocess.Popen(cmd, cwd=d, stdout=log, stderr=subprocess.STDOUT))
    for how, (d, name, proc) in builds.items():
        rc = proc.wait(timeout=400)
        print(f"a minimal extension built by {how} (rc {rc}):")
        links = sh(f"grep -E '(c\\+\\+|g\\+\\+|gcc|clang).* -shared' {d}/build.log | tail -n 1")
        print(f"  link: {links[:600] or '(not in the log)'}")
        if rc != 0:
            print("  " + sh(f"tail -n 5 {d}/build.log").replace("\n", "\n  "))
            continue
        describe_so(sh(f"ls {d}/{name}*.so | head -n 1"))
        for fn, expect in (("caught_inside", ""), ("std_throw", "Error"), ("torch_check", "Error"),
                           ("number", "number 5")):
            code = f"import sys, torch; sys.path.insert(0, {d!r}); import {name}; print({name}.{fn}())"
            status, detail = verdict(run(code), expect)   # lower case: not counted
            print(f"  {fn}: {status.lower()}: {detail}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ext", action="append", default=[],
                    help="a tree whose fusedopt/ holds a built _C (repeatable; default: this one)")
    ap.add_argument("--no-cuda", action="store_true", help="only the CPU cases")
    ap.add_argument("--no-minimal", action="store_true", help="skip the minimal extension")
    args = ap.parse_args()
    trees = [os.path.abspath(t) for t in args.ext] or [
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
    toolchain()
    with tempfile.TemporaryDirectory() as workdir:
        bad = fusedopt_cases(trees, not args.no_cuda, workdir)
        if not args.no_minimal:
            minimal_cases(workdir)
    print(f"fusedopt._C cases that crashed or raised nothing: {bad}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

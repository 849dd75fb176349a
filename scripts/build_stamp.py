"""Is this checkout's editable install, with its compiled fusedopt._C, current for this Python?
scripts/setup.sh asks before it reinstalls, so a second set-up on an unchanged tree skips the
C++ build (2-3 min on 2 cores) and takes seconds (5 s measured).

The stamp (build/setup-stamp-<python>.json, build/ is git-ignored) records what the build read:
the bytes of every file under csrc/, setup.py and pyproject.toml, the torch version and its CUDA
version, the build flags of setup.py that change what it builds (FLAGS) and whether nvcc is
there. The Python sources are not in it: an editable install reads them from the tree.
"current" also needs ``import fusedopt`` to come from this tree and, unless FUSEDOPT_NO_EXT is
set, its fusedopt._C to load.

usage: python scripts/build_stamp.py check   exit 0 if current; else exit 1 and print why
       python scripts/build_stamp.py write   after a successful install
       python scripts/build_stamp.py plan    one line: what the build compiles, how long it takes
"""
import hashlib
import json
import os
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what changes the build's output (FUSEDOPT_REQUIRE_EXT only makes a failure fatal: a build that
# failed leaves no loadable _C, which the check catches)
FLAGS = ("FUSEDOPT_NO_EXT", "FUSEDOPT_NO_CUDA", "FUSEDOPT_REQUIRE_CUDA", "FUSEDOPT_CUDA_ARCHS")


def stamp_path(root=ROOT):
    python = hashlib.sha256(sys.prefix.encode()).hexdigest()[:12]
    return os.path.join(root, "build", f"setup-stamp-{python}.json")


def sources(root=ROOT):
    out = [os.path.join(root, "setup.py"), os.path.join(root, "pyproject.toml")]
    for folder, dirs, files in os.walk(os.path.join(root, "csrc")):
        dirs.sort()
        out += [os.path.join(folder, f) for f in sorted(files)]
    return out


def inputs(root=ROOT):
    import torch
    digest = hashlib.sha256()
    for path in sources(root):
        digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            digest.update(f.read())
    nvcc = shutil.which("nvcc") or (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                                    if os.environ.get("CUDA_HOME") else None)
    return {"sources": digest.hexdigest(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "flags": {k: os.environ.get(k, "") for k in FLAGS},
            "nvcc": nvcc if nvcc and os.path.exists(nvcc) else None, "python": sys.prefix}


def write(root=ROOT):
    os.makedirs(os.path.dirname(stamp_path(root)), exist_ok=True)
    with open(stamp_path(root), "w") as f:
        json.dump(inputs(root), f, indent=1)


def changed(root=ROOT):
    """None when the stamp matches what a build would read now, else what differs."""
    try:
        with open(stamp_path(root)) as f:
            recorded = json.load(f)
    except (OSError, ValueError):
        return "no record of a build for this Python"
    now = inputs(root)
    keys = [k for k in now if now[k] != recorded.get(k)]
    return "changed since the last build: " + ", ".join(keys) if keys else None


def why_stale():
    """None when the install is current, else the reason."""
    reason = changed()
    if reason:
        return reason
    try:
        import fusedopt
        from fusedopt import _ext
    except Exception as exc:
        return f"import fusedopt failed ({type(exc).__name__}: {exc})"
    if os.path.dirname(os.path.abspath(fusedopt.__file__)) != os.path.join(ROOT, "fusedopt"):
        return f"import fusedopt finds {fusedopt.__file__}, not this checkout"
    if _ext.C is None and not os.environ.get("FUSEDOPT_NO_EXT"):
        return f"fusedopt._C does not load ({_ext.LOAD_ERROR})"
    return None


def plan():
    import torch
    now = inputs()
    if now["flags"]["FUSEDOPT_NO_EXT"]:
        return "installing fusedopt without its extension (FUSEDOPT_NO_EXT): a few seconds"
    cuda = (now["torch_cuda"] is not None and now["nvcc"] is not None
            and not now["flags"]["FUSEDOPT_NO_CUDA"])
    jobs = os.environ.get("MAX_JOBS") or "all cores"
    # measured on the 2-core EPYC VM, torch 2.13, MAX_JOBS=2: 163 and 176 s with the machine
    # shared (load 5), 95 s of compiler CPU time
    took = "2-3 min on 2 cores" + (", and the CUDA kernels several minutes more" if cuda else "")
    what = "C++ CPU kernels" + (" and CUDA kernels" if cuda else "")
    return (f"compiling fusedopt._C ({what}) against torch {torch.__version__}, MAX_JOBS={jobs}: "
            f"{took}; once: later set-ups skip it while csrc/, setup.py and torch stay the same")


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "check":
        reason = why_stale()
        if reason:
            print(reason)
        return 1 if reason else 0
    if what == "write":
        write()
        return 0
    if what == "plan":
        print(plan())
        return 0
    print("usage: python scripts/build_stamp.py check|write|plan", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

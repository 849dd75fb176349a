"""What a newcomer meets first (issue 17): error texts that name what is wrong and where, a
second set-up that changes nothing, and `pip install .` with pip's build isolation (no torch at
build time: the cpu backend builds its extension on first use)."""
import importlib.util
import os
import shutil
import subprocess
import sys
import time
import zipfile

import pytest
import torch

import fusedopt
from fusedopt import backends
from helpers import CPU_BACKENDS

# every backend that steps CPU tensors here (triton: under TRITON_INTERPRET=1)
STEP_BACKENDS = CPU_BACKENDS + (["triton"] if "triton" in fusedopt.available_backends() else [])


def _param(n):
    p = torch.nn.Parameter(torch.randn(n))
    p.grad = torch.randn(n)
    return p


@pytest.mark.parametrize("value,exc,match", [
    ("bogus", ValueError, r"Invalid backend: 'bogus' \(from the environment variable "
                          r"FUSEDOPT_BACKEND\); expected 'auto' or one of"),
    *[(b, RuntimeError, rf"backend='{b}' \(from the environment variable FUSEDOPT_BACKEND\) is "
                        "not available")
      for b in ("cuda", "triton", "cpu") if b not in fusedopt.available_backends()],
])
def test_backend_from_environment_names_the_variable(monkeypatch, value, exc, match):
    monkeypatch.setenv("FUSEDOPT_BACKEND", value)
    p = _param(3)
    before = p.detach().clone()
    opt = fusedopt.FusedAdamW([p])
    with pytest.raises(exc, match=match):
        opt.step()
    assert torch.equal(p.detach(), before) and not opt.state


def test_backend_argument_error_unchanged():
    with pytest.raises(ValueError, match=r"^Invalid backend: 'bogus'; expected"):
        backends.check_backend("bogus")


def test_unknown_type_error_prints_without_quotes():
    with pytest.raises(KeyError) as info:
        fusedopt.build_optim_wrapper(torch.nn.Linear(2, 2), dict(
            type="OptimWrapper", optimizer=dict(type="FusedAdamm", lr=0.1)))
    text = str(info.value)
    assert text.startswith("optim_wrapper.optimizer.type: FusedAdamm is not in the"), text
    assert "Did you mean: 'FusedAdam'" in text and not text.endswith(('"', "'"))
    assert isinstance(info.value, TypeError)            # what mmengine's constructor raises


def _mismatch(kind, n):
    """A grad that torch lets through (``.grad.data`` skips autograd's check) but that does not
    fit a parameter of ``n`` fp32 elements."""
    return torch.randn(n + 1) if kind == "shape" else torch.randn(n, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["shape", "dtype"])
@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_grad_mismatch_on_first_step_names_group_and_index(backend, kind):
    a, b, c = _param(3), _param(4), _param(2)
    opt = fusedopt.FusedAdamW([{"params": [a]}, {"params": [c, b], "lr": 1e-2}], backend=backend)
    b.grad.data = _mismatch(kind, 4)
    before = [p.detach().clone() for p in (a, b, c)]
    with pytest.raises(RuntimeError, match=r"^grad of param_groups\[1\]\['params'\]\[1\]: shape"):
        opt.step()
    assert all(torch.equal(p.detach(), x) for p, x in zip((a, b, c), before))


@pytest.mark.parametrize("kind", ["shape", "dtype"])
@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_grad_mismatch_names_the_named_parameter(backend, kind):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    opt = fusedopt.FusedAdamW(model.named_parameters(), backend=backend)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    model[1].bias.grad.data = _mismatch(kind, 2)
    with pytest.raises(RuntimeError, match=r"grad of param_groups\[0\]\['params'\]\[3\] \('1.bias'\)"):
        opt.step()


@pytest.mark.skipif("triton" not in fusedopt.available_backends(), reason="triton unavailable")
@pytest.mark.parametrize("kind", ["shape", "dtype"])
def test_triton_grad_mismatch_after_first_step_names_the_parameter(kind):
    a, b = _param(3), _param(4)
    opt = fusedopt.FusedAdamW([{"params": [a]}, {"params": [b]}], backend="triton")
    opt.step()
    b.grad.data = _mismatch(kind, 4)
    with pytest.raises(RuntimeError, match=r"^grad of param_groups\[1\]\['params'\]\[0\]: shape"):
        opt.step()


# ---- set-up: a second run on an unchanged tree changes nothing ----------------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _build_stamp():
    spec = importlib.util.spec_from_file_location(
        "build_stamp", os.path.join(ROOT, "scripts", "build_stamp.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_build_stamp_follows_sources_torch_and_flags(tmp_path, monkeypatch):
    stamp = _build_stamp()
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    shutil.copytree(os.path.join(ROOT, "csrc"), tmp_path / "csrc")
    for flag in stamp.FLAGS:
        monkeypatch.delenv(flag, raising=False)
    assert stamp.changed(str(tmp_path)) == "no record of a build for this Python"
    stamp.write(str(tmp_path))
    assert stamp.changed(str(tmp_path)) is None
    header = tmp_path / "csrc" / "cpu" / "adam.h"
    original = header.read_bytes()
    header.write_bytes(original + b"\n")
    assert stamp.changed(str(tmp_path)) == "changed since the last build: sources"
    header.write_bytes(original)
    assert stamp.changed(str(tmp_path)) is None
    monkeypatch.setenv("FUSEDOPT_NO_CUDA", "1")
    assert stamp.changed(str(tmp_path)) == "changed since the last build: flags"
    monkeypatch.delenv("FUSEDOPT_NO_CUDA")
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert stamp.changed(str(tmp_path)) == "changed since the last build: torch"


def test_second_setup_changes_nothing_and_takes_seconds():
    """scripts/setup.sh on a tree whose build is current: no pip, no compiler, under 30 s (the
    issue's bound; 5 s measured on the 2-core VM). Runs where this Python's install is current,
    as after scripts/setup.sh (which CI runs first); it never builds."""
    env = dict(os.environ, PYTHON=sys.executable)
    check = subprocess.run([sys.executable, "scripts/build_stamp.py", "check"], cwd=ROOT, env=env,
                           capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip(f"this Python's install is not current ({check.stdout.strip()}): "
                    "run scripts/setup.sh first")
    so = [os.path.join(ROOT, "fusedopt", f) for f in os.listdir(os.path.join(ROOT, "fusedopt"))
          if f.startswith("_C.")]
    before = {f: os.stat(f).st_mtime_ns for f in so}
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                            text=True).stdout
    start = time.monotonic()
    res = subprocess.run(["bash", "scripts/setup.sh"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    took = time.monotonic() - start
    assert res.returncode == 0, res.stdout + res.stderr
    assert "setup: fusedopt._C is current" in res.stdout and "installing" not in res.stdout
    assert took < 30, f"second set-up took {took:.0f} s"
    assert {f: os.stat(f).st_mtime_ns for f in so} == before
    assert subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                          text=True).stdout == status


# ---- pip install . with build isolation: no torch at build time ----------------------------------
_NO_TORCH_SETUP = """
import sys
sys.modules["torch"] = None          # what pip's isolated build environment has: no torch
import setuptools
setuptools.setup = lambda **kw: print("ext_modules:", kw["ext_modules"], kw["package_dir"])
exec(compile(open("setup.py").read(), "setup.py", "exec"))
"""


def test_setup_without_torch_builds_the_package_without_the_extension():
    env = {k: v for k, v in os.environ.items() if k != "FUSEDOPT_REQUIRE_EXT"}
    res = subprocess.run([sys.executable, "-c", _NO_TORCH_SETUP], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "ext_modules: [] " in res.stdout and "'fusedopt.csrc': 'csrc'" in res.stdout
    assert "fusedopt: building without fusedopt._C: torch is not importable" in res.stderr
    assert "compiles it on first use" in res.stderr and "--no-build-isolation" in res.stderr
    res = subprocess.run([sys.executable, "-c", _NO_TORCH_SETUP], cwd=ROOT, capture_output=True,
                         text=True, env=dict(env, FUSEDOPT_REQUIRE_EXT="1"))
    assert res.returncode != 0
    assert "cannot build fusedopt._C: torch is not importable" in res.stderr


def test_wheel_carries_the_sources_for_the_first_use_build(tmp_path):
    tree = tmp_path / "tree"      # a copy: setuptools leaves build/ and egg-info where it builds
    tree.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), tree / name)
    for name in ("fusedopt", "kernels", "csrc"):
        shutil.copytree(os.path.join(ROOT, name), tree / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    env = dict(os.environ, FUSEDOPT_NO_EXT="1")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                          "--no-build-isolation", "-w", str(tmp_path), str(tree)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = tmp_path.glob("fusedopt-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    csrc = {os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
            for d, _, files in os.walk(os.path.join(ROOT, "csrc")) for f in files}
    assert {"fusedopt/" + n for n in csrc} <= names, sorted({"fusedopt/" + n for n in csrc} - names)
    assert not any(n.endswith((".so", ".pyd")) for n in names)


@pytest.fixture
def no_installed_extension(monkeypatch):
    """fusedopt as a build-isolated `pip install .` leaves it: no fusedopt._C. The first-use
    build is replaced by one that hands out the extension this process already has (the same
    sources), counting its calls; the real build is checked by hand (77 s, see the report)."""
    from fusedopt import _ext
    from fusedopt.backends import cpu
    if cpu.unavailable_reason() is not None:
        pytest.skip(f"no CPU extension here: {cpu.unavailable_reason()}")
    real = cpu._extension()
    calls = []

    def jit_build(name, *, cuda, what):
        calls.append((name, cuda))
        return real
    monkeypatch.setattr(_ext, "C", None)
    monkeypatch.setattr(_ext, "LOAD_ERROR", "ImportError: cannot import name '_C'")
    monkeypatch.setattr(_ext, "jit_build", jit_build)
    monkeypatch.setattr(cpu, "_jit", {})
    monkeypatch.delenv("FUSEDOPT_NO_EXT", raising=False)
    return calls


def test_cpu_backend_builds_its_extension_on_first_use(no_installed_extension):
    calls = no_installed_extension
    assert "cpu" in fusedopt.available_backends()
    p = _param(5)
    q = torch.nn.Parameter(p.detach().clone())
    q.grad = p.grad.clone()
    ours, ref = fusedopt.FusedAdamW([p], backend="cpu"), torch.optim.AdamW([q], foreach=False)
    for _ in range(3):
        ours.step()
        ref.step()
    torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-6)
    assert calls == [("fusedopt_cpu_jit", False)]           # once per process


def test_cpu_backend_first_use_build_off_or_failing_says_why(no_installed_extension, monkeypatch):
    from fusedopt import _ext
    from fusedopt.backends import cpu
    monkeypatch.setenv("FUSEDOPT_NO_EXT", "1")
    reason = cpu.unavailable_reason()
    assert "cannot import name '_C'" in reason and "FUSEDOPT_NO_EXT is set" in reason
    assert no_installed_extension == [] and "cpu" not in fusedopt.available_backends()
    monkeypatch.delenv("FUSEDOPT_NO_EXT")
    monkeypatch.setattr(cpu, "_jit", {})

    def failing(name, *, cuda, what):
        raise RuntimeError("Ninja is required to load C++ extensions (pip install ninja to get it)")
    monkeypatch.setattr(_ext, "jit_build", failing)
    with pytest.raises(RuntimeError, match=r"backend='cpu' is not available: .*JIT build failed: "
                                           r"RuntimeError: Ninja is required"):
        fusedopt.FusedAdamW([_param(2)], backend="cpu")

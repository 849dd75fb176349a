"""The examples run end to end (the mmengine one only where mmengine is installed)."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                         capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok"), out.stdout[-3000:]
    return out.stdout


def test_train_plain():
    run("train_plain.py", "--epochs", "3")


def test_train_plain_amp_bf16():
    run("train_plain.py", "--epochs", "2", "--amp")


mm = pytest.mark.skipif(importlib.util.find_spec("mmengine") is None,
                        reason="mmengine (test extra) is not installed")


@mm
def test_train_mmengine_scoped_types(tmp_path):
    out = run("train_mmengine.py", "--epochs", "2", "--work-dir", str(tmp_path))
    assert "grad_norm logged 16 times" in out     # 32 iterations / accumulative_counts=2
    assert (tmp_path / "epoch_2.pth").exists()


@mm
def test_train_mmengine_default_scope_fusedopt(tmp_path):
    out = run("train_mmengine.py", "--epochs", "2", "--default-scope", "fusedopt",
              "--work-dir", str(tmp_path))
    assert "fusedopt.schedulers" in out      # plain 'LinearLR' resolved to fusedopt's

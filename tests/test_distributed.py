"""DDP and FSDP2 (fully_shard, DTensor params) with fusedopt on CPU: gloo, 2 processes (issue #8).

fusedopt under a wrapping must give what torch.optim gives under the same wrapping; the clipped
norm must be the global one across shards; a torch.distributed.checkpoint round trip must work.
"""
import os
import socket
import subprocess
import sys

import pytest
import torch

from helpers import CPU_BACKENDS
from tolerances import assert_close

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or
                                not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_workers(tmp_path, mode, backend):
    port, out = free_port(), str(tmp_path / "result.pt")
    env = dict(os.environ, BACKEND=backend, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, WORKER, mode, str(r), "2", port, out], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    logs = [p.communicate(timeout=240)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(logs)[-4000:]
    return torch.load(out, weights_only=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_matches_torch_under_the_same_wrapping(tmp_path, mode, backend):
    result = run_workers(tmp_path, mode, backend)
    assert_close(result["ours_norms"], result["torch_norms"], f"{mode}: clipped global norms")
    for i, (a, b) in enumerate(zip(result["ours"], result["torch"])):
        assert_close(a, b, f"{mode}: param {i}")
    for i, (a, b) in enumerate(zip(result["ours_exp_avg"], result["torch_exp_avg"])):
        assert_close(a, b, f"{mode}: exp_avg {i}")
    for i, (a, b) in enumerate(zip(result["dcp_exp_avg"], result["ours_exp_avg"])):
        assert torch.equal(a, b), f"{mode}: exp_avg {i} after a DCP round trip"
    assert result["dcp_step"] == [6.0] * len(result["dcp_step"])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_master_weights_on_dtensor_shards(tmp_path, backend):
    """FSDP2 over bf16 params with master_weights=True: the masters are DTensors sharded like
    their params, the step matches the oracle on the gathered grads (torch's AdamW on fp32
    copies, fp32 states), each param is its master's rounding, and a DCP round trip gives back
    the fp32 masters bit for bit."""
    result = run_workers(tmp_path, "fsdp2-master", backend)
    assert set(result["sharded"]) == {"DTensor"}
    for i, (ours, theirs) in enumerate(result["norms"]):
        assert_close(ours, theirs, f"step {i} norm")
    for i, (p, m, want) in enumerate(zip(result["params"], result["extra"], result["oracle"])):
        assert m.dtype == torch.float32 and torch.equal(p, m.bfloat16()), f"param {i}"
        assert_close(m, want, f"master {i}")
    for i, (a, b) in enumerate(zip(result["exp_avg"], result["oracle_exp_avg"])):
        assert a.dtype == torch.float32
        assert_close(a, b, f"exp_avg {i}")
    for i, (a, b) in enumerate(zip(result["dcp_extra"], result["extra"])):
        assert a.dtype == torch.float32 and torch.equal(a, b), f"master {i} after DCP"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_kahan_on_dtensor_shards(tmp_path, backend):
    """FSDP2 over bf16 params with kahan_sum=True: the compensations are DTensors sharded like
    their params; param + compensation tracks the fp32 oracle to what bf16 states can cost (each
    of the 5 updates of size <= lr = 0.05 off by at most 2^-7 of it: m one bf16 ulp, sqrt(v)
    half of one) plus a bf16 ulp of the weights, and a DCP round trip gives back compensations
    and states bit for bit."""
    result = run_workers(tmp_path, "fsdp2-kahan", backend)
    assert set(result["sharded"]) == {"DTensor"}
    for i, (p, c, want) in enumerate(zip(result["params"], result["extra"], result["oracle"])):
        assert c.dtype == torch.bfloat16, f"compensation {i}"
        ours = p.float() + c.float()
        excess = (ours - want).abs() - (5 * 0.05 * 2 ** -7 + 2 ** -8 * want.abs())
        assert (excess <= 0).all(), f"param {i}: {excess.max().item():.3g} beyond a bf16 ulp"
    for i, (a, b) in enumerate(zip(result["dcp_extra"], result["extra"])):
        assert torch.equal(a, b), f"compensation {i} after DCP"
    for i, (a, b) in enumerate(zip(result["dcp_exp_avg"], result["exp_avg"])):
        assert a.dtype == torch.bfloat16 and torch.equal(a, b), f"exp_avg {i} after DCP"

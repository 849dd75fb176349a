"""Worker for tests/test_distributed.py: run as `python dist_worker.py MODE RANK WORLD PORT OUT`.

Trains the same tiny model under DDP or FSDP2 (fully_shard) with fusedopt and with torch.optim,
gloo on CPU, clipping the global grad norm, and writes what the test compares to OUT (a .pt file).
MODE fsdp2-master / fsdp2-kahan: bf16 params with master_weights=True / kahan_sum=True
(``low_precision`` below).
"""
import os
import sys
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

import fusedopt


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 6))


def wrap(mode, m):
    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(m)
    from torch.distributed.fsdp import fully_shard
    for layer in m:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    return fully_shard(m)


def train(mode, opt_cls, rank, steps=6, **kw):
    m = wrap(mode, model())
    opt = opt_cls(m.parameters(), lr=0.05, weight_decay=0.1, **kw)
    norms = []
    for step in range(steps):
        g = torch.Generator().manual_seed(100 * step + rank)    # each rank its own batch
        x, y = torch.randn(5, 8, generator=g), torch.randn(5, 6, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x), y).backward()
        if opt_cls is torch.optim.AdamW:
            norms.append(torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5).full_tensor()
                         if mode == "fsdp2" else torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5))
        else:
            norms.append(fusedopt.clip_grad_norm_(m.parameters(), 0.5))
        opt.step()
    return m, opt, torch.stack([n.float() for n in norms])


def full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


LOW_PRECISION = {"fsdp2-master": dict(master_weights=True), "fsdp2-kahan": dict(kahan_sum=True)}
EXTRA = {"fsdp2-master": "master_param", "fsdp2-kahan": "compensation"}


def low_precision(mode, rank, backend, out):
    """bf16 params sharded by FSDP2 with masters (fp32 states) or compensations (bf16 states,
    stochastically rounded): each step's reduced grads, gathered, also feed torch's for-loop
    AdamW over full fp32 copies (the oracle of tests/test_master_weights.py)."""
    options, extra = LOW_PRECISION[mode], EXTRA[mode]
    m = wrap("fsdp2", model().to(torch.bfloat16))
    opt = fusedopt.FusedAdamW(m.parameters(), lr=0.05, weight_decay=0.1, backend=backend,
                              **options)
    twins = [torch.nn.Parameter(full(p).detach().float()) for p in m.parameters()]
    oracle = torch.optim.AdamW(twins, lr=0.05, weight_decay=0.1, foreach=False)
    norms = []
    for step in range(5):
        g = torch.Generator().manual_seed(100 * step + rank)
        x, y = torch.randn(5, 8, generator=g), torch.randn(5, 6, generator=g)
        opt.zero_grad()
        torch.nn.functional.mse_loss(m(x.bfloat16()).float(), y).backward()
        for p, t in zip(m.parameters(), twins):
            t.grad = full(p.grad).float()
        # max_norm above the norm: the coefficient is exactly 1, the norm is reduced over shards
        norms.append((fusedopt.clip_grad_norm_(m.parameters(), 100.0),
                      torch.nn.utils.clip_grad_norm_(twins, 100.0, foreach=False)))
        opt.step()
        oracle.step()
    params = list(m.parameters())
    result = {
        "norms": [(a.float(), b.float()) for a, b in norms],
        "params": [full(p).detach().clone() for p in params],
        "extra": [full(opt.state[p][extra]).clone() for p in params],
        "exp_avg": [full(opt.state[p]["exp_avg"]).clone() for p in params],
        "sharded": [type(opt.state[p][extra]).__name__ for p in params],
        "oracle": [t.detach().clone() for t in twins],
        "oracle_exp_avg": [oracle.state[t]["exp_avg"].clone() for t in twins],
    }
    ckpt = os.path.join(tempfile.gettempdir(), f"fusedopt-dcp-{mode}-{os.environ['MASTER_PORT']}")
    dcp.save({"optim": get_optimizer_state_dict(m, opt)}, checkpoint_id=ckpt)
    fresh_m = wrap("fsdp2", model().to(torch.bfloat16))
    fresh = fusedopt.FusedAdamW(fresh_m.parameters(), lr=0.05, weight_decay=0.1, backend=backend,
                                **options)
    loaded = {"optim": get_optimizer_state_dict(fresh_m, fresh)}
    dcp.load(loaded, checkpoint_id=ckpt)
    set_optimizer_state_dict(fresh_m, fresh, loaded["optim"])
    result["dcp_extra"] = [full(fresh.state[p][extra]).clone() for p in fresh_m.parameters()]
    result["dcp_exp_avg"] = [full(fresh.state[p]["exp_avg"]).clone()
                             for p in fresh_m.parameters()]
    if rank == 0:
        torch.save(result, out)


def main(mode, rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if mode in LOW_PRECISION:
        low_precision(mode, rank, os.environ["BACKEND"], out)
        finish(rank)
    ours_m, ours_opt, ours_norms = train(mode, fusedopt.FusedAdamW, rank, backend=os.environ["BACKEND"])
    ref_m, ref_opt, ref_norms = train(mode, torch.optim.AdamW, rank, foreach=False)
    result = {
        "ours": [full(p).detach().clone() for p in ours_m.parameters()],
        "torch": [full(p).detach().clone() for p in ref_m.parameters()],
        "ours_norms": ours_norms, "torch_norms": ref_norms,
        "ours_exp_avg": [full(ours_opt.state[p]["exp_avg"]).clone() for p in ours_m.parameters()],
        "torch_exp_avg": [full(ref_opt.state[p]["exp_avg"]).clone() for p in ref_m.parameters()],
    }
    # torch.distributed.checkpoint round trip of the fusedopt optimizer into a fresh one
    ckpt = os.path.join(tempfile.gettempdir(), f"fusedopt-dcp-{mode}-{port}")
    dcp.save({"optim": get_optimizer_state_dict(ours_m, ours_opt)}, checkpoint_id=ckpt)
    fresh_m = wrap(mode, model())
    fresh_opt = fusedopt.FusedAdamW(fresh_m.parameters(), lr=0.05, weight_decay=0.1,
                                    backend=os.environ["BACKEND"])
    loaded = {"optim": get_optimizer_state_dict(fresh_m, fresh_opt)}
    dcp.load(loaded, checkpoint_id=ckpt)
    set_optimizer_state_dict(fresh_m, fresh_opt, loaded["optim"])
    result["dcp_exp_avg"] = [full(fresh_opt.state[p]["exp_avg"]).clone() for p in fresh_m.parameters()]
    result["dcp_step"] = [fresh_opt.state[p]["step"].item() for p in fresh_m.parameters()]
    if rank == 0:
        torch.save(result, out)
    finish(rank)


def finish(rank):
    """Ends the worker, saying on stderr how far it got: a failure's log then shows whether it
    died in fusedopt's part or in the process group's teardown.

    CI once saw a worker of the fsdp2 run die with "terminate called without an active exception"
    (a joinable std::thread destroyed; fusedopt starts no thread), after passing at every earlier
    landing; 67 runs of the pair here, two pairs at a time, never did. A barrier followed by the
    contexts' destruction is a known gloo shutdown race (pytorch/gloo#155), and the interpreter's
    teardown destroys c10d's objects again after destroy_process_group. os._exit after it skips
    that teardown; what this worker had to do is done and written by then."""
    print(f"rank {rank}: results written", file=sys.stderr, flush=True)
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank}: process group destroyed", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])

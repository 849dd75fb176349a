"""The small case scripts/gpu_check.sh runs under compute-sanitizer (memcheck, racecheck,
initcheck, synccheck): every CUDA kernel path of one backend, once, on a few tensors.

Covered: Adam, AdamW, AdamW+amsgrad, SGD without momentum, with momentum, with nesterov; Lion;
LARS with momentum (one group excluded from adaptation), with nesterov, without momentum; LAMB
(decoupled, with the global clip) and LAMB in L2 mode with trust_clip and always_adapt (both
stages of the two-stage kernels and their partial sums); fp32,
fp16, bf16, fp64, and fp32 master weights of fp16/bf16 params; each bucket mixing aligned and misaligned (odd storage offset) tensors with
empty and 1-element ones and one of two chunks (70,000 elements > 64 Ki); clip (2-norm) and
inf-norm before steps, a GradScaler-style scaled step and a found_inf step; the multi-dtype
norm and scale kernels. Prints one line per path; the sanitizer reports the errors.

usage: python scripts/sanitize_case.py [--backend cuda|triton] [--device cuda]
"""
import argparse

import torch

import fusedopt

NUMELS = [0, 1, 7, 4099, 70_000]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
CASES = [("Adam", fusedopt.FusedAdam, dict(weight_decay=0.1)),
         ("AdamW", fusedopt.FusedAdamW, {}),
         ("AdamW-amsgrad", fusedopt.FusedAdamW, dict(amsgrad=True)),
         ("SGD", fusedopt.FusedSGD, dict(lr=0.1)),
         ("SGD-momentum", fusedopt.FusedSGD, dict(lr=0.1, momentum=0.9, dampening=0.1)),
         ("SGD-nesterov", fusedopt.FusedSGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
         ("Lion", fusedopt.FusedLion, dict(weight_decay=0.1)),
         ("LARS-momentum", fusedopt.FusedLARS, dict(lr=0.1, momentum=0.9, weight_decay=1e-4)),
         ("LARS-nesterov", fusedopt.FusedLARS, dict(lr=0.1, momentum=0.9, nesterov=True)),
         ("LARS", fusedopt.FusedLARS, dict(lr=0.1, weight_decay=1e-3)),
         ("LAMB", fusedopt.FusedLAMB, {}),
         ("LAMB-l2-clip-adapt", fusedopt.FusedLAMB,
          dict(adam_w_mode=False, trust_clip=True, always_adapt=True, max_grad_norm=None))]
# fp32 master copies of fp16/bf16 params (Note [master copy]): one more state list per bucket
MASTER_CASES = [("AdamW-master", fusedopt.FusedAdamW, dict(master_weights=True)),
                ("SGD-momentum-master", fusedopt.FusedSGD,
                 dict(lr=0.1, momentum=0.9, master_weights=True)),
                ("Lion-master", fusedopt.FusedLion, dict(master_weights=True)),
                ("LARS-momentum-master", fusedopt.FusedLARS,
                 dict(lr=0.1, momentum=0.9, master_weights=True)),
                ("LAMB-master", fusedopt.FusedLAMB, dict(master_weights=True))]


def params(dtype, device):
    """Aligned ones (own allocations) and misaligned ones (views at element offset 1)."""
    out = [torch.nn.Parameter(torch.randn(n, dtype=dtype, device=device)) for n in NUMELS]
    flat = torch.randn(sum(NUMELS) + len(NUMELS) + 1, dtype=dtype, device=device)
    at = 1
    for n in NUMELS:
        out.append(torch.nn.Parameter(flat[at:at + n]))
        at += n + 1
    return out


def fill_grads(ps):
    for p in ps:
        p.grad = torch.randn_like(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    for dtype in DTYPES:
        low = dtype in (torch.float16, torch.bfloat16)
        for name, cls, kwargs in CASES + (MASTER_CASES if low else []):
            ps = params(dtype, device)
            second = {"params": ps[1::2], "lr": 1e-4}
            if cls is fusedopt.FusedLARS:            # local lr 1 for one group, as for norms
                second["lars_exclude"] = True
            opt = cls([{"params": ps[::2]}, second], backend=args.backend, **kwargs)
            fill_grads(ps)
            opt.step()                                   # state creation
            fill_grads(ps)
            opt.clip_grad_norm_(1.0)                     # 2-norm, coefficient inside the step
            opt.step()
            fill_grads(ps)
            opt.clip_grad_norm_(1.0, norm_type=float("inf"))
            opt.step()
            fill_grads(ps)
            opt.grad_scale = torch.full((), 4.0, device=device)
            opt.found_inf = torch.zeros((), device=device)
            opt.step()                                   # unscaled inside the update
            opt.found_inf = torch.ones((), device=device)
            opt.step()                                   # skipped on device
            del opt.grad_scale, opt.found_inf
            print(f"{args.backend} {name} {dtype}: ok", flush=True)
    mixed = [p for dtype in DTYPES for p in params(dtype, device)]   # no owner: eager clip
    fill_grads(mixed)
    for norm_type in (2.0, float("inf")):
        fusedopt.clip_grad_norm_(mixed, 1.0, norm_type=norm_type)
    if args.backend == "cuda":
        from fusedopt import backends
        backends._module("cuda")._extension().cuda_tensors_scale_(
            [p.grad for p in mixed], torch.full((), 0.5, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"{args.backend} mixed-dtype norms and scale: ok", flush=True)


if __name__ == "__main__":
    main()

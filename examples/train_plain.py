"""Train a tiny CNN with fusedopt and plain PyTorch (no mmengine): an mmengine-style
optim_wrapper config (FusedAdamW, paramwise_cfg, norm clipping fused into the step, gradient
accumulation) and param_scheduler config (warm-up + cosine). Runs in seconds on a CPU.

    python examples/train_plain.py [--epochs 6] [--amp]
"""
import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fusedopt  # noqa: E402
from _toy import TinyCNN, synthetic_dataset  # noqa: E402

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='FusedAdamW', lr=5e-2, weight_decay=1e-2),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.,
                       custom_keys={'head': dict(lr_mult=0.5)}),
    clip_grad=dict(max_norm=5.0, norm_type=2),
    accumulative_counts=2)

param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=8),
    dict(type='CosineAnnealingLR', by_epoch=True, begin=0, T_max=6, eta_min=1e-3),
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (AmpOptimWrapper)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    x, y = synthetic_dataset()
    model = TinyCNN()
    cfg = dict(optim_wrapper)
    if args.amp:
        cfg.update(type='AmpOptimWrapper', dtype='bfloat16')
    ow = fusedopt.build_optim_wrapper(model, cfg)
    iters_per_epoch = len(x) // args.batch_size
    schedulers = fusedopt.build_param_scheduler(ow, param_scheduler, epoch_length=iters_per_epoch)
    ow.initialize_count_status(model, 0, args.epochs * iters_per_epoch)

    first = last = None
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x))
        total = 0.0
        for i in range(iters_per_epoch):
            idx = perm[i * args.batch_size:(i + 1) * args.batch_size]
            with ow.optim_context(model):
                loss = nn.functional.cross_entropy(model(x[idx]).float(), y[idx])
            ow.update_params(loss)
            total += loss.detach()          # stays on device: no sync per iteration
            for s in schedulers:
                if not s.by_epoch:
                    s.step()
        for s in schedulers:
            if s.by_epoch:
                s.step()
        mean = float(total) / iters_per_epoch   # one read per epoch
        first = mean if first is None else first
        last = mean
        print(f"epoch {epoch}: loss {mean:.4f} lr {ow.get_lr()['lr'][0]:.5f} "
              f"grad_norm {float(ow.last_grad_norm):.3f}")
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    print(f"train accuracy {acc:.3f}")
    if not (last < first and (acc > 0.5 or args.epochs < 4)):
        raise SystemExit(f"training did not converge: loss {first:.4f} -> {last:.4f}, acc {acc}")
    print("ok")


if __name__ == "__main__":
    main()

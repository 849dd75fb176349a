"""Train the same tiny CNN with an mmengine Runner whose config uses fusedopt.

``type='fusedopt.X'`` makes mmengine import ``fusedopt.registry`` (its convention for a scope),
which registers fusedopt's classes in child registries of mmengine's with scope 'fusedopt'.
``--default-scope fusedopt`` instead resolves the plain names (``OptimWrapper``, ``LinearLR``)
to fusedopt's first, falling back to mmengine's.

    python examples/train_mmengine.py [--epochs 4] [--default-scope fusedopt] [--work-dir DIR]
"""
import argparse
import os
import sys
import tempfile

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mmengine.model import BaseModel
from mmengine.runner import Runner

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _toy import TinyCNN, synthetic_dataset  # noqa: E402


class Classifier(BaseModel):
    def __init__(self):
        super().__init__()
        self.net = TinyCNN()

    def forward(self, inputs, labels=None, mode="tensor"):
        logits = self.net(inputs)
        if mode == "loss":
            return dict(loss=nn.functional.cross_entropy(logits.float(), labels))
        return logits


def make_cfg(epochs, scoped):
    p = "fusedopt." if scoped else ""
    return dict(
        optim_wrapper=dict(
            type=f"{p}OptimWrapper",
            optimizer=dict(type=f"{p}FusedAdamW", lr=5e-2, weight_decay=1e-2),
            paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.,
                               custom_keys={"head": dict(lr_mult=0.5)}),
            clip_grad=dict(max_norm=5.0, norm_type=2),
            accumulative_counts=2),
        # the tutorial's "warm-up by epochs, updated by iter, then cosine" (end and T_max are
        # filled in by the Runner from max_epochs)
        param_scheduler=[
            dict(type="LinearLR", start_factor=0.1, by_epoch=True, end=1,
                 convert_to_iter_based=True),
            dict(type="CosineAnnealingLR", by_epoch=True, begin=1),
        ],
        # grad norms stay tensors; one host read per logging interval
        custom_hooks=[dict(type=f"{p}LazyScalarLogHook")],
        train_cfg=dict(by_epoch=True, max_epochs=epochs),
        default_hooks=dict(logger=dict(type="LoggerHook", interval=4),
                           checkpoint=dict(type="CheckpointHook", interval=epochs)),
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--default-scope", default=None, choices=[None, "fusedopt"])
    parser.add_argument("--work-dir", default=None)
    args = parser.parse_args(argv)
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="fusedopt_mmengine_")

    x, y = synthetic_dataset()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    cfg = make_cfg(args.epochs, scoped=args.default_scope is None)
    runner = Runner(model=Classifier(), work_dir=work_dir, train_dataloader=loader,
                    randomness=dict(seed=0), default_scope=args.default_scope or "mmengine",
                    **cfg)
    runner.train()

    import fusedopt
    ow = runner.optim_wrapper
    assert isinstance(ow, fusedopt.OptimWrapper), type(ow)
    assert isinstance(ow.optimizer, fusedopt.FusedAdamW), type(ow.optimizer)
    scheds = runner.param_schedulers
    print("schedulers:", ", ".join(f"{type(s).__module__}.{type(s).__name__}" for s in scheds))
    hub = runner.message_hub
    norms = hub.get_scalar("train/grad_norm").data[0]
    losses = hub.get_scalar("train/loss").data[0]
    print(f"grad_norm logged {len(norms)} times; loss {losses[:8].mean():.4f} -> "
          f"{losses[-8:].mean():.4f}; lr {ow.get_lr()['lr'][0]:.5f}")
    if not losses[-8:].mean() < losses[:8].mean():
        raise SystemExit("training did not converge")
    print("ok")


if __name__ == "__main__":
    main()

"""The seed's MMAction2 recipe (issue 14) as mmengine configs, for every route of the end-to-end
benchmark (fusedopt/bench/e2e.py): SGD with momentum 0.9 and weight_decay 1e-4 (or AdamW), its lr
scaled with the batch (0.01 per 8 clips); ``paramwise_cfg`` norm_decay_mult=0, bias_decay_mult=0
and the stem at lr_mult=0.1; ``clip_grad`` max_norm 40; AmpOptimWrapper for fp16 (dynamic loss
scale) and bf16; a LinearLR warm-up by iteration, then MultiStepLR by epoch converted to
iterations."""

ALGORITHMS = {"sgd": ("SGD", lambda args: dict(lr=0.01 * args.batch / 8, momentum=0.9,
                                                weight_decay=1e-4)),
              "adamw": ("AdamW", lambda args: dict(lr=1e-3, weight_decay=0.05))}


def optimizer_cfg(impl, args):
    """``impl``: 'torch-foreach', 'torch-fused' (torch.optim) or 'fusedopt-<backend>'."""
    name, kwargs = ALGORITHMS[args.optimizer]
    kwargs = kwargs(args)
    if impl == "torch-foreach":
        return dict(type=name, foreach=True, **kwargs)
    if impl == "torch-fused":
        return dict(type=name, fused=True, **kwargs)
    return dict(type="Fused" + name, backend=impl.split("-", 1)[1], **kwargs)


def wrapper_cfg(args, optimizer, precision=None):
    cfg = dict(type="OptimWrapper", optimizer=optimizer,
               paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                                  custom_keys={"stem": dict(lr_mult=0.1)}),
               clip_grad=dict(max_norm=40, norm_type=2))
    precision = precision or args.precision
    if precision == "fp16":
        cfg.update(type="AmpOptimWrapper", loss_scale="dynamic", dtype="float16")
    elif precision == "bf16":
        cfg.update(type="AmpOptimWrapper", dtype="bfloat16")
    return cfg


def param_scheduler_cfg(args):
    return [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=args.warmup),
            dict(type="MultiStepLR", by_epoch=True, milestones=[args.epochs // 2 + 1],
                 gamma=0.1, begin=0, end=args.epochs, convert_to_iter_based=True)]

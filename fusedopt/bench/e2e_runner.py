"""The end-to-end benchmark's Runner route (fusedopt/bench/e2e.py): a real ``mmengine.runner.Runner``
with its default hooks (timer, logger, the param-scheduler hook, checkpointing every epoch,
sampler seed), an epoch-based train loop over a dataset of sample indices, and the model as an
mmengine ``BaseModel`` whose data preprocessor makes each batch's clips on the device.

Hooks of this module record, without a host sync in the timed iterations: the loss of every
iteration (the model's output, kept as device tensors until the end), clock marks around the
optimizer's part (the wrapper's ``step``: unscale, clip and step; and the ParamSchedulerHook,
between marks at priorities 69 and 71 around its LOW = 70), the whole iteration, and the host
syncs of one iteration (fusedopt/bench/e2e_syncs.py). A spread run nudges the params by one ulp
after the first step (``nudge``). A resume run loads the checkpoint of an epoch end into a new
Runner (``resume=True``) and records the iterations after it.
"""
import uuid

from mmengine.hooks import Hook
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

import fusedopt.mmengine  # noqa: F401  type='fusedopt.X' in the configs below

from fusedopt.bench.e2e_data import Clock, build_model, nudge
from fusedopt.bench.e2e_recipe import optimizer_cfg, param_scheduler_cfg, wrapper_cfg
from fusedopt.bench.e2e_syncs import SyncCounter


class Indices(Dataset):
    """Sample ``i`` is its index: the clips are made on the device by ``ClipMaker``."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return dict(index=i)


class ClipMaker(BaseDataPreprocessor):
    """A batch of indices (mmengine's pseudo_collate: a list of ints, no tensor) becomes that
    batch's clips, made on the device (``Clips.batch``)."""

    def __init__(self, clips, batch):
        super().__init__()
        self.clips, self.batch_size = clips, batch

    def forward(self, data, training=False):
        x, y = self.clips.batch(data["index"][0] // self.batch_size)
        return dict(inputs=x, labels=y)


class Classifier(BaseModel):
    def __init__(self, net, preprocessor):
        super().__init__(data_preprocessor=preprocessor)
        self.net = net

    def forward(self, inputs, labels=None, mode="loss"):
        logits = self.net(inputs)
        if mode == "loss":
            return dict(loss=nn.functional.cross_entropy(logits.float(), labels))
        return logits


class Recorder:
    """State shared by the marking hooks (one hook object per priority)."""

    def __init__(self, device, *, sync_iter, nudge_seed=None):
        self.clock = Clock(device)
        self.sync_iter, self.nudge_seed = sync_iter, nudge_seed
        self.losses, self.marks = [], []
        self.counter = None
        self.syncs = None

    def hooks(self):
        return [_Mark(self, 0), _Mark(self, 69), _Mark(self, 71), _Mark(self, 100)]

    def wrap_step(self, wrapper):
        step = wrapper.step

        def timed_step(*args, **kwargs):
            self.marks[-1]["step0"] = self.clock.mark()
            self._phase("optimizer")
            step(*args, **kwargs)
            self._phase("other")
            self.marks[-1]["step1"] = self.clock.mark()
        wrapper.step = timed_step

    def _phase(self, name):
        if self.counter is not None:
            self.counter.phase = name


class _Mark(Hook):
    def __init__(self, rec, priority):
        self.rec, self.priority = rec, priority

    def before_train(self, runner):
        if self.priority == 0:
            self.rec.wrap_step(runner.optim_wrapper)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if self.priority != 0:
            return
        rec = self.rec
        rec.marks.append(dict(it0=rec.clock.mark()))
        if runner.iter == rec.sync_iter:
            rec.counter = SyncCounter().enter()
            rec.counter.phase = "forward_backward"
            rec.marks[-1]["counted"] = True

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        rec = self.rec
        if self.priority == 69:
            rec.marks[-1]["sched0"] = rec.clock.mark()
            rec._phase("optimizer")
        elif self.priority == 71:
            rec._phase("other")
            rec.marks[-1]["sched1"] = rec.clock.mark()
        elif self.priority == 100:
            rec.losses.append(outputs["loss"].detach())
            rec.marks[-1]["it1"] = rec.clock.mark()
            if rec.counter is not None:
                rec.counter.exit()
                rec.syncs = rec.counter.summary()
                rec.counter = None
            if rec.nudge_seed is not None and runner.iter == 0:   # after the first step
                nudge(runner.model.parameters(), rec.nudge_seed)


def optim_wrapper_cfg(impl, args):
    """mmengine's wrappers for torch.optim; fusedopt's (``fusedopt.OptimWrapper``: clip inside
    the step, fused AMP step, grad norm logged lazily) for ``type='fusedopt.FusedSGD'``."""
    cfg = wrapper_cfg(args, optimizer_cfg(impl, args))
    if impl.startswith("fusedopt-"):
        cfg["optimizer"]["type"] = "fusedopt." + cfg["optimizer"]["type"]
        cfg["type"] = "fusedopt." + cfg["type"]
    return cfg


def train(impl, init_state, clips, args, work_dir, *, sync_iter=None, nudge_seed=None,
          resume_from=None, keep_checkpoints=1):
    """One Runner training run of ``impl`` ('torch-fused', 'fusedopt-cuda', ...): the Recorder
    and the Runner (its ``optim_wrapper`` for the final lrs)."""
    net, _ = build_model(args)
    net.load_state_dict(init_state)
    model = Classifier(net, ClipMaker(clips, args.batch))
    rec = Recorder(clips.device, sync_iter=sync_iter, nudge_seed=nudge_seed)
    custom = rec.hooks()
    if impl.startswith("fusedopt-"):
        custom.append(dict(type="fusedopt.LazyScalarLogHook"))
    runner = Runner(
        model=model, work_dir=work_dir,
        train_dataloader=dict(dataset=Indices(args.epoch_length * args.batch),
                              sampler=dict(type="DefaultSampler", shuffle=False),
                              batch_size=args.batch, num_workers=0),
        train_cfg=dict(by_epoch=True, max_epochs=args.epochs, val_interval=args.epochs + 1),
        optim_wrapper=optim_wrapper_cfg(impl, args),
        param_scheduler=param_scheduler_cfg(args),
        default_hooks=dict(checkpoint=dict(type="CheckpointHook", interval=1, by_epoch=True,
                                           max_keep_ckpts=keep_checkpoints),
                           logger=dict(type="LoggerHook", interval=args.log_interval)),
        custom_hooks=custom,
        load_from=resume_from, resume=resume_from is not None,
        env_cfg=dict(cudnn_benchmark=False), randomness=dict(seed=0), log_level="WARNING",
        experiment_name=f"e2e-{impl}-{uuid.uuid4().hex[:8]}")
    runner.train()
    return rec, runner

"""What every route of the end-to-end benchmark (fusedopt/bench/e2e.py) shares: the model
(torchvision's ``r3d_18`` where torchvision is importable, else ``VideoResNet`` of the same
layout), the synthetic clips made on the device (batch ``i`` the same for every run: its own
generator seed), the clock, and the 1-ulp nudge of the spread runs."""
import time

import torch
from torch import nn

class _Block(nn.Module):
    """Basic 3-D residual block: two 3x3x3 convolutions (r3d_18's layout)."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm3d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class VideoResNet(nn.Module):
    """r3d_18's layout (stem, four stages of two blocks, pooling, fc) with chosen widths."""

    def __init__(self, widths=(64, 128, 256, 512), num_classes=400):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, widths[0], (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
            nn.BatchNorm3d(widths[0]), nn.ReLU(inplace=True))
        stages, cin = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_Block(cin, w, stride), _Block(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def build_model(args):
    if not args.tiny:
        try:
            from torchvision.models.video import r3d_18
            return r3d_18(num_classes=args.classes), "torchvision r3d_18"
        except ImportError:
            pass
    widths = (8, 16, 16, 32) if args.tiny else (64, 128, 256, 512)
    return VideoResNet(widths, args.classes), f"VideoResNet{widths} (r3d_18 layout)"


class Clips:
    """Synthetic clips on the device: class prototypes plus noise, so the loss can fall. Batch
    ``i`` is the same for every run (its own generator seed); an epoch is ``args.epoch_length``
    batches, the same in every epoch (the Runner's dataset of ``epoch_length * batch`` samples,
    read in order)."""

    def __init__(self, args, device):
        self.args, self.device = args, device
        gen = torch.Generator(device=device).manual_seed(1234)
        self.shape = (3, args.frames, args.size, args.size)
        self.prototypes = torch.randn(args.classes, *self.shape, generator=gen, device=device)

    def batch(self, i):
        """The batch of iteration ``i``."""
        gen = torch.Generator(device=self.device).manual_seed(10_000 + i % self.args.epoch_length)
        y = torch.randint(0, self.args.classes, (self.args.batch,), generator=gen,
                          device=self.device)
        noise = torch.randn(self.args.batch, *self.shape, generator=gen, device=self.device)
        return self.prototypes[y] + 2.0 * noise, y


class Clock:
    """CUDA events on a GPU (read after the run: no sync per iteration), perf_counter on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def ms(self, a, b):
        return a.elapsed_time(b) if self.cuda else (b - a) * 1e3


def median(values):
    v = sorted(values)
    return v[len(v) // 2] if v else None


@torch.no_grad()
def nudge(params, seed):
    """Move every element of every param by one ulp, up or down at random (``seed``): the
    smallest change a rounding difference makes, for torch's run against itself."""
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        up = torch.rand(p.shape, generator=gen) < 0.5
        to = torch.where(up, float("inf"), float("-inf")).to(device=p.device, dtype=p.dtype)
        p.copy_(torch.nextafter(p, to))


def timings(marks, clock, skip):
    """Medians over the iterations after the first ``skip``, but the one whose host syncs were
    counted: the iteration, and where the marks tell them apart the optimizer's parts (clip +
    step, scheduler) and their sum."""
    timed = [m for m in marks[skip:] if "counted" not in m]
    out = dict(iter_ms=median([clock.ms(m["it0"], m["it1"]) for m in timed]),
               timed_iters=len(timed))
    if timed and "step0" in timed[0]:
        step = [clock.ms(m["step0"], m["step1"]) for m in timed]
        sched = [clock.ms(m["sched0"], m["sched1"]) for m in timed]
        out.update(step_ms=median(step), sched_ms=median(sched),
                   optim_ms=median([a + b for a, b in zip(step, sched)]))
    elif timed and "sched0" in timed[0]:
        out.update(sched_ms=median([clock.ms(m["sched0"], m["sched1"]) for m in timed]))
    return out

"""Exact resume through the config layer (issue #8): model, optim wrapper (paramwise_cfg, fused
clipping, accumulation) and a scheduler chain saved mid-schedule, loaded into fresh objects built
from the same config, continue bit for bit like an uninterrupted run."""
import io

import pytest
import torch

import fusedopt
from helpers import CPU_BACKENDS

EPOCH_LENGTH = 4


def config(backend):
    return dict(
        optim_wrapper=dict(type="OptimWrapper",
                           optimizer=dict(type="FusedAdamW", lr=1e-2, weight_decay=1e-2, backend=backend),
                           paramwise_cfg=dict(norm_decay_mult=0.0, bias_lr_mult=2.0,
                                              custom_keys={"0.": dict(lr_mult=0.1)}),
                           clip_grad=dict(max_norm=1.0, norm_type=2), accumulative_counts=2),
        param_scheduler=[dict(type="LinearLR", start_factor=0.01, by_epoch=False, begin=0, end=6),
                         dict(type="CosineAnnealingLR", by_epoch=True, begin=1, end=5, T_max=4,
                              convert_to_iter_based=True),
                         dict(type="LinearMomentum", start_factor=0.9, by_epoch=False, end=10)])


def build(backend):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 3))
    cfg = config(backend)
    wrapper = fusedopt.build_optim_wrapper(model, cfg["optim_wrapper"])
    schedulers = fusedopt.build_param_scheduler(wrapper, cfg["param_scheduler"],
                                                epoch_length=EPOCH_LENGTH)
    return model, wrapper, schedulers


def train(model, wrapper, schedulers, start, stop):
    for it in range(start, stop):
        g = torch.Generator().manual_seed(it)
        x, y = torch.randn(10, 6, generator=g), torch.randn(10, 3, generator=g)
        wrapper.update_params(torch.nn.functional.mse_loss(model(x), y))
        for s in schedulers:
            s.step()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_resume_mid_schedule_is_bitwise_identical(backend):
    straight = build(backend)
    train(*straight, 0, 16)
    first = build(backend)
    # stop mid-cosine and mid-momentum schedule, on an accumulation boundary: grads accumulated
    # in an unfinished window are not part of a checkpoint (mmengine warns about that)
    train(*first, 0, 8)
    buffer = io.BytesIO()
    model, wrapper, schedulers = first
    torch.save({"model": model.state_dict(), "optim_wrapper": wrapper.state_dict(),
                "schedulers": [s.state_dict() for s in schedulers]}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=False)
    resumed = build(backend)
    model, wrapper, schedulers = resumed
    model.load_state_dict(ckpt["model"])
    wrapper.load_state_dict(ckpt["optim_wrapper"])
    for s, state in zip(schedulers, ckpt["schedulers"]):
        s.load_state_dict(state)
    wrapper.initialize_count_status(model, 8, 16)
    train(*resumed, 8, 16)
    for (name, a), (_, b) in zip(straight[0].state_dict().items(), resumed[0].state_dict().items()):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert straight[1].get_lr() == resumed[1].get_lr()
    opt_a, opt_b = straight[1].optimizer, resumed[1].optimizer
    for p, q in zip(straight[0].parameters(), resumed[0].parameters()):
        for key, value in opt_a.state[p].items():
            assert torch.equal(opt_b.state[q][key], value), f"state[{key}] differs after resume"

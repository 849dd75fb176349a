"""Registry semantics (mmengine's) and the standalone layer's independence from mmengine."""
import subprocess
import sys

import pytest
import torch

import fusedopt
from fusedopt.config import (OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS,
                             PARAM_SCHEDULERS, Registry)


def test_public_names_resolve_from_fusedopt():
    for name in ("Registry", "OPTIMIZERS", "OPTIM_WRAPPERS", "OPTIM_WRAPPER_CONSTRUCTORS",
                 "PARAM_SCHEDULERS", "build_optim_wrapper", "DefaultOptimWrapperConstructor",
                 "OptimWrapper", "AmpOptimWrapper"):
        assert getattr(fusedopt, name) is getattr(fusedopt.config, name)


def test_optimizers_holds_torch_and_fusedopt():
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "LBFGS"):
        assert OPTIMIZERS.get(name) is getattr(torch.optim, name)
    assert OPTIMIZERS.get("FusedAdam") is fusedopt.FusedAdam
    assert OPTIMIZERS.get("FusedAdamW") is fusedopt.FusedAdamW
    assert OPTIMIZERS.get("FusedSGD") is fusedopt.FusedSGD
    assert OPTIMIZERS.get("fusedopt.FusedSGD") is fusedopt.FusedSGD    # scoped name
    assert "FusedAdam" in OPTIMIZERS and "Nope" not in OPTIMIZERS
    assert OPTIM_WRAPPERS.get("OptimWrapper") is fusedopt.OptimWrapper
    assert OPTIM_WRAPPERS.get("AmpOptimWrapper") is fusedopt.AmpOptimWrapper
    assert (OPTIM_WRAPPER_CONSTRUCTORS.get("DefaultOptimWrapperConstructor")
            is fusedopt.DefaultOptimWrapperConstructor)
    assert isinstance(PARAM_SCHEDULERS, Registry)


def test_register_decorator_call_name_force():
    reg = Registry("thing")

    @reg.register_module()
    class A:
        def __init__(self, x=1):
            self.x = x

    @reg.register_module(name="bee")
    class B:
        pass

    class C:
        pass

    assert reg.register_module(module=C) is C
    reg.register_module(name=["c1", "c2"], module=C)
    assert reg.get("A") is A and reg.get("bee") is B and reg.get("C") is C
    assert reg.get("c1") is C and reg.get("c2") is C
    with pytest.raises(KeyError, match="already registered"):
        reg.register_module(name="A", module=C)
    reg.register_module(name="A", module=C, force=True)
    assert reg.get("A") is C
    with pytest.raises(TypeError, match="force must be a boolean"):
        reg.register_module(force=1)
    with pytest.raises(TypeError, match="name must be None"):
        reg.register_module(name=3)
    with pytest.raises(TypeError, match="module must be Callable"):
        reg.register_module(module=3)


def test_build():
    reg = Registry("thing")

    @reg.register_module()
    class A:
        def __init__(self, x=1, y=2):
            self.x, self.y = x, y

    a = reg.build(dict(type="A", x=5))
    assert (a.x, a.y) == (5, 2)
    a = reg.build(dict(type="A"), default_args=dict(x=7, y=8))
    assert (a.x, a.y) == (7, 8)
    a = reg.build(dict(x=3), default_args=dict(type="A"))
    assert a.x == 3
    assert reg.build(dict(type=A, y=4)).y == 4                   # a class as type
    cfg = dict(type="A", x=1)
    reg.build(cfg)
    assert cfg == dict(type="A", x=1)                             # cfg untouched
    with pytest.raises(KeyError, match='must contain the key "type"'):
        reg.build(dict(x=1))
    with pytest.raises(TypeError, match="cfg should be a dict"):
        reg.build([("type", "A")])
    with pytest.raises(TypeError, match="type must be a str or valid type"):
        reg.build(dict(type=3))


def test_unknown_name_suggests_closest():
    with pytest.raises(KeyError) as e:
        OPTIMIZERS.build(dict(type="FusedAdamm", params=[torch.zeros(1, requires_grad=True)]))
    msg = str(e.value)
    assert "FusedAdamm" in msg and "'FusedAdam'" in msg and "optimizer" in msg
    with pytest.raises(KeyError, match="'AdamW'"):
        OPTIMIZERS.build(dict(type="adamw", params=[]))


def test_standalone_never_imports_mmengine():
    code = (
        "import sys, torch\n"
        "import fusedopt\n"
        "from fusedopt.config import OPTIMIZERS, PARAM_SCHEDULERS\n"
        "m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))\n"
        "ow = fusedopt.build_optim_wrapper(m, dict(type='AmpOptimWrapper', dtype='bfloat16',\n"
        "    optimizer=dict(type='FusedAdamW', lr=1e-3, weight_decay=1e-2),\n"
        "    paramwise_cfg=dict(norm_decay_mult=0., custom_keys={'0': dict(lr_mult=0.1)}),\n"
        "    clip_grad=dict(max_norm=1.0), accumulative_counts=2))\n"
        "with ow.optim_context(m):\n"
        "    loss = m(torch.randn(2, 1, 5, 5)).float().sum()\n"
        "ow.update_params(loss); ow.update_params(loss.detach().requires_grad_())\n"
        "len(PARAM_SCHEDULERS); ow.state_dict()\n"
        "bad = [k for k in sys.modules if k == 'mmengine' or k.startswith('mmengine.')\n"
        "       or k == 'mmcv' or k.startswith('mmcv.')]\n"
        "assert not bad, bad\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")

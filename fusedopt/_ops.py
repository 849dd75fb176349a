"""The one place that chooses between an eager call and a compiled one, and fusedopt's fused
operations as torch.library custom ops: what a compiled step calls.

Eagerly, ``step``/``bucket_norm`` call the bucket's prebuilt backend handle, and
``tensors_norm``/``tensors_scale_`` the backend of the tensors' device.

Note [compiled steps]: under torch.compile the optimizer does not step its buckets through their
prebuilt backend handles (opaque objects Dynamo cannot trace). It calls the ops below with each
bucket's tensors as lists, so Dynamo puts every op in the graph; the mutation annotations let
AOTAutograd functionalize them, and the fake implementations give the outputs' metadata. At run
time an op builds a throw-away handle of the named backend from its arguments and steps it. The
grads are arguments (functionalization may hand the op copies of the params, whose .grad is
not the grad), and a state list is flattened: ``states[k * n + i]`` is state k of ``params[i]``.
Packing, state creation and the table's rows happen outside the graph, in
``FusedOptimizer._init_group``, which Dynamo runs for real while tracing (its hook for
torch.optim's own ``_init_group``); guards send Dynamo back there when a grad appears or a group
is added. The ops live in fusedopt/_library.py, imported on first compiled use.
"""
import torch

from fusedopt import backends


def step(bucket, scalars):
    """One step of every tensor of ``bucket`` with its algorithm; ``scalars``: clip_coef,
    inv_scale and found_inf (0-d tensors on its device, or None: float32, clip_coef float64 too,
    Note [norm dtype] in fusedopt/backends/__init__.py)."""
    spec, algo = bucket.spec, bucket.algo
    if torch.compiler.is_compiling():
        from fusedopt import _library  # noqa: F401  (registers the ops)
        torch.ops.fusedopt.step_(spec.params, [p.grad for p in spec.params],
                                 [s for states in spec.states for s in states], spec.steps,
                                 bucket.hp, spec.group_index, algo.name, bucket.flags,
                                 scalars["clip_coef"], scalars["inv_scale"], scalars["found_inf"],
                                 bucket.backend.NAME, spec.weights, spec.seeds)
        return
    bucket.backend.step(bucket.handle, bucket.hp, algo, bucket.flags, **scalars)


def bucket_norm(bucket, norm_type):
    """The norm (any order) of every grad of the bucket, its params without state included:
    a 0-d tensor on its device (float64 for fp64 grads, else float32: Note [norm dtype] in
    fusedopt/backends/__init__.py). Orders 2 and inf are one multi-tensor reduction."""
    spec = bucket.spec
    if not backends.native_norm(norm_type) or torch.compiler.is_compiling():
        grads = [p.grad for p in spec.params + spec.pending if p.grad is not None]
        name = bucket.backend.NAME if backends.native_norm(norm_type) else "reference"
        return _tensors_norm_on(grads, norm_type, backends.named(name))
    return bucket.backend.bucket_norm(bucket.handle, norm_type)


def _tensors_norm_on(tensors, norm_type, module):
    if torch.compiler.is_compiling():
        from fusedopt import _library  # noqa: F401  (registers the ops)
        return torch.ops.fusedopt.norm(tensors, norm_type, module.NAME)
    return module.tensors_norm(tensors, norm_type)


def tensors_norm(tensors, norm_type):
    """One multi-tensor reduction per device; the per-device results combine on the first."""
    by_device = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    if not by_device:
        return torch.zeros((), dtype=torch.float32)
    norms = []
    for device, ts in by_device.items():
        module = (backends.resolve("auto", device) if backends.native_norm(norm_type)
                  else backends.named("reference"))
        norms.append(_tensors_norm_on(ts, norm_type, module))
    return backends.combine_norms(norms, norm_type)


def tensors_scale_(tensors, coef):
    """``tensors[i] *= coef`` in place; the tensors share a device, ``coef`` is a 0-d float32
    or float64 tensor there, rounded to each tensor's compute type."""
    module = backends.resolve("auto", tensors[0].device)
    if torch.compiler.is_compiling():
        from fusedopt import _library  # noqa: F401  (registers the ops)
        torch.ops.fusedopt.scale_(tensors, coef, module.NAME)
    else:
        module.tensors_scale_(tensors, coef)


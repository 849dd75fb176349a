"""Which precision a param's step runs in, from its group's options (Note [precision modes],
docs/internals.md): ``master_weights``, ``kahan_sum`` and ``state_dtype``.

A param's *mode* is (weights, state dtype, stochastic): what its bucket holds and how the
backends write it. The defaults keep torch's layout where torch has one (states in the param's
dtype, so a drop-in stays bitwise a drop-in), and give each low-precision option the states it
needs to track fp32 (issue 25): fp32 states behind fp32 masters, bf16 states with stochastic
rounding beside Kahan-compensated params.
"""
import torch

from fusedopt._engine import KAHAN, MASTER, PLAIN

LOW = (torch.float16, torch.bfloat16)

# state_dtype as configs write it (a config file need not import torch)
_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def state_dtype_option(value):
    """The group's ``state_dtype`` as a torch dtype or None; ValueError naming the option for
    anything else."""
    if value is None or value in _NAMES.values():
        return value
    if isinstance(value, str) and value in _NAMES:
        return _NAMES[value]
    raise ValueError(f"Invalid state_dtype: {value!r}; expected None (the default for the group's "
                     "mode), torch.float32, torch.bfloat16 (stochastically rounded) or "
                     "torch.float16 (fp16 params only), or one of their names "
                     f"{sorted(_NAMES)}")


def check_group(group):
    """The options' values and the pairs that exclude each other (before anything changes)."""
    state_dtype_option(group.get("state_dtype"))
    for key in ("master_weights", "kahan_sum"):
        if group.get(key) not in (None, True, False):
            raise TypeError(f"Invalid {key}: {group.get(key)!r}; expected True or False")
    if group.get("master_weights") and group.get("kahan_sum"):
        raise ValueError("master_weights=True and kahan_sum=True exclude each other: a param is "
                         "kept accurate by an fp32 copy (4 B/param) or by a compensation "
                         "(2 B/param), not both")


def mode(group, dtype):
    """(weights, state dtype, stochastic) of a param of ``dtype`` in ``group``; ValueError for a
    state_dtype that dtype cannot take (checked when the params are packed, before a step)."""
    low = dtype in LOW
    weights = (MASTER if low and group.get("master_weights") else
               KAHAN if low and group.get("kahan_sum") else PLAIN)
    chosen = state_dtype_option(group.get("state_dtype"))
    if chosen is None:
        # Kahan keeps bf16 params compact: bf16 states, stochastically rounded (1.3x the ideal's
        # drift, fusedopt.bench.drift); fp16 params take fp32 states (bf16 states beside fp16
        # params drift 5.5x the ideal: a bf16 ulp is 8 fp16 ones)
        states = (torch.float32 if weights == MASTER or (weights == KAHAN and dtype == torch.float16)
                  else torch.bfloat16 if weights == KAHAN else dtype)
    else:
        states = chosen
    if dtype == torch.float64 and states != torch.float64:
        raise ValueError(f"state_dtype={chosen} is for float32/float16/bfloat16 params; this group "
                         "has float64 params, whose states stay float64 (use another group)")
    if states == torch.float16 and dtype != torch.float16:
        raise ValueError(f"state_dtype=torch.float16 is for float16 params only; this group has "
                         f"{dtype} params (fp16 states of wider params underflow: use "
                         "torch.bfloat16, stochastically rounded)")
    # bf16 states are rounded stochastically unless they are torch's own (bf16 params, no
    # option): round-to-nearest makes (1 - beta2) * g^2 vanish beside exp_avg_sq (issue 25)
    stochastic = states == torch.bfloat16 and (chosen is not None or weights == KAHAN)
    return weights, states, stochastic


def group_key(group):
    """What of a group decides its params' modes: a change repacks (like an algorithm flag)."""
    return (bool(group.get("master_weights")), bool(group.get("kahan_sum")),
            state_dtype_option(group.get("state_dtype")))


def seed_of(position):
    """The stochastic-rounding seed of the param at ``position`` in the optimizer's groups (in
    order), kept in its state as a Python int from then on (Note [stochastic rounding]). Drawn
    from no generator: making state must not move the user's random streams (a data order, a
    dropout mask), and every run (and every rank of a sharded one) gets the same seeds."""
    return _mix32((position * 0x9E3779B9 + 0x7F4A7C15) & 0xFFFFFFFF)


def _mix32(h):
    """MurmurHash3's fmix32 on a Python int (the backends' hash, Note [stochastic rounding])."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def bytes_per_param(dtype, states, num_states, weights):
    """Bytes one param keeps: (param, master, states, compensation), for the README's table and
    the test that counts them."""
    size = torch.empty((), dtype=dtype).element_size()
    state = torch.empty((), dtype=states).element_size() * num_states
    return (size, 4 if weights == MASTER else 0, state, size if weights == KAHAN else 0)

"""The algorithm descriptor: what every layer needs to know of an optimizer, as data.

Note [algorithm as data] (docs/internals.md): an algorithm is one ``Algorithm`` (its module in
fusedopt/algorithms/ also holds its classes) plus its math in each language: the reference
``update`` below (plain PyTorch: the oracle of every test), a CPU element functor (csrc/cpu/), a
CUDA functor (csrc/cuda/) and a Triton block (kernels/). The class layer, the config registries,
the mmengine adapter, the custom ops, the backends, the bench and the tests iterate
``fusedopt.algorithms.ALGORITHMS``; csrc/algorithms.h mirrors ids, flag bits and columns.
"""
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

import torch

from fusedopt._hparams import Column  # noqa: F401  (re-exported for the algorithm modules)


@dataclass(eq=False)
class Algorithm:
    """One optimizer algorithm. ``update(p, g, states, t, row, flags)`` is its reference math for
    one tensor: ``p`` (the param, or its fp32 master), ``g`` (unscaled, clipped and negated for
    maximize) and ``states`` (in ``state_names`` order) are in the compute dtype and updated in
    place; ``t`` is the step counter after this step's increment (a float), ``row`` the group's
    table row by column name, ``flags`` by flag name."""
    name: str
    id: int                                    # csrc/algorithms.h AlgoId
    flag_names: Tuple[str, ...]                # bit k of a flags word is flag_names[k]
    columns: Tuple[Tuple[str, Column], ...]    # (name, where it lives in a group), by column
    states: Callable[[dict], Tuple[str, ...]]  # flags -> torch-layout state names, bucket order
    update: Callable
    group_flags: Callable[[dict], dict]        # param_group -> {flag name: bool}
    flag_keys: Tuple[str, ...] = ()            # group keys that are flags (a change repacks)
    aliases: Dict[str, str] = field(default_factory=dict)   # other set_hparam names of columns
    step_in_state: bool = False                # state['step'] is the counter (Adam), else internal
    two_stage: bool = False                    # Note [two stages], csrc/algorithms.h
    # bytes per param a two-stage algorithm's other pass reads again: f(element size, bytes of
    # the value the step starts from (the param's, 4 for an fp32 master, twice the param's with a
    # compensation), element size of the states)
    rereads: Callable[[int, int, int], int] = lambda size, start, state: 0
    classes: list = field(default_factory=list)

    def __post_init__(self):
        assert [name for name, _ in self.columns[:2]] == ["lr", "weight_decay"], self.name

    @property
    def column_names(self):
        return tuple(name for name, _ in self.columns)

    @property
    def table_columns(self):
        """{table column: Column}, what the hyper-parameter tables are built from."""
        return {col: column for col, (_, column) in enumerate(self.columns)}

    @property
    def slots(self):
        """set_hparam / scheduler name -> (table column, param_group key, index in a pair)."""
        slots = {name: (col, c.key, c.index) for col, (name, c) in enumerate(self.columns)}
        slots.update({alias: slots[name] for alias, name in self.aliases.items()})
        return slots

    def flags_word(self, flags):
        """{name: bool} -> the int the backends take."""
        return sum(1 << k for k, name in enumerate(self.flag_names) if flags.get(name))

    def flag_dict(self, flags):
        return {name: bool(flags >> k & 1) for k, name in enumerate(self.flag_names)}

    def state_names(self, flags):
        return self.states(self.flag_dict(flags) if isinstance(flags, int) else flags)

    def bytes_per_param(self, dtype, flags, master=False, state_dtype=None, kahan=False):
        """Bytes one step moves per parameter (Note [precision modes]): the grad read; the param
        read and written (with a master copy: the fp32 master read and written and the param
        only written; with ``kahan``: the param and its compensation read and written); each
        state read and written in its dtype (``state_dtype``, by default fp32 behind masters,
        else the param's); and what a two-stage algorithm's other pass reads again."""
        size = torch.empty((), dtype=dtype).element_size()
        if state_dtype is None:
            state_dtype = torch.float32 if master else dtype
        state = torch.empty((), dtype=state_dtype).element_size()
        start = 4 if master else 2 * size if kahan else size
        moved = size + (2 * start + size if master else 2 * start)
        moved += 2 * state * len(self.state_names(flags))
        return moved + self.rereads(size, start, state)

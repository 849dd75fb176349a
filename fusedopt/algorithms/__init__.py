"""The algorithms, as data (Note [algorithm as data], fusedopt/algorithms/base.py).

``ALGORITHMS``: name -> Algorithm, in id order; ``optimizer_classes()``: class name -> class, for
the registries, the mmengine adapter and the bench. Adding an optimizer: its module here (the
descriptor, its reference math and its classes), one line below, and its math per language
(docs/internals.md, "Adding an optimizer").
"""
from fusedopt.algorithms import adam, lamb, lars, lion, sgd

ALGORITHMS = {m.ALGORITHM.name: m.ALGORITHM for m in (adam, sgd, lion, lars, lamb)}
assert [a.id for a in ALGORITHMS.values()] == list(range(len(ALGORITHMS)))


def optimizer_classes():
    """{'FusedAdam': FusedAdam, ...}: every optimizer class, in algorithm order."""
    return {cls.__name__: cls for algo in ALGORITHMS.values() for cls in algo.classes}


__all__ = ["ALGORITHMS", "optimizer_classes"]

"""fusedopt-bench: fusedopt side by side with torch's (and third-party) optimizers on one device.

``fusedopt-bench --help`` (console script) or ``python -m fusedopt.bench``. Modules:
``cli`` (options, the run), ``presets`` (model shape lists), ``impls`` (what is compared and
how each steps), ``measure`` (parameter sets, bandwidth stream, interleaved timing), ``report``
(JSON, table, progress) and ``plot`` (figures from the JSON). Nothing here is imported by
``import fusedopt``; rich, tqdm and matplotlib (the ``bench`` extra) load only when used.
"""


def main(argv=None):
    from fusedopt.bench.cli import main as _main
    return _main(argv)

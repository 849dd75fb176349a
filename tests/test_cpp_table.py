"""The C++ algorithm table (csrc/algorithms.h, read through fusedopt._C.algorithm_info) against
the Python descriptors (fusedopt.algorithms): name, two-stage protocol, flag names, and the state
lists a bucket holds for every flags word, so the validator's counts and its error messages
name what the optimizer packs."""
import pytest

from fusedopt.algorithms import ALGORITHMS
from fusedopt.backends import cpu as cpu_backend

C = cpu_backend._extension() if cpu_backend.unavailable_reason() is None else None
pytestmark = pytest.mark.skipif(C is None, reason=f"cpu backend: {cpu_backend.unavailable_reason()}")


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_cpp_entry_matches_the_descriptor_for_every_flags_word(name):
    algo = ALGORITHMS[name]
    for flags in range(1 << len(algo.flag_names)):
        expected = dict(name=algo.name, two_stage=algo.two_stage, flag_names=algo.flag_names,
                        state_names=algo.state_names(flags))
        assert C.algorithm_info(algo.id, flags) == expected, f"{name} flags={flags}"


def test_ids_are_the_descriptors_and_nothing_else():
    ids = sorted(algo.id for algo in ALGORITHMS.values())
    assert ids == list(range(len(ids)))
    with pytest.raises(ValueError, match=f"algo must be an algorithm id from 0 to {len(ids) - 1}"):
        C.algorithm_info(len(ids))
    first = ALGORITHMS[min(ALGORITHMS, key=lambda n: ALGORITHMS[n].id)]
    with pytest.raises(ValueError, match=f"has bits that {first.name} does not have"):
        C.algorithm_info(first.id, 1 << len(first.flag_names))

import pytest
import torch

import fusedopt

# Backends that step CPU tensors here. triton runs CPU tensors only under TRITON_INTERPRET=1 and
# has its own test file; cuda has tests/test_cuda.py.
CPU_BACKENDS = [b for b in ("reference", "cpu") if b in fusedopt.available_backends()]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_report_header(config):
    return f"fusedopt backends available: {fusedopt.available_backends()}"

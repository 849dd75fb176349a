import faulthandler
import os
import sys

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


# FUSEDOPT_TEST_TIMEOUT=S (scripts/gpu_check.sh sets it): a test still running after S seconds
# dumps every thread's stack into FUSEDOPT_TEST_TIMEOUT_LOG (default: stderr) and ends the pytest
# process, so a hung kernel costs S seconds of a GPU lease, not all of it. faulthandler's watchdog
# thread fires even while the main thread waits inside a CUDA call, where a Python signal handler
# would never run (and pytest-timeout is not on every machine). A file, because pytest's capture
# owns file descriptor 2 while a test runs. Failures go into the same file as they happen, so a
# crash later in the process (a segfault ends it before pytest's summary) loses none of them.
_TIMEOUT = float(os.environ.get("FUSEDOPT_TEST_TIMEOUT", "0") or 0)
_TIMEOUT_LOG = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if _TIMEOUT > 0:
        if not _TIMEOUT_LOG:
            path = os.environ.get("FUSEDOPT_TEST_TIMEOUT_LOG")
            _TIMEOUT_LOG.append(open(path, "a") if path else sys.stderr)
            _TIMEOUT_LOG[0].write(f"tests in the order they started; a stack dump after one: it "
                                  f"ran past {_TIMEOUT:.0f} s\n")
        log = _TIMEOUT_LOG[0]
        log.write(f"{item.nodeid}\n")
        log.flush()
        faulthandler.dump_traceback_later(_TIMEOUT, exit=True, file=log)
    try:
        yield
    finally:
        if _TIMEOUT > 0:
            faulthandler.cancel_dump_traceback_later()


def pytest_runtest_logreport(report):
    if _TIMEOUT > 0 and _TIMEOUT_LOG and report.failed:
        _TIMEOUT_LOG[0].write(f"FAILED {report.nodeid} ({report.when}):\n"
                              f"{report.longreprtext[-4000:]}\n")
        _TIMEOUT_LOG[0].flush()

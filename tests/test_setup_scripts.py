"""scripts/missing_requirements.py, which scripts/setup.sh turns into one pip command: one
requirement per line, no environment markers (a marker's "; platform_system == ..." would reach
pip as a separate argument), nothing printed when everything is installed."""
import os
import subprocess
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")
sys.path.insert(0, SCRIPTS)
import missing_requirements  # noqa: E402


def test_lines_are_single_pip_arguments(monkeypatch, capsys):
    monkeypatch.setattr(missing_requirements, "satisfied", lambda text: False)
    monkeypatch.setattr(sys, "argv", ["missing_requirements.py", "test,bench,mmengine"])
    missing_requirements.main()
    lines = capsys.readouterr().out.splitlines()
    assert "triton>=3.0" in lines and "mmengine>=0.10" in lines and "ninja" in lines
    assert all(";" not in line and " " not in line for line in lines), lines


def test_marker_for_another_platform_is_satisfied():
    assert missing_requirements.satisfied("surely-not-installed>=1; platform_system == 'Plan9'")
    assert not missing_requirements.satisfied("surely-not-installed>=1")


def test_unknown_extra_is_an_error():
    done = subprocess.run([sys.executable, os.path.join(SCRIPTS, "missing_requirements.py"),
                           "tests"], capture_output=True, text=True)
    assert done.returncode != 0 and "unknown extra 'tests'" in done.stderr


@pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import mmengine, rich, matplotlib, "
                                    "hypothesis, pytest, ninja"]).returncode != 0,
                    reason="this Python lacks an extra's package")
def test_nothing_missing_after_set_up():
    done = subprocess.run([sys.executable, os.path.join(SCRIPTS, "missing_requirements.py"),
                           "test,bench,mmengine"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "", done.stdout

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


# ---- scripts/gpu/wheelhouse.sh: the GPU machine's offline wheels (issue 29) --------------------

ROOT = os.path.dirname(SCRIPTS)


def _link_installed(names, into):
    """Links to the installed distributions ``names`` and everything they require (their
    top-level modules and their .dist-info, so pip sees them installed): an environment with
    these and nothing else."""
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:
        from pip._vendor.packaging.requirements import Requirement
    todo, seen = list(names), set()
    while todo:
        dist = metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in seen:
            continue
        seen.add(key)
        tops = {str(f).split("/")[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops:
            src = os.path.join(str(dist.locate_file("")), top)
            if os.path.exists(src) and top != "__pycache__" and not top.endswith(".pth"):
                dst = os.path.join(into, top)
                if not os.path.lexists(dst):
                    os.symlink(src, dst)
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


@pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import matplotlib, mmengine.runner"],
                                   capture_output=True).returncode != 0,
                    reason="this Python has no mmengine Runner to stand in for the GPU image")
def test_wheelhouse_installs_offline_and_the_runner_trains(tmp_path):
    """The wheelhouse for this Python (the GPU machine's is 3.12: the same script with
    --python-version 3.12), installed with pip --no-index into a fresh venv that has only torch,
    cv2 and matplotlib (as the GPU image has them: the device tool's KINDS.md; the Runner imports
    cv2 and its default Visualizer matplotlib), then the Runner trains."""
    wh = tmp_path / "wheels"
    pyv = f"{sys.version_info.major}.{sys.version_info.minor}"
    done = subprocess.run(["bash", os.path.join(SCRIPTS, "gpu", "wheelhouse.sh"), "--dest",
                           str(wh), "--python-version", pyv, "--no-torchvision"],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "wheelhouse:" in done.stdout and any(p.name.startswith("mmengine_lite-")
                                                for p in wh.iterdir())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    image = tmp_path / "image"
    image.mkdir()
    linked = _link_installed(["torch", "matplotlib", "opencv-python" if _installed("opencv-python")
                              else "opencv-python-headless"], str(image))
    assert "mmengine" not in linked
    with open(os.path.join(site, "gpu_image.pth"), "w") as f:
        f.write(f"{image}\n{ROOT}\n")
    # no index, no pip configuration (this machine's names local wheel folders), the folder only
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    done = subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wh),
                           "-r", str(wh / "requirements.txt")], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "e2e.json"
    done = subprocess.run([py, "-m", "fusedopt.bench", "e2e", "--tiny", "--device", "cpu",
                           "--rows", "runner:torch-foreach,runner:fusedopt-cpu", "--spread-seeds",
                           "0", "--resume-check", "none", "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    import json
    doc = json.loads(out.read_text())
    assert doc["versions"]["mmengine"] == "0.10.7"
    assert [r["status"] for r in doc["results"]] == ["ok", "ok"], doc["results"]
    where = subprocess.run([py, "-c", "import mmengine; print(mmengine.__file__)"],
                           capture_output=True, text=True, env=env).stdout
    assert where.startswith(site), where


def _installed(name):
    from importlib import metadata
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def test_wheelhouse_rejects_unknown_arguments():
    done = subprocess.run(["bash", os.path.join(SCRIPTS, "gpu", "wheelhouse.sh"), "--bogus"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "unknown argument --bogus" in done.stderr

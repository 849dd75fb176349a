"""The end-to-end training benchmark's CPU mode (issue 14): the seed's config trains the same
video model with torch.optim and fusedopt (and inside mmengine's OptimWrapper where mmengine is
installed); the loss curves agree with torch's, GPU-only implementations are skipped with a
reason, and the JSON carries what the GPU run reports."""
import importlib.util
import json

import pytest

from fusedopt.bench import cli, e2e


def test_tiny_run_agrees_with_torch(tmp_path):
    out = tmp_path / "e2e.json"
    impls = "torch-foreach,fusedopt-cpu,fusedopt-mmengine,fusedopt-cuda-graph"
    cli.main(["e2e", "--tiny", "--device", "cpu", "--impl", impls, "--json", str(out)])
    doc = json.loads(out.read_text())
    runs = {r["impl"]: r for r in doc["results"]}
    assert runs["fusedopt-cuda-graph"]["status"] == "skipped"
    assert "GPU" in runs["fusedopt-cuda-graph"]["reason"]
    checked = ["fusedopt-cpu"] + (["fusedopt-mmengine"]
                                  if importlib.util.find_spec("mmengine") else [])
    for name in checked:
        r = runs[name]
        assert r["status"] == "ok" and len(r["losses"]) == doc["options"]["iters"]
        a = r["agreement"]
        assert a["vs"] == "torch-foreach" and a["agrees"], (name, a)
        assert r["optim_ms"] > 0 and r["iter_ms"] >= r["optim_ms"]
    # the same schedule and paramwise lrs as torch after the run (first groups)
    lrs = runs["fusedopt-cpu"]["final_lr"]
    assert lrs == runs["torch-foreach"]["final_lr"]


@pytest.mark.parametrize("bad", [["--precision", "fp8"], ["--optimizer", "lamb"]])
def test_bad_options_are_rejected(bad):
    with pytest.raises(SystemExit):
        e2e.parse(["--tiny", *bad])

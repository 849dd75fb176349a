"""The end-to-end benchmark's CPU mode (issue 29): the seed's recipe trains the same video model
through mmengine's Runner (torch.optim behind mmengine's wrappers, fusedopt behind its own) and
through fusedopt's standalone layer, with the GPU-only routes (one CUDA graph per iteration,
torch.compile) in their dry forms. The loss curves are judged against torch's spread under 1-ulp
nudges, a resumed Runner continues bit for bit, the host syncs are counted, and the JSON carries
what the GPU run reports."""
import importlib.util
import json
import math

import pytest
import torch

from fusedopt.bench import cli, e2e
from fusedopt.bench.e2e_data import nudge
from fusedopt.bench.e2e_syncs import SyncCounter

needs_runner = pytest.mark.skipif(e2e._has_mmengine_runner() is not None,
                                  reason="mmengine's Runner does not import here")


@needs_runner
def test_tiny_run_through_the_runner_agrees_with_torch(tmp_path):
    cli.main(["e2e", "--tiny", "--dry", "--device", "cpu", "--spread-seeds", "3",
              "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "e2e-sgd-fp32.json").read_text())
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "e2e-sgd-fp32-loss.png").stat().st_size > 0
        assert (tmp_path / "e2e-sgd-fp32-time.png").stat().st_size > 0
    runs = {r["row"]: r for r in doc["results"]}
    assert set(runs) == {"runner:torch-foreach", "runner:torch-fused", "runner:fusedopt-cpu",
                         "standalone:fusedopt-cpu", "graph:fusedopt-cpu", "compile:fusedopt-cpu"}
    assert all(r["status"] == "ok" for r in runs.values()), runs
    assert doc["reference"] == "runner:torch-fused"
    assert doc["git"]["commit"] and doc["versions"]["mmengine"] and doc["device"].startswith("cpu")
    iters = doc["options"]["iters"]
    # the yardstick: torch against itself, nudged by one ulp, gives a band of non-zero width
    spread = doc["spread"]
    assert len(spread["runs"]) == 3 and len(spread["low"]) == iters
    assert max(h - lo for lo, h in zip(spread["low"], spread["high"])) > 0
    for name, r in runs.items():
        assert len(r["losses"]) == iters and all(math.isfinite(v) for v in r["losses"])
        if name != doc["reference"]:
            assert r["agreement"]["within_spread"], (name, r["agreement"])
        assert r["iter_ms"] > 0
    # the schedule and paramwise lrs of torch's run, in every route
    for name in runs:
        assert runs[name]["final_lr"] == runs["runner:torch-fused"]["final_lr"], name
    # host syncs in the optimizer's part: mmengine's clip reads the norm (float(grad)); fusedopt's
    # wrapper keeps it on the device. The Runner's RuntimeInfoHook reads the loss every iteration.
    for name in ("runner:torch-foreach", "runner:torch-fused"):
        assert runs[name]["syncs"]["ops"].get("optimizer", 0) == 1, runs[name]["syncs"]
    for name in ("runner:fusedopt-cpu", "standalone:fusedopt-cpu"):
        assert runs[name]["syncs"]["ops"].get("optimizer", 0) == 0, runs[name]["syncs"]
    assert runs["runner:fusedopt-cpu"]["syncs"]["ops"]["other"] >= 1
    assert runs["runner:fusedopt-cpu"]["optim_ms"] > 0
    # a new Runner resumed at the end of epoch 1 continues bit for bit (fp32)
    resume = runs["runner:fusedopt-cpu"]["resume"]
    assert resume["from_iter"] == doc["options"]["epoch_length"]
    assert resume["iters"] == iters - resume["from_iter"] and resume["bitwise"], resume
    # the graph route replays the standalone route's iteration: the same losses
    assert runs["graph:fusedopt-cpu"]["vs_eager"]["bitwise"]


@needs_runner
def test_bf16_rows_on_cpu(tmp_path):
    """mmengine's AmpOptimWrapper needs a GPU (its torch rows are skipped, saying so);
    fusedopt's runs on CPU, in the Runner and standalone. Only the first losses are compared:
    torch 2.13's bf16 conv3d backward on CPU gives different grads from the same inputs (grad
    norm 40.50 and 40.80 in two runs) and, some iterations later, non-finite ones."""
    out = tmp_path / "e2e.json"
    e2e.main(["--tiny", "--device", "cpu", "--precision", "bf16", "--spread-seeds", "0",
              "--resume-check", "none", "--rows",
              "runner:torch-fused,runner:fusedopt-cpu,standalone:fusedopt-cpu", "--json", str(out)])
    runs = {r["row"]: r for r in json.loads(out.read_text())["results"]}
    assert runs["runner:torch-fused"]["status"] == "skipped"
    assert "GPU" in runs["runner:torch-fused"]["reason"]
    a, b = runs["runner:fusedopt-cpu"], runs["standalone:fusedopt-cpu"]
    assert a["status"] == b["status"] == "ok"
    assert len(a["losses"]) == len(b["losses"]) == 6 and a["losses"][0] == b["losses"][0]


def test_gpu_only_routes_are_skipped_on_cpu_without_dry(tmp_path):
    out = tmp_path / "e2e.json"
    e2e.main(["--tiny", "--device", "cpu", "--spread-seeds", "0", "--json", str(out),
              "--rows", "graph:fusedopt-cpu,compile:fusedopt-cpu,standalone:fusedopt-cpu"])
    runs = {r["row"]: r for r in json.loads(out.read_text())["results"]}
    assert runs["graph:fusedopt-cpu"]["status"] == "skipped"
    assert "GPU" in runs["graph:fusedopt-cpu"]["reason"]
    assert "CUDA graphs" in runs["compile:fusedopt-cpu"]["reason"]
    assert runs["standalone:fusedopt-cpu"]["status"] == "ok"


def test_sync_counter_counts_reads_per_phase():
    x = torch.arange(6.0)
    counter = SyncCounter().enter()
    counter.phase = "optimizer"
    (x * 2).sum()                  # no read of a value: no sync
    float(x.sum())
    counter.phase = "other"
    x.nonzero()
    bool(x[1] > 0)
    counter.exit()
    assert counter.counts == {"optimizer": 1, "other": 2}
    assert counter.where["other: nonzero"] == 1
    float(x.sum())                 # after exit: not counted
    assert sum(counter.counts.values()) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nudge_moves_every_element_one_ulp(dtype):
    p = torch.randn(1000, dtype=torch.float64).to(dtype)
    q = p.clone()
    nudge([q], seed=1)
    up, down = torch.nextafter(p, torch.tensor(math.inf, dtype=dtype)), torch.nextafter(
        p, torch.tensor(-math.inf, dtype=dtype))
    assert bool(((q == up) | (q == down)).all())
    assert 300 < int((q == up).sum()) < 700          # both directions, at random


@pytest.mark.parametrize("bad", [["--precision", "fp8"], ["--optimizer", "lamb"],
                                 ["--rows", "eager:fusedopt-cpu"], ["--rows", "runner"],
                                 ["--iters", "7"], ["--resume-epoch", "2"]])
def test_bad_options_are_rejected(bad, capsys):
    with pytest.raises(SystemExit):
        e2e.parse(["--tiny", *bad])
    assert "error:" in capsys.readouterr().err


def test_mmengine_runner_is_named_when_missing(monkeypatch):
    """Without mmengine (or its cv2: scripts/gpu/wheelhouse.sh) the Runner rows say why."""
    monkeypatch.setattr(e2e, "_has_mmengine_runner", lambda: "mmengine's Runner does not import")
    args = e2e.parse(["--tiny"])
    assert "Runner" in e2e.unavailable("runner:torch-fused", args, torch.device("cpu"))

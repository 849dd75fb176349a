"""fusedopt-bench (issue 7): a short CPU run's JSON schema and plot, skipped implementations with
their reason, argparse errors naming the option, presets, bytes per parameter, lazy imports."""
import json
import math
import re
import subprocess
import sys

import pytest
import torch

from fusedopt.bench import cli, measure, presets
from fusedopt.bench.plot import have_matplotlib

RECORD_KEYS = {"impl", "status", "reason", "median_ms", "p20_ms", "p80_ms", "gbps", "roofline_frac",
               "launches_per_step", "host_overhead_us", "peak_mem_bytes", "vs_torch_fused"}
TINY = ["--device", "cpu", "--numel", "4096", "--tensors", "4", "--steps", "2", "--warmup", "1"]


def run_cli(tmp_path, *extra):
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    assert cli.main([*TINY, *extra, "--json", str(out_json), "--plot", str(out_png)]) == 0
    return json.loads(out_json.read_text()), out_png


def test_short_cpu_run_json_schema_and_plot(tmp_path, capsys):
    data, png = run_cli(tmp_path, "--impl", "fusedopt,fusedopt-reference,torch-foreach,torch-fused",
                        "--clip")
    assert {"device", "torch", "git", "options", "results"} <= set(data)
    dev = data["device"]
    assert dev["type"] == "cpu" and dev["copy_gbps"] > 0 and "12 B/element" in dev["copy_method"]
    assert data["torch"]["version"] == torch.__version__
    assert data["options"]["bytes_per_param"] == 32 and data["options"]["clip"] is True
    assert [r["impl"] for r in data["results"]] == ["fusedopt", "fusedopt-reference",
                                                    "torch-foreach", "torch-fused"]
    for r in data["results"]:
        assert RECORD_KEYS <= set(r), r
        assert r["status"] == "ok", r
        assert 0 < r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert r["gbps"] == pytest.approx(32 * 4096 / (r["median_ms"] * 1e-3) / 1e9)
        assert r["roofline_frac"] == pytest.approx(r["gbps"] / r["copy_gbps"])
        assert r["launches_per_step"] is None            # CPU
        assert r["host_overhead_us"] > 0 and r["peak_mem_bytes"] > 0
        assert r["samples"] == 2
        assert r["min_ms"] <= r["median_ms"] and r["roofline_frac_best"] > 0
    # the baseline: the fastest torch implementation whose check passed (here both do)
    assert all(r["check"]["verdict"] in ("ok", "oracle") for r in data["results"]), data["results"]
    torch_rows = [r for r in data["results"] if r["impl"].startswith("torch-")]
    base = min(torch_rows, key=lambda r: r["median_ms"])
    for r in data["results"]:
        assert r["baseline"] == base["impl"]
        assert r["vs_baseline"] == pytest.approx(base["median_ms"] / r["median_ms"])
    fused = next(r for r in data["results"] if r["impl"] == "torch-fused")
    assert fused["vs_torch_fused"] == pytest.approx(1.0)
    out = capsys.readouterr().out
    assert "torch-fused" in out and f"vs {base['impl']}" in out and "roofline" not in out
    assert f"vs stream: GB/s / {dev['copy_gbps']:.1f} GB/s" in out
    if have_matplotlib():
        assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("flags", [["--amp"], ["--clip", "--amp"], ["--optimizer", "sgd"],
                                   ["--optimizer", "adam", "--dtype", "bf16", "--groups", "per-param"]])
def test_option_combinations_run(tmp_path, flags):
    data, _ = run_cli(tmp_path, "--impl", "fusedopt,torch-forloop,torch-fused", *flags)
    assert all(r["status"] == "ok" for r in data["results"]), data["results"]


def test_unavailable_implementations_are_skipped_with_reason(tmp_path, capsys, monkeypatch):
    # the plain table: rich folds a long reason at a width that depends on the other columns'
    # figures, which split "CUDA tensors only" over two rows in some runs
    for mod in ("rich", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, mod, None)
    data, _ = run_cli(tmp_path, "--impl", "fusedopt,fusedopt-cuda,apex,te,torch-fused")
    by = {r["impl"]: r for r in data["results"]}
    for impl in ("fusedopt-cuda", "apex", "te"):
        assert by[impl]["status"] == "skipped" and by[impl]["median_ms"] is None
        assert "CUDA" in by[impl]["reason"]
    assert by["fusedopt"]["status"] == "ok" and by["torch-fused"]["status"] == "ok"
    out = capsys.readouterr().out
    assert "skipped" in out and "CUDA tensors only" in out


def test_missing_package_reason():
    from fusedopt.bench import impls
    pytest.importorskip("fusedopt")
    try:
        import deepspeed  # noqa: F401
        pytest.skip("deepspeed is installed")
    except ImportError:
        pass
    reason = impls.unavailable_reason("deepspeed", "adamw", torch.device("cpu"))
    assert "cannot import deepspeed" in reason


def test_no_matplotlib_no_plot(tmp_path, monkeypatch, capsys):
    from fusedopt.bench import plot
    monkeypatch.setattr(plot, "have_matplotlib", lambda: False)
    data, png = run_cli(tmp_path, "--impl", "torch-fused")
    assert not png.exists() and "no plot: matplotlib is not installed" in capsys.readouterr().out
    assert data["results"][0]["status"] == "ok"      # the JSON is still written


def test_sweep_groups(tmp_path):
    data, png = run_cli(tmp_path, "--impl", "fusedopt,torch-fused", "--sweep", "groups", "--steps", "1")
    assert data["options"]["sweep_values"] == [1, 4]
    assert sorted({r["sweep_value"] for r in data["results"]}) == [1, 4]
    assert {r["groups"] for r in data["results"]} == {1, 4}
    if have_matplotlib():
        assert png.exists()


def test_sweep_numel(tmp_path):
    out_json = tmp_path / "s.json"
    argv = ["--device", "cpu", "--tensors", "2", "--numel", "70000", "--sweep", "numel", "--steps",
            "1", "--warmup", "0", "--impl", "fusedopt,torch-fused", "--json", str(out_json),
            "--plot", str(tmp_path / "s.png")]
    assert cli.main(argv) == 0
    data = json.loads(out_json.read_text())
    assert data["options"]["sweep_values"] == [65536, 70000]
    assert sorted({r["numel"] for r in data["results"]}) == [65536, 70000]


BAD = [
    (["--groups", "0"], "--groups"),
    (["--groups", "many"], "--groups"),
    (["--numel", "1000", "--tensors", "10", "--groups", "11"], "--groups"),
    (["--impl", "fusedopt,nope"], "--impl"),
    (["--impl", "torch-fused+master"], "--impl"),
    (["--numel", "lots"], "--numel"),
    (["--numel", "5", "--tensors", "10"], "--numel"),
    (["--tensors", "0"], "--tensors"),
    (["--preset", "resnet51"], "--preset"),
    (["--preset", "resnet50", "--numel", "1000"], "--preset"),
    (["--dtype", "fp64"], "--dtype"),
    (["--optimizer", "adagrad"], "--optimizer"),
    (["--preset", "host", "--sweep", "groups"], "--sweep"),
    (["--preset", "host", "--groups", "4"], "--groups"),
    (["--steps", "0"], "--steps"),
    (["--warmup", "-1"], "--warmup"),
    (["--sweep", "lr"], "--sweep"),
    (["--sweep", "groups", "--groups", "4"], "--groups"),
    (["--preset", "vit-b16", "--sweep", "numel"], "--preset"),
    (["--device", "tpu"], "--device"),
]


@pytest.mark.parametrize("argv,option", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_options_name_the_option(argv, option, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_device_without_cuda(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--device", "cuda"])
    assert "argument --device" in capsys.readouterr().err


@pytest.mark.parametrize("name,tensors,total", [
    ("resnet50", 161, 25_557_032), ("vit-b16", 152, 86_567_656), ("bert-base", 199, 109_482_240),
    ("llama-7b-layer", 9, 202_383_360), ("detector-465", 465, 58_143_808)])
def test_presets_match_published_counts(name, tensors, total):
    shapes = presets.shapes(name)
    assert len(shapes) == tensors and sum(math.prod(s) for s in shapes) == total


def test_bytes_per_param_match_design():
    f32 = torch.float32
    assert measure.bytes_per_param("adamw", f32) == 28
    assert measure.bytes_per_param("adamw", f32, clip=True) == 32
    assert measure.bytes_per_param("adamw", f32, clip=True, amp=True) == 32
    assert measure.bytes_per_param("sgd", f32) == 20
    assert measure.bytes_per_param("adam", torch.bfloat16) == 14
    # master weights: the fp32 master is read instead of the param, and written beside it, and
    # the states are fp32 (issue 25); compensated params read and write p and c, bf16 states
    assert measure.bytes_per_param("adamw", torch.bfloat16, mode="+master") == 28
    assert measure.bytes_per_param("adamw", torch.bfloat16, mode="+master-bf16") == 20
    assert measure.bytes_per_param("adamw", torch.bfloat16, mode="+kahan") == 18
    assert measure.bytes_per_param("adamw", torch.bfloat16, mode="+bf16-states") == 14
    assert measure.bytes_per_param("adamw", torch.float16, mode="+bf16-states") == 14
    assert measure.bytes_per_param("sgd", torch.float16, mode="+master") == 20
    assert measure.bytes_per_param("adamw", f32, mode="+master") == 28      # a no-op for fp32


def test_precision_mode_implementations(tmp_path):
    """The mode suffixes run fusedopt in each precision mode (all of them by default for --dtype
    bf16): GB/s counts each mode's bytes (bf16 AdamW: masters and fp32 states 28 B/param, masters
    and bf16 states 20, Kahan 18, stochastically rounded bf16 states alone 14), and the peak memory of masters with fp32 states is 8 B/param
    above the same implementation's without them (the master 4, two states 2 more each)."""
    assert {"fusedopt+master", "fusedopt+kahan"} <= set(cli.resolve(cli.build_parser().parse_args(
        ["--device", "cpu", "--dtype", "bf16"]), None).impl)
    data, _ = run_cli(tmp_path, "--dtype", "bf16", "--impl",
                      "fusedopt,fusedopt+master,fusedopt-reference+master,fusedopt+kahan,"
                      "fusedopt+bf16-states")
    by = {r["impl"]: r for r in data["results"]}
    assert all(r["status"] == "ok" for r in data["results"]), data["results"]
    assert by["fusedopt"]["bytes_per_step"] == 14 * 4096
    assert by["fusedopt+kahan"]["bytes_per_step"] == 18 * 4096
    assert by["fusedopt+bf16-states"]["bytes_per_step"] == 14 * 4096
    for impl in ("fusedopt+master", "fusedopt-reference+master"):
        r = by[impl]
        assert r["bytes_per_step"] == 28 * 4096
        assert r["gbps"] == pytest.approx(28 * 4096 / (r["median_ms"] * 1e-3) / 1e9)
    assert by["fusedopt+master"]["peak_mem_bytes"] - by["fusedopt"]["peak_mem_bytes"] == 8 * 4096


def test_plain_table_without_rich(monkeypatch, capsys):
    from fusedopt.bench import report
    for mod in ("rich", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, mod, None)     # import of any of them raises ImportError
    rec = dict(impl="torch-fused", status="ok", reason=None, backend=None, median_ms=2.0, p20_ms=1.5,
               p80_ms=2.5, gbps=10.0, roofline_frac=0.5, vs_torch_fused=1.0, launches_per_step=None,
               host_overhead_us=12.0, peak_mem_bytes=2**20)
    skip = dict(rec, impl="apex", status="skipped", reason="apex: CUDA only", median_ms=None)
    report.print_table("t", [rec, skip], copy_gbps=20.0)
    out = capsys.readouterr().out
    assert "torch-fused" in out and "1.00x" in out and "50%" in out
    assert re.search(r"^skipped: apex \(apex: CUDA only\)$", out, re.M)
    assert "launches" not in out and "GB/s / 20.0 GB/s" in out


def test_import_fusedopt_stays_light():
    code = ("import sys, fusedopt; bad = [m for m in ('rich', 'matplotlib', 'tqdm', "
            "'fusedopt.bench') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# ---- what a newcomer reads (issue 17) ------------------------------------------------------------
def _table_lines(out):
    """The lines of the printed tables: from a title line to the first note under it."""
    lines, inside = [], False
    for line in out.splitlines():
        if line.startswith(("results", "numel=", "groups=")):
            inside = True
        elif line.startswith(("vs stream:", "vs torch-fused:", "skipped:", "failed:")) or not line:
            inside = False
        if inside:
            lines.append(line)
    return lines


@pytest.mark.parametrize("rich", [True, False])
def test_table_is_narrow_skips_in_one_line_and_drops_empty_columns(tmp_path, monkeypatch, capsys,
                                                                  rich):
    if not rich:
        for mod in ("rich", "rich.box", "rich.console", "rich.table"):
            monkeypatch.setitem(sys.modules, mod, None)
    else:
        pytest.importorskip("rich")
    run_cli(tmp_path, "--impl", "fusedopt,fusedopt-reference,torch-forloop,torch-foreach,"
                      "torch-fused,apex,deepspeed,te")
    out = capsys.readouterr().out
    table = _table_lines(out)
    header = next(line for line in table if "median ms" in line)
    assert len(table) >= 7 and max(len(line) for line in table) <= 100, "\n".join(table)
    assert "launches" not in header and "vs stream" in header and "roofline" not in out
    assert not any(name in line for line in table for name in ("apex", "deepspeed", " te "))
    skipped = [line for line in out.splitlines() if line.startswith("skipped:")]
    assert len(skipped) == 1 and all(f"{n} (" in skipped[0] for n in ("apex", "deepspeed", "te"))


def test_default_output_location_is_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*TINY, "--impl", "torch-fused", "--clip", "--groups", "per-param"]) == 0
    out = capsys.readouterr().out
    slug = json.loads(next(tmp_path.rglob("*.json")).read_text())["device"]["slug"]
    stem = f"{cli.RESULTS_DIR}/{slug}/adamw-clip-4096-4t-per-param"
    assert f"wrote {tmp_path / stem}.json\n" in out
    data = json.loads((tmp_path / f"{stem}.json").read_text())
    assert data["options"]["json"] == f"{stem}.json"
    if have_matplotlib():
        assert f"wrote {tmp_path / stem}.png\n" in out and (tmp_path / f"{stem}.png").exists()


def test_default_run_names():
    parse = lambda *a: cli.resolve(cli.build_parser().parse_args(["--device", "cpu", *a]),  # noqa
                                   cli.build_parser())
    assert cli.default_stem(parse()) == "adamw-resnet50"
    assert cli.default_stem(parse("--numel", "20M", "--tensors", "200", "--clip")) == \
        "adamw-clip-20M-200t"
    assert cli.default_stem(parse("--optimizer", "sgd", "--dtype", "bf16", "--numel", "16000",
                                  "--tensors", "1000", "--groups", "per-param")) == \
        "sgd-bf16-16k-1000t-per-param"
    assert cli.default_stem(parse("--preset", "vit-b16", "--sweep", "groups")) == \
        "adamw-vit-b16-sweep-groups"


def test_sweep_tables_show_each_points_stream(tmp_path, capsys):
    data, _ = run_cli(tmp_path, "--impl", "fusedopt,torch-fused", "--sweep", "groups", "--steps", "1")
    out = capsys.readouterr().out
    for v in data["options"]["sweep_values"]:
        rs = [r for r in data["results"] if r["sweep_value"] == v]
        copy = rs[0]["copy_gbps"]
        assert all(r["roofline_frac"] == pytest.approx(r["gbps"] / copy) for r in rs)
        title = next(line for line in out.splitlines() if line.startswith(f"groups={v} "))
        assert title.endswith(f"stream {copy:.1f} GB/s)"), title
    notes = [line for line in out.splitlines() if line.startswith("vs stream:")]
    assert notes == [f"vs stream: GB/s / {data['results'][i]['copy_gbps']:.1f} GB/s of torch's "
                     "in-place add_ timed alongside; a reference, not a ceiling" for i in (0, 2)]
    first = next(line for line in out.splitlines() if line.startswith("stream: "))
    assert "timed at each point" in first


def _doc(fused_gbps, copy=20.0):
    rec = dict(status="ok", reason=None, backend=None, launches_per_step=None, host_overhead_us=1.0,
               peak_mem_bytes=1, copy_gbps=copy)
    rows = [("fusedopt", 1.0, 0.5, 3.0, fused_gbps), ("torch-forloop", 8.0, 6.0, 9.5, 3.0),
            ("torch-foreach", 3.0, 2.9, 3.1, 8.0), ("torch-fused", 2.0, 1.0, 4.0, 12.0)]
    results = [dict(rec, impl=i, median_ms=m, p20_ms=lo, p80_ms=hi, gbps=g, roofline_frac=g / copy,
                    vs_torch_fused=2.0 / m) for i, m, lo, hi, g in rows]
    return {"device": {"type": "cpu", "name": "test cpu", "copy_gbps": copy},
            "torch": {"version": torch.__version__},
            "options": {"optimizer": "adamw", "dtype": "fp32", "numel": 4096, "tensors": 4,
                        "groups": "1", "sweep": None, "bytes_per_param": 28},
            "results": results}


@pytest.mark.skipif(not have_matplotlib(), reason="matplotlib is not installed")
def test_plot_ratio_labels_clear_of_whiskers_and_caption_explains_the_line():
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection
    from fusedopt.bench import plot
    fig = plot.figure(_doc(fused_gbps=30.0))
    renderer = fig.canvas.get_renderer()
    ax_t = fig.axes[0]
    labels = [t for t in ax_t.texts if "x\nvs torch-fused" in t.get_text()]
    assert len(labels) == 4
    boxes = [t.get_window_extent(renderer) for t in labels]
    whiskers = [seg for c in ax_t.collections if isinstance(c, LineCollection)
                for seg in c.get_segments()]
    assert whiskers
    for box in boxes:
        assert ax_t.get_window_extent(renderer).contains(box.x0, box.y1)     # inside the axes
        for seg in whiskers:
            (x0, y0), (x1, y1) = ax_t.transData.transform(seg)
            assert not box.overlaps(type(box).from_extents(min(x0, x1) - 1, min(y0, y1) - 1,
                                                          max(x0, x1) + 1, max(y0, y1) + 1))
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    text = "\n".join(t.get_text() for t in fig.texts)
    assert "in-place add_ stream" in text and "fusedopt rises above it (up to 150%)" in text
    plt.close(fig)
    fig = plot.figure(_doc(fused_gbps=15.0))
    assert "above it" not in "\n".join(t.get_text() for t in fig.texts)
    plt.close(fig)


# ---- the check before timing (issue 27, Note [checked baselines]) --------------------------------
class _NoStep(torch.optim.SGD):
    """Deliberately wrong: a step that updates nothing (the shape of pytorch#191763)."""

    def step(self, closure=None):
        return None


def _wrong_impls(monkeypatch):
    """torch-fused steps nothing; torch-foreach steps with lr 0.1% too large. Both are wrong;
    the no-op is also the fastest torch implementation."""
    from fusedopt.bench import impls
    build = impls.build

    def wrong_build(impl, optimizer, groups, device, hp=None):
        if impl == "torch-fused":
            return _NoStep(groups, lr=1e-3)
        if impl == "torch-foreach":
            hp = dict(impls.hyper(optimizer) if hp is None else hp)
            for g in groups:
                g["lr"] = g.get("lr", hp["lr"]) * 1.001
            hp["lr"] *= 1.001
        return build(impl, optimizer, groups, device, hp)
    monkeypatch.setattr(impls, "build", wrong_build)


def test_wrong_implementations_are_flagged_and_never_the_baseline(tmp_path, monkeypatch, capsys):
    for mod in ("rich", "rich.console", "rich.table"):
        monkeypatch.setitem(sys.modules, mod, None)
    _wrong_impls(monkeypatch)
    data, _ = run_cli(tmp_path, "--impl", "fusedopt,fusedopt-reference,torch-forloop,"
                                          "torch-foreach,torch-fused")
    by = {r["impl"]: r for r in data["results"]}
    assert all(r["status"] == "ok" for r in data["results"])       # wrong ones are still timed
    assert by["fusedopt-reference"]["check"]["verdict"] == "oracle"
    assert by["fusedopt"]["check"]["verdict"] == "ok"
    assert by["torch-forloop"]["check"]["verdict"] == "ok"
    for impl in ("torch-fused", "torch-foreach"):
        c = by[impl]["check"]
        assert c["verdict"] == "wrong" and c["err_ulps"] > c["bound_ulps"], c
    # how far off: a no-op is off by the whole movement; 0.1% of lr by about 0.1% of it
    assert by["torch-fused"]["check"]["err_ulps"] >= by["torch-fused"]["check"]["moved_ulps"]
    assert by["torch-foreach"]["check"]["err_ulps"] < by["torch-foreach"]["check"]["moved_ulps"]
    for r in data["results"]:
        assert r["baseline"] == "torch-forloop"
        assert r["vs_baseline"] == pytest.approx(by["torch-forloop"]["median_ms"] / r["median_ms"])
        assert r["vs_torch_fused"] is None          # torch-fused is wrong: no ratio to it
    out = capsys.readouterr().out
    assert re.search(r"^torch-fused WRONG +\d", out, re.M), out
    assert re.search(r"^WRONG: torch-fused: [\d,.]+ ulps from fusedopt-reference after 4 steps "
                     r"\(bound 8", out, re.M), out
    assert re.search(r"^WRONG: torch-foreach: ", out, re.M) and "vs torch-forloop" in out
    assert not re.search(r"^(fusedopt|torch-forloop)\S* WRONG", out, re.M)
    from fusedopt.bench import summary           # the sweep table (issue 27) says the same
    cells = dict(zip(summary.HEADER, summary.row(data)))
    assert cells["vs fastest correct torch"] == \
        f"{by['fusedopt']['vs_baseline']:.2f}x vs torch-forloop"
    assert cells["torch rows WRONG"] == "torch-foreach, torch-fused"
    assert cells["level"] == data["device"]["fusedopt_cpu_level"] in ("avx512", "avx2", "scalar")


def _torch_fused_sgd_moves(dtype):
    """Whether torch's fused CPU SGD moves a 64-element param at all (pytorch#191763)."""
    p = torch.ones(64, dtype=dtype, requires_grad=True)
    p.grad = torch.ones(64, dtype=dtype)
    torch.optim.SGD([p], lr=0.1, fused=True).step()
    return bool((p.detach() != 1).any())


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_torch_fused_sgd_low_precision_shown_as_it_is(tmp_path, dtype):
    """torch 2.12/2.13's fused CPU SGD in bf16/fp16 (#191763): flagged wrong exactly when it
    updates nothing, and then never the baseline."""
    data, _ = run_cli(tmp_path, "--optimizer", "sgd", "--dtype", dtype, "--impl",
                      "fusedopt,torch-forloop,torch-fused")
    by = {r["impl"]: r for r in data["results"]}
    broken = not _torch_fused_sgd_moves(cli.DTYPES[dtype])
    assert by["torch-fused"]["check"]["verdict"] == ("wrong" if broken else "ok")
    assert by["fusedopt"]["check"]["verdict"] == "ok"
    assert by["torch-forloop"]["check"]["verdict"] == "ok"
    if broken:
        assert all(r["baseline"] == "torch-forloop" for r in data["results"])


def test_check_bound_holds_correct_implementations():
    """Correct implementations (torch's three, fusedopt's backends) sit within the bound in
    every dtype; the oracle moved each element by several bounds, so a no-op cannot pass."""
    from fusedopt.bench import check
    names = ["fusedopt", "fusedopt-reference", "torch-forloop", "torch-foreach"]
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        res = check.check_all(names, optimizer="adamw", dtype=dtype, clip=True, amp=False,
                              device=torch.device("cpu"))
        for impl, rec in res.items():
            assert rec["verdict"] in ("ok", "oracle"), (dtype, impl, rec)
            assert rec["moved_ulps"] > 4 * rec["bound_ulps"], (dtype, impl, rec)


# ---- the host preset (issue 28 item 4) ------------------------------------------------------------
def test_host_preset(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(presets, "HOST_COUNTS", (1, 3, 8))
    out_json = tmp_path / "h.json"
    assert cli.main(["--device", "cpu", "--preset", "host", "--steps", "3", "--warmup", "1",
                     "--json", str(out_json), "--plot", str(tmp_path / "h.png")]) == 0
    data = json.loads(out_json.read_text())
    assert data["options"]["sweep"] == "host" and data["options"]["sweep_values"] == [1, 3, 8]
    impls = ["fusedopt-cpu", "fusedopt-reference", "torch-fused"]
    assert data["options"]["impl"] == impls
    ok = [r for r in data["results"] if r["status"] == "ok"]
    assert {r["impl"] for r in ok} >= {"fusedopt-reference", "torch-fused"}
    for r in ok:
        n = r["sweep_value"]
        assert r["tensors"] == r["groups"] == n and r["numel"] == 64 * n
        assert r["host_us"] == pytest.approx(r["median_ms"] * 1e3)
        assert r["ns_per_tensor_avg"] == pytest.approx(r["median_ms"] * 1e6 / n)
        assert 0 < r["cpu_us"] == pytest.approx(r["cpu_ms"] * 1e3)
        one = next(x for x in ok if x["impl"] == r["impl"] and x["sweep_value"] == 1)
        if n == 1:
            assert r["ns_per_tensor"] is None and r["ns_per_tensor_cpu"] is None
        else:
            assert r["ns_per_tensor"] == pytest.approx((r["median_ms"] - one["median_ms"]) * 1e6
                                                       / (n - 1))
            assert r["ns_per_tensor_cpu"] == pytest.approx((r["cpu_ms"] - one["cpu_ms"]) * 1e6
                                                           / (n - 1))
    assert "copy_gbps" not in data["device"] or data["device"]["copy_gbps"] is None
    out = capsys.readouterr().out
    assert "host time of a step" in out and "ns/t" in out and "cpu µs" in out
    rows = [line.split() for line in out.splitlines() if re.match(r"^\s*(1|3|8)\s", line)]
    assert [row[0] for row in rows] == ["1", "3", "8"]
    if have_matplotlib():
        assert (tmp_path / "h.png").exists()


# ---- provenance: device, revision, a dirty tree seen (issue 28 item 6) ----------------------------
def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
                        "PATH": "/usr/bin:/bin"})


def test_git_dirty_is_computed_from_the_tree(tmp_path, monkeypatch):
    from fusedopt.bench import report
    monkeypatch.delenv("FUSEDOPT_GIT_COMMIT", raising=False)
    outside = tmp_path / "outside"               # a copied tree without .git
    outside.mkdir()
    tmp_path = tmp_path / "repo"
    tmp_path.mkdir()
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-qm", "one")
    clean = report.git_info(str(tmp_path))
    assert clean["dirty"] is False and clean["changes"] == [] and len(clean["commit"]) == 40
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "r.json").write_text("{}")     # a run's output
    assert report.git_info(str(tmp_path))["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    (tmp_path / "new.py").write_text("")
    info = report.git_info(str(tmp_path))
    assert info["dirty"] is True and info["changes"] == ["a.py", "new.py"]
    assert info["describe"].endswith("-dirty")
    # a copied tree named by FUSEDOPT_GIT_COMMIT: compared with that commit where it is known
    monkeypatch.setenv("FUSEDOPT_GIT_COMMIT", clean["commit"])
    assert report.git_info(str(tmp_path))["dirty"] is True
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "new.py").unlink()
    named = report.git_info(str(tmp_path))
    assert named["dirty"] is False and named["named_by"] == "FUSEDOPT_GIT_COMMIT"
    monkeypatch.setenv("FUSEDOPT_GIT_COMMIT", "f" * 40)               # unknown here: cannot tell
    assert report.git_info(str(tmp_path))["dirty"] is None
    assert report.git_info(str(outside))["dirty"] is None   # no .git at all, only the name
    monkeypatch.delenv("FUSEDOPT_GIT_COMMIT")
    assert report.git_info(str(outside)) is None


def test_result_carries_device_revision_and_both_references(tmp_path):
    data, _ = run_cli(tmp_path, "--impl", "fusedopt,torch-fused")
    assert data["git"]["commit"] and data["git"]["dirty"] in (True, False)
    dev = data["device"]
    assert dev["slug"] and dev["name"]
    for prefix, per_elem in (("copy", "12 B/element"), ("real_copy", "8 B/element")):
        assert dev[f"{prefix}_gbps"] > 0 and per_elem in dev[f"{prefix}_method"]
        assert dev[f"{prefix}_gbps_p20"] <= dev[f"{prefix}_gbps"] <= dev[f"{prefix}_gbps_p80"]
    for r in data["results"]:
        assert r["real_copy_frac"] == pytest.approx(r["gbps"] / r["real_copy_gbps"])

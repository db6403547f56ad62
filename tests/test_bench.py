"""`nami bench`: the JSON contracts, interleaving, FLOPs beside every figure, one-line errors.

Benchmarks are commands, not timed tests: nothing here asserts that one mode is faster.
"""

import importlib.util
import json

import pytest
import torch

from nami_core.flow.flops import forward_flops
from nami_core.bench.gpus import device_peak_tflops, gpu_peak
from nami_core.bench.latency import LatencyRequest, LatencyRunner, interleaved_schedule, run_latency
from nami_core.bench.throughput import split_batch
from nami_core.config import get_preset
from tests.helpers import run_cli

TINY = get_preset("tiny").model
RESULT_KEYS = {"resolution", "mode", "attention", "ms_median", "ms_min", "ms_max", "ms_per_stage", "flops",
               "peak_mem_bytes", "ops_per_step"}



def test_latency_json_contract_flops_and_plot(tmp_path, capsys):
    out, plot = tmp_path / "out.json", tmp_path / "fig" / "latency.png"
    code, stdout, err = run_cli(
        ["bench", "latency", "--preset", "tiny", "--device", "cpu", "--resolutions", "64,128", "--steps", "3",
         "--warmup", "0", "--repeats", "1", "--text-tokens", "16", "--json", str(out), "--plot", str(plot)], capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert set(report) == {"device", "dtype", "attention", "attentions", "text_tokens", "text_slot", "cfg", "op_counter",
                           "results", "reduction", "reduction_by_attention", "bound", "compile"}
    assert report["compile"] is None  # not compiled
    assert report["device"].startswith("cpu") and report["dtype"] == "fp32" and report["attention"] == "native"
    # the default workload: a 12-token prompt in the 16-token slot, cut to 12; guidance 3, empty negative
    assert (report["text_tokens"], report["text_slot"], report["cfg"]) == (12, 16, 3.0)
    assert report["attentions"] == ["native"] and report["op_counter"] == "aten ops"
    assert report["reduction_by_attention"] == {"native": report["reduction"]}
    results = report["results"]
    assert [(r["resolution"], r["mode"]) for r in results] == [
        (res, mode) for res in (64, 128) for mode in ("flux-base", "flow-only", "nami")]
    for r in results:
        assert set(r) == RESULT_KEYS
        assert r["peak_mem_bytes"] is None
        assert len(r["ms_per_stage"]) == (1 if r["mode"] == "flux-base" else 3)
        # one timed run: its total is the sum of its stages, and median = min = max
        assert r["ms_median"] == r["ms_min"] == r["ms_max"] == pytest.approx(sum(r["ms_per_stage"]), rel=1e-9)
        assert all(s > 0 for s in r["ms_per_stage"])
    by = {(r["resolution"], r["mode"]): r for r in results}
    # FLOPs per image, counted independently: "3" steps = 3 full forwards for flux-base, 1,1,1 otherwise,
    # two forwards per step (guidance), 12 text tokens; a 128 px image is 8x8 = 64 tokens (16 px per
    # token), stages 32/64/128 px = 4/16/64 tokens; tiny ends 2/4/6.
    assert by[128, "flux-base"]["flops"] == pytest.approx(2 * 3 * forward_flops(TINY, 64, 12, 6), rel=1e-12)
    assert by[128, "flow-only"]["flops"] == pytest.approx(2 * sum(forward_flops(TINY, n, 12, 6) for n in (4, 16, 64)))
    assert by[128, "nami"]["flops"] == pytest.approx(
        2 * (forward_flops(TINY, 4, 12, 2) + forward_flops(TINY, 16, 12, 4) + forward_flops(TINY, 64, 12, 6)))
    # ops per Euler step: the nested modules run fewer blocks, so fewer ops, in the early stages
    assert [len(by[128, m]["ops_per_step"]) for m in ("flux-base", "flow-only", "nami")] == [1, 3, 3]
    assert by[128, "nami"]["ops_per_step"][0] < by[128, "flow-only"]["ops_per_step"][0]
    assert by[128, "nami"]["ops_per_step"][2] == by[128, "flow-only"]["ops_per_step"][2]
    for res in (64, 128):
        base = by[res, "flux-base"]
        assert set(report["reduction"][str(res)]) == set(report["bound"][str(res)]) == {"flow-only", "nami"}
        for mode in ("flow-only", "nami"):
            measured = 1 - by[res, mode]["ms_median"] / base["ms_median"]
            assert report["reduction"][str(res)][mode] == pytest.approx(measured)
            assert report["bound"][str(res)][mode] == pytest.approx(1 - by[res, mode]["flops"] / base["flops"])
            assert 0 < report["bound"][str(res)][mode] < 1
    assert report["bound"]["128"]["nami"] > report["bound"]["128"]["flow-only"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert "flux-base" in stdout and "FLOP bound" in stdout


def test_modes_run_interleaved_round_by_round(monkeypatch):
    assert [(s.round, s.mode, s.timed) for s in interleaved_schedule(["a", "b"], 1, 2)] == [
        (0, "a", False), (0, "b", False), (1, "a", True), (1, "b", True), (2, "a", True), (2, "b", True)]
    sampler_calls = []
    original = LatencyRunner.run

    def recording_run(self, plan, steps):
        sampler_calls.append((plan.flow.resolutions[-1], plan.mode, tuple(steps)))
        return original(self, plan, steps)

    monkeypatch.setattr(LatencyRunner, "run", recording_run)
    req = LatencyRequest(preset="tiny", device="cpu", resolutions=(64, 128), steps="3", modes=("nami", "flux-base"),
                         warmup=1, repeats=2, text_tokens=4, prompt_tokens=3, count_ops=False)
    report = run_latency(req)
    one_round = [("nami", (1, 1, 1)), ("flux-base", (3,))]
    assert sampler_calls == [(res, mode, steps) for res in (64, 128) for _ in range(3) for mode, steps in one_round]
    # without flow-only in --modes, reduction and bound cover nami only
    assert report["reduction"]["64"].keys() == report["bound"]["64"].keys() == {"nami"}


def test_model_dir_with_text_encoder_and_codec(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "m.json"
    code, _, err = run_cli(
        ["bench", "latency", "--model", str(tiny_model_dir), "--device", "cpu", "--resolutions", "64", "--steps",
         "3", "--warmup", "0", "--repeats", "1", "--modes", "nami", "--include-text", "--include-codec",
         "--json", str(out)], capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    (r,) = report["results"]
    assert set(r) == RESULT_KEYS | {"ms_text", "ms_codec"}
    assert r["ms_text"] > 0 and r["ms_codec"] > 0
    assert r["ms_median"] == pytest.approx(sum(r["ms_per_stage"]) + r["ms_text"] + r["ms_codec"])
    # the model's own layout: pixel codec with 4 px tokens, stages 16/32/64 px, its encoder's 12-token slot
    # cut to the bench prompt's real tokens (the empty negative is shorter), two forwards per step
    from transformers import AutoTokenizer

    from nami_core.bench.latency import BENCH_PROMPT
    from nami_core.config import ModelConfig
    from nami_core.text.encoder import minilm_path

    real = len(AutoTokenizer.from_pretrained(minilm_path())(BENCH_PROMPT).input_ids)
    assert report["text_tokens"] == real < 12
    cfg = ModelConfig.from_transformer_config(json.loads((tiny_model_dir / "transformer" / "config.json").read_text()))
    assert r["flops"] == pytest.approx(2 * sum(forward_flops(cfg, n, real, b) for n, b in ((16, 1), (64, 2), (256, 3))))


def test_cuda_without_gpu_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is available")
    for command in ("latency", "train"):
        code, _, err = run_cli(["bench", command, "--preset", "tiny", "--device", "cuda"], capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "no CUDA GPU is available" in lines[0], err


def test_missing_xformers_names_the_extra(capsys):
    if importlib.util.find_spec("xformers") is not None:
        pytest.skip("xformers is installed")
    for command in ("latency", "train"):
        code, _, err = run_cli(["bench", command, "--preset", "tiny", "--device", "cpu", "--attention", "xformers"],
                               capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "pip install 'nami[xformers]'" in lines[0], err


@pytest.mark.parametrize(
    "args,message",
    [
        (["latency", "--preset", "tiny", "--resolutions", "100"], "use a final resolution that is a multiple of 64"),
        (["latency", "--preset", "tiny", "--modes", "nami,fast"], "mode must be one of"),
        (["latency", "--preset", "tiny", "--modes", "nami,nami"], "--modes lists 'nami' twice"),
        (["latency", "--preset", "tiny", "--repeats", "0"], "--repeats must be at least 1"),
        (["latency", "--preset", "tiny", "--include-text"], "--include-text needs --model"),
        (["latency", "--preset", "tiny", "--plot", "fig.txt"], "--plot fig.txt: the plot is written as .png or .pdf or .svg"),
        (["latency", "--preset", "nope"], "--preset must be one of nami-2b, nami-0.6b, flux-base-2b, tiny, cpu-bench, got 'nope'"),
        (["latency", "--preset", "tiny", "--model", "x"], "not both"),
        (["latency", "--preset", "tiny", "--dtype", "fp8"], "dtype must be one of"),
        (["train", "--preset", "tiny", "--stage-mix", "1:1"], "--stage-mix has 2 weights for 3 stages, got 1:1"),
        (["train", "--preset", "tiny", "--stages", "64,128,250"], "must double"),
        (["train", "--preset", "tiny", "--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_input_is_one_line(args, message, capsys):
    code, _, err = run_cli(["bench", *args, "--device", "cpu"], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], err


def test_train_reports_throughput_flops_and_no_mfu_on_cpu(tmp_path, capsys):
    out = tmp_path / "train.json"
    code, stdout, err = run_cli(
        ["bench", "train", "--preset", "tiny", "--device", "cpu", "--stages", "32,64,128", "--batch-size", "7",
         "--steps", "2", "--warmup", "1", "--text-tokens", "8", "--json", str(out)], capsys)
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["peak_tflops"] is None and report["dtype"] == "fp32" and report["batch"] == 7
    results = report["results"]
    assert [r["config"] for r in results] == ["stage 1", "stage 2", "stage 3", "mix 4:2:1"]
    assert [r["samples_per_stage"] for r in results] == [[7, 0, 0], [0, 7, 0], [0, 0, 7], [4, 2, 1]]
    tokens = (4, 16, 64)  # image tokens at 32/64/128 px
    blocks = TINY.stage_ends
    for r in results:
        counts = r["samples_per_stage"]
        seconds = r["step_ms_median"] / 1000
        assert r["step_ms_min"] <= r["step_ms_median"] <= r["step_ms_max"]
        assert r["mfu"] is None and r["peak_mem_bytes"] is None
        assert r["images_per_s"] == pytest.approx(7 / seconds)
        assert r["tokens_per_s"] == pytest.approx(sum(n * (t + 8) for n, t in zip(counts, tokens)) / seconds)
        expected = 3 * sum(n * forward_flops(TINY, t, 8, b) for n, t, b in zip(counts, tokens, blocks))
        assert r["train_flops_per_step"] == pytest.approx(expected)
        assert r["tflops_per_s"] == pytest.approx(expected / seconds / 1e12)
    assert "mix 4:2:1" in stdout and "TFLOP/s" in stdout


def test_split_batch_follows_the_ratio():
    assert split_batch(7, (4, 2, 1)) == [4, 2, 1]
    assert split_batch(8, (4, 2, 1)) == [5, 2, 1]
    assert split_batch(14, (1, 2, 4)) == [2, 4, 8]
    assert split_batch(1, (4, 2, 1)) == [1, 0, 0]
    assert split_batch(5, (1, 1, 1)) == [2, 2, 1]
    assert split_batch(32, (2, 4, 1)) == [9, 18, 5]


@pytest.mark.parametrize(
    "name,label,tflops",
    [
        ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.0),
        ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", "H100 NVL", 835.0),
        ("NVIDIA H200", "H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
        ("NVIDIA A100 80GB PCIe", "A100", 312.0),
        ("NVIDIA A10", "A10", 125.0),
        ("NVIDIA L40S", "L40S", 362.0),
        ("NVIDIA L40", "L40", 181.0),
        ("NVIDIA L4", "L4", 121.0),
        ("NVIDIA GeForce RTX 4090", "RTX 4090", 165.0),
    ],
)
def test_gpu_peak_table(name, label, tflops):
    assert gpu_peak(name) == (label, tflops)


def test_unknown_gpu_and_cpu_have_no_peak():
    assert gpu_peak("Tesla V100-SXM2-16GB") is None
    assert gpu_peak("NVIDIA A10G") is None
    assert device_peak_tflops(torch.device("cpu"), torch.bfloat16) is None


def test_preset_decode_uses_a_flux_sized_vae():
    req = LatencyRequest(preset="tiny", device="cpu", resolutions=(64,), steps="3", modes=("nami",), warmup=0,
                         repeats=1, text_tokens=4, prompt_tokens=4, cfg=1.0, include_codec=True, count_ops=False)
    (r,) = run_latency(req)["results"]
    assert r["ms_codec"] > 0 and "ms_text" not in r
    assert r["ms_median"] == pytest.approx(sum(r["ms_per_stage"]) + r["ms_codec"])
    # decode is not part of the transformer FLOPs: 1,1,1 steps at 16/32/64 px = 1/4/16 tokens
    assert r["flops"] == pytest.approx(sum(forward_flops(TINY, n, 4, b) for n, b in ((1, 2), (4, 4), (16, 6))))


def test_guidance_doubles_the_forwards():
    base = dict(preset="tiny", device="cpu", resolutions=(64,), steps="3", modes=("flux-base", "nami"), warmup=0,
                repeats=1, text_tokens=4, prompt_tokens=4, count_ops=False)
    plain = run_latency(LatencyRequest(**base, cfg=1.0))
    guided = run_latency(LatencyRequest(**base, cfg=3.0))
    for a, b in zip(plain["results"], guided["results"]):
        assert b["flops"] == pytest.approx(2 * a["flops"])
    assert guided["bound"]["64"]["nami"] == pytest.approx(plain["bound"]["64"]["nami"])

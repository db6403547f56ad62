"""examples/gpu_check.py, the GPU acceptance check, runs end to end on the CPU (tiny preset)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "gpu_check.py"


def test_gpu_check_runs_on_the_cpu_and_writes_its_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    code = gpu_check.main(["--device", "cpu", "--preset", "tiny", "--resolutions", "64", "--steps", "3",
                           "--dtype", "fp32", "--warmup", "0", "--repeats", "1", "--compile-backends", "none",
                           "--train-stages", "32,64,128", "--train-batch", "3", "--train-steps", "1",
                           "--train-checkpointing", "none,auto", "--no-train-compile", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    assert report["backends"] == ["native"] and report["skipped"] == []
    (run,) = report["latency"]
    assert [(r["mode"], r["attention"]) for r in run["results"]] == [
        ("flux-base", "native"), ("flow-only", "native"), ("nami", "native")]
    assert {(a["text_padding"], a["max_abs_diff_vs_native"]) for a in report["agreement"]} == {("mask", 0.0), ("none", 0.0)}
    assert "of bound" in out and "nami" in out and "no host sync inside a stage" in out
    assert [(t["grad_checkpointing"], [r["config"] for r in t["results"]]) for t in report["training"]] == [
        ("none", ["stage 3", "mix 4:2:1"]), ("auto", ["stage 3", "mix 4:2:1"])]
    assert "MFU" in out and "est. MiB" in out
    assert [(r["mode"], r["shape"]) for r in report["lora_and_sizes"]] == [
        (m, [1, 64, 128, 3]) for m in ("flux-base", "flow-only", "nami")]
    assert all(r["lora_effect"] > 0 for r in report["lora_and_sizes"])
    step = report["lora_step"]
    assert step["resolution"] == 128 and step["trainable_params"] > 0 and step["estimated_mib"] > 0
    assert "LoRA rank 16 step at 128²" in out

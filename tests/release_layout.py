"""The public NAMI-T2I release at tiny scale, and an independent model of its inference code.

`write_release` builds a directory in exactly the release's layout, with random weights:

    transformer/pytorch_model_fsdp.bin   FLUX keys, 8 double + 14 single blocks, width 128 (1 head x 128)
    bridge_flow.bin                      scale (2,), shift.0 (1, 16, 8, 8), shift.1 (1, 16, 16, 16)
    vae/                                 a 4-block (f8) AutoencoderKL with 16 latent channels
    mclip/tokenizer/ + mclip/clip_text_encoder/   a tiny BERT (or one flat folder)
    mt5/                                 a tiny MT5ForConditionalGeneration + spiece.model only

so the stages are 32 / 64 / 128 px (latent sides 4 / 8 / 16). The vocabularies cover a few
English, German and Chinese words.

The rest of the module re-implements what the release's inference code does, from its
description rather than its code, with sentencepiece, transformers and diffusers primitives:

* scheduler: a grid of 1000 float32 sigmas (1000 - i) / 1000; window edges at the grid indices
  int(edge * 1000); window starts after the first corrected for gamma; the timestep grid split
  by arc length into (t_max, t_min); in each window a fine grid of int(t_max - t_min) + 1
  points from t_max to t_min and of local ratios from 1 to 0, last point dropped; an n-step
  stage runs n points evenly spaced between the fine grids' first and last points, then r = 0;
* text: mT5 over the padded 256 token ids with no attention mask (last hidden state), mCLIP over
  77 tokens with its mask (first token of the last hidden state);
* sampler: noise at full resolution, bilinear halving times 2 down to stage 1; Euler steps
  with CFG [negative, positive] and no attention mask; bridge `scale * nearest-up + shift`.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MT5_DIM, MCLIP_DIM, WIDTH = 16, 24, 128
SCALING, SHIFT = 0.3611, 0.1159  # FLUX VAE normalisation
BRIDGE_SIDES = (8, 16)  # latent sides of stages 2 and 3
STAGE_BLOCKS = (9, 16, 22)  # 8 double blocks, then the first 1 / 8 / 14 single blocks
MT5_TOKENS, MCLIP_TOKENS = 256, 77

CORPUS = [
    "a photo of a red circle left of a blue square", "a green triangle above a yellow diamond",
    "a photo of a cat and a dog", "ein Foto von einer Katze und einem Hund", "ein roter Kreis links von einem blauen Quadrat",
    "一只猫", "一只狗和一只猫", "红色的圆在蓝色的方块左边", "一张照片",
]
BERT_WORDS = (
    "a photo of the and left right above below red green blue yellow circle square triangle diamond cat dog "
    "ein foto von einer katze und einem hund roter kreis links blauen quadrat "
    "一 只 猫 狗 和 红 色 的 圆 在 蓝 方 块 左 边 张 照 片"
).split()


def tiny_flux_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 16, 16), latent_channels=16,
        layers_per_block=1, norm_num_groups=4, scaling_factor=SCALING, shift_factor=SHIFT,
        use_quant_conv=False, use_post_quant_conv=False,
    ).eval()


def flux_kwargs(**overrides):
    kw = dict(patch_size=1, in_channels=64, num_layers=8, num_single_layers=14, attention_head_dim=128,
              num_attention_heads=1, joint_attention_dim=MT5_DIM, pooled_projection_dim=MCLIP_DIM,
              guidance_embeds=False, axes_dims_rope=(16, 56, 56))
    kw.update(overrides)
    return kw


def write_mclip(folder: Path, layout: str) -> None:
    """A random 1-layer BERT; "split": tokenizer/ (a bare vocab.txt) beside clip_text_encoder/."""
    from transformers import BertConfig, BertModel

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + BERT_WORDS
    tokenizer = folder / "tokenizer" if layout == "split" else folder
    model = folder / "clip_text_encoder" if layout == "split" else folder
    tokenizer.mkdir(parents=True, exist_ok=True)
    (tokenizer / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(3)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=MCLIP_DIM, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=2 * MCLIP_DIM, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(model)


def train_spiece(corpus: list[str]) -> bytes:
    """A unigram sentencepiece model with mT5's special ids (pad 0, eos 1, unk 2, no bos)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 10), model_writer=buf, vocab_size=90, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, minloglevel=2,
    )
    return buf.getvalue()


def write_mt5(folder: Path, spiece: bytes) -> None:
    """A random 1-layer MT5ForConditionalGeneration and `spiece.model`, no tokenizer.json."""
    import sentencepiece as spm
    from transformers import MT5Config, MT5ForConditionalGeneration

    vocab = spm.SentencePieceProcessor(model_proto=spiece).get_piece_size()
    torch.manual_seed(4)
    cfg = MT5Config(vocab_size=vocab, d_model=MT5_DIM, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                    num_heads=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    MT5ForConditionalGeneration(cfg).save_pretrained(folder)
    (folder / "spiece.model").write_bytes(spiece)
    for leftover in ("generation_config.json",):
        (folder / leftover).unlink(missing_ok=True)


def write_release(root: Path, mclip_layout: str = "split") -> Path:
    """The release's directory layout at tiny scale (see module doc)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    flux = FluxTransformer2DModel(**flux_kwargs())
    (root / "transformer").mkdir(parents=True)
    torch.save(flux.state_dict(), root / "transformer" / "pytorch_model_fsdp.bin")
    g = torch.Generator().manual_seed(2)
    bridge = {"scale": torch.tensor([0.9, 1.1])}
    for k, side in enumerate(BRIDGE_SIDES):
        bridge[f"shift.{k}"] = 0.1 * torch.randn(1, 16, side, side, generator=g)
    torch.save(bridge, root / "bridge_flow.bin")
    tiny_flux_vae().save_pretrained(root / "vae")
    write_mclip(root / "mclip", mclip_layout)
    write_mt5(root / "mt5", train_spiece(CORPUS))
    return root


def flatten_mclip(src: Path, dst: Path) -> Path:
    """A copy of release `src` with mclip/ as one flat folder (weights, config and vocab.txt), the
    other parts linked."""
    dst.mkdir(parents=True)
    for part in src.iterdir():
        if part.name != "mclip":
            (dst / part.name).symlink_to(part, target_is_directory=part.is_dir())
    shutil.copytree(src / "mclip" / "clip_text_encoder", dst / "mclip")
    shutil.copy(src / "mclip" / "tokenizer" / "vocab.txt", dst / "mclip" / "vocab.txt")
    return dst


# -- the release's scheduler ------------------------------------------------------------------

def release_windows(ratios=(1, 1, 1), gamma=1 / 3):
    """[(t_max, t_min)] per stage in x1000 units, and the window sigmas [(start, end)]."""
    T = 1000
    sig = np.array([np.float32(T - i) / np.float32(T) for i in range(T)], dtype=np.float32)
    steps = sig * np.float32(T)
    cum = np.cumsum([0.0] + [float(w) for w in ratios]) / float(sum(ratios))
    K = len(ratios)
    sigmas, lengths = [], []
    for k in range(K):
        start = float(sig[int(cum[k] * T)])
        end_index = int(cum[k + 1] * T)
        end = float(sig[end_index]) if end_index < T else 0.0
        if k > 0:
            o = 1.0 - start
            start = 1.0 - o / (np.sqrt(1.0 + 1.0 / gamma) * (1.0 - o) + o)
        sigmas.append((start, end))
        lengths.append(start - end)
    windows = []
    for k in range(K):
        a = sum(lengths[:k]) / sum(lengths) if k else 0.0
        b = sum(lengths[: k + 1]) / sum(lengths) if k < K - 1 else 1.0
        windows.append((steps[int(a * T)], steps[min(int(b * T), T - 1)]))
    return windows, sigmas


def release_stage_grid(window, n: int):
    """(timesteps x1000 of length n, local ratios of length n + 1) of an n-step stage."""
    t_max, t_min = window
    points = int(np.float32(t_max) - np.float32(t_min)) + 1
    fine_t = np.linspace(float(t_max), float(t_min), points)[:-1]
    fine_r = np.linspace(1.0, 0.0, points)[:-1]
    timesteps = np.linspace(fine_t[0], fine_t[-1], n)
    ratios = np.concatenate([np.linspace(fine_r[0], fine_r[-1], n), [0.0]])
    return timesteps, ratios


# -- the release's text encoding ----------------------------------------------------------

@torch.no_grad()
def release_text(root: Path, prompts: list[str]):
    """(sequence (B, 256, MT5_DIM), pooled (B, MCLIP_DIM)) as the release encodes `prompts`."""
    import sentencepiece as spm
    from transformers import BertModel, BertTokenizer, MT5EncoderModel

    sp = spm.SentencePieceProcessor(model_file=str(root / "mt5" / "spiece.model"))
    ids = torch.zeros(len(prompts), MT5_TOKENS, dtype=torch.long)  # pad id 0
    for i, p in enumerate(prompts):
        pieces = (sp.encode(p) + [1])[:MT5_TOKENS]  # eos id 1
        ids[i, : len(pieces)] = torch.tensor(pieces)
    mt5 = MT5EncoderModel.from_pretrained(root / "mt5").eval()
    sequence = mt5(ids, output_hidden_states=True).hidden_states[-1]
    split = (root / "mclip" / "tokenizer").is_dir()
    tok = BertTokenizer.from_pretrained(root / "mclip" / "tokenizer" if split else root / "mclip")
    batch = tok(prompts, padding="max_length", max_length=MCLIP_TOKENS, truncation=True, return_tensors="pt")
    bert = BertModel.from_pretrained(root / "mclip" / "clip_text_encoder" if split else root / "mclip",
                                     add_pooling_layer=False).eval()
    pooled = bert(batch.input_ids, attention_mask=batch.attention_mask)[0][:, 0]
    return sequence, pooled


# -- the release's sampler ----------------------------------------------------------------

@torch.no_grad()
def release_sample(root: Path, prompt: str, negative: str, seed: int, steps, cfg: float):
    """The release pipeline in float32. Returns (final latent grid (1, 16, 16, 16), image (1, 128, 128, 3))."""
    from diffusers import AutoencoderKL, FluxPipeline, FluxTransformer2DModel

    state = torch.load(root / "transformer" / "pytorch_model_fsdp.bin")
    bridge = torch.load(root / "bridge_flow.bin")
    stage_models = []
    for blocks in STAGE_BLOCKS:
        model = FluxTransformer2DModel(**flux_kwargs(num_single_layers=blocks - 8))
        model.load_state_dict({k: v for k, v in state.items() if k in model.state_dict()}, strict=True)
        stage_models.append(model.eval())
    sequence, pooled = release_text(root, [negative, prompt])

    def velocity(model, z, t):
        b, c, h, w = z.shape
        zz = torch.cat([z, z])
        tokens = FluxPipeline._pack_latents(zz, 2 * b, c, h, w)
        out = model(hidden_states=tokens, encoder_hidden_states=sequence, pooled_projections=pooled,
                    timestep=torch.full((2 * b,), t, dtype=torch.float32) / 1000,
                    img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
                    txt_ids=torch.zeros(sequence.shape[1], 3)).sample
        v_uncond, v_cond = FluxPipeline._unpack_latents(out, h * 8, w * 8, 8).chunk(2)
        return v_uncond + cfg * (v_cond - v_uncond)

    z = torch.randn(16, 16, 16, generator=torch.Generator().manual_seed(seed))[None]
    for side in (8, 4):
        z = F.interpolate(z, size=(side, side), mode="bilinear") * 2
    windows, _ = release_windows()
    for k, model in enumerate(stage_models):
        if k > 0:
            z = bridge["scale"][k - 1] * F.interpolate(z, scale_factor=2, mode="nearest") + bridge[f"shift.{k - 1}"]
        timesteps, ratios = release_stage_grid(windows[k], steps[k])
        for i, t in enumerate(timesteps):
            z = z + float(ratios[i + 1] - ratios[i]) * velocity(model, z, float(t))
    vae = AutoencoderKL.from_pretrained(root / "vae").eval()
    pixels = vae.decode(z / SCALING + SHIFT).sample.clamp(-1, 1)
    return z, ((pixels + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()

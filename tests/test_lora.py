"""LoRA adapters: only the adapter trains, it saves in diffusers/peft's format, loads back exactly,
scales, fuses, and `nami sample --lora` applies it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from nami_core.errors import ConfigError, NamiError
from nami_core.model.lora import (
    LORA_TARGETS,
    LORA_WEIGHTS,
    add_lora,
    lora_config,
    parse_lora_spec,
    save_lora,
)
from tests.helpers import build_tiny_pipeline, run_cli

KW = {"negative_prompt": "", "steps": (2, 2, 2), "cfg": 3.0, "seed": 2, "output_type": "latent"}


def trained_adapter(pipe, targets="attn", seed=0):
    """Add an adapter and give it non-zero weights (a trained one's stand-in)."""
    params = add_lora(pipe.transformer, lora_config(4, 8, targets))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return params


@pytest.mark.parametrize("targets", list(LORA_TARGETS))
def test_only_adapter_weights_change_in_a_training_step(targets):
    pipe = build_tiny_pipeline()
    tr = pipe.transformer
    base = {n: p.detach().clone() for n, p in tr.named_parameters()}
    params = add_lora(tr, lora_config(4, None, targets))
    assert params and all(p.requires_grad for p in params)
    assert [n for n, p in tr.named_parameters() if p.requires_grad] == [n for n, _ in tr.named_parameters() if "lora_" in n]
    wrapped = {n.split(".lora_A")[0] for n, _ in tr.named_parameters() if "lora_A" in n}
    assert all(any(w.endswith(t) for t in LORA_TARGETS[targets]) for w in wrapped)
    assert any(w.endswith("ff.net.2") for w in wrapped) == (targets == "attn+mlp")
    before = pipe("a red circle", **KW).images
    assert all(p.abs().sum() == 0 for n, p in tr.named_parameters() if "lora_B" in n)  # starts as the identity
    with torch.no_grad():
        for n, p in tr.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    opt = torch.optim.AdamW(params, lr=1e-2)
    x = torch.randn(2, 16, 48)
    text = torch.randn(2, 5, tr.config.joint_attention_dim)
    pooled = torch.randn(2, tr.config.pooled_projection_dim)
    ids = torch.zeros(16, 3)
    out = tr(x, text, pooled, torch.rand(2), ids, torch.zeros(5, 3))
    out.square().mean().backward()
    opt.step()
    after = {n.replace(".base_layer", ""): p.detach() for n, p in tr.named_parameters() if "lora_" not in n}
    assert after.keys() == base.keys() and all(torch.equal(after[n], base[n]) for n in base)
    assert not torch.equal(pipe("a red circle", **KW).images, before)


def test_saved_adapter_is_diffusers_and_peft_format_and_reloads_exactly(tmp_path):
    from peft import LoraConfig

    pipe = build_tiny_pipeline()
    trained_adapter(pipe)
    adapted = pipe("a red circle", **KW).images
    folder = save_lora(pipe.transformer, tmp_path / "adapter")
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", LORA_WEIGHTS]
    with safe_open(folder / LORA_WEIGHTS, "pt") as f:
        keys = list(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    assert keys and all(k.startswith("transformer.") and (".lora_A." in k or ".lora_B." in k) for k in keys)
    assert meta["transformer.r"] == 4 and meta["transformer.lora_alpha"] == 8
    assert LoraConfig.from_pretrained(str(folder)).r == 4

    fresh = build_tiny_pipeline()
    base = fresh("a red circle", **KW).images
    fresh.load_lora_weights(str(folder), adapter_name="taught")
    torch.testing.assert_close(fresh("a red circle", **KW).images, adapted, rtol=0, atol=0)
    fresh.set_adapters(["taught"], [0.0])
    torch.testing.assert_close(fresh("a red circle", **KW).images, base, rtol=0, atol=1e-5)
    fresh.set_adapters(["taught"], [1.0])
    fresh.fuse_lora(lora_scale=1.0, adapter_names=["taught"])
    fresh.unload_lora_weights()
    assert not any("lora_" in n for n, _ in fresh.transformer.named_parameters())
    torch.testing.assert_close(fresh("a red circle", **KW).images, adapted, rtol=0, atol=1e-4)


def test_text_encoder_adapters_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"text_encoder.layer.0.lora_A.weight": torch.zeros(2, 2),
               "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32),
               "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4)},
              str(tmp_path / LORA_WEIGHTS))
    with pytest.raises(ConfigError, match="text-encoder weights"):
        build_tiny_pipeline().load_lora_weights(str(tmp_path))


def test_lora_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="rank of at least 1, got 0"):
        lora_config(0)
    with pytest.raises(ConfigError, match="--lora-targets must be one of attn, attn\\+mlp, got 'mlp'"):
        lora_config(4, targets="mlp")
    with pytest.raises(ConfigError, match="--lora-alpha must be above 0"):
        lora_config(4, alpha=-1)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / LORA_WEIGHTS).write_bytes(b"")
    assert parse_lora_spec(str(tmp_path / "a")) == (tmp_path / "a", 1.0)
    assert parse_lora_spec(f"{tmp_path / 'a'}:0.5") == (tmp_path / "a", 0.5)
    with pytest.raises(NamiError, match="does not exist"):
        parse_lora_spec(str(tmp_path / "b") + ":2")
    with pytest.raises(NamiError, match="holds no pytorch_lora_weights.safetensors"):
        parse_lora_spec(str(tmp_path))
    with pytest.raises(NamiError, match="finite number"):
        parse_lora_spec(f"{tmp_path / 'a'}:nan")


def test_nami_sample_applies_an_adapter_at_its_scale(tmp_path, capsys):
    model = tmp_path / "model"
    build_tiny_pipeline().save_pretrained(model)
    pipe = build_tiny_pipeline()
    trained_adapter(pipe)
    adapter = save_lora(pipe.transformer, tmp_path / "adapter")

    def draw(name, *extra):
        code, _, err = run_cli(["sample", "a red circle", "--model", str(model), "--steps", "2,2,2", "--cfg", "3",
                                "--out", str(tmp_path / f"{name}.png"), *extra], capsys)
        assert code == 0, err
        with Image.open(tmp_path / f"{name}.png") as img:
            return np.asarray(img.convert("RGB"), dtype=np.int16), json.loads(img.text["nami"])

    base, base_meta = draw("base")
    off, _ = draw("off", "--lora", f"{adapter}:0")
    on, meta = draw("on", "--lora", str(adapter))
    assert np.abs(off - base).max() <= 1 and "lora" not in base_meta
    assert np.abs(on - base).max() > 10
    assert meta["lora"] == [[str(adapter), 1.0]]
    code, _, err = run_cli(["sample", "a red circle", "--model", str(model), "--lora", str(tmp_path / "none")], capsys)
    assert code == 2 and err.strip() == f"error: --lora {tmp_path / 'none'}: {tmp_path / 'none'} does not exist"


def test_benchmark_generator_applies_adapters_and_a_sampling_pipeline_refuses_them(tmp_path):
    """`eval.generation.Generator(..., loras=...)` (what benchmark scripts score an adapter with)
    loads a `NamiPipeline` and applies each adapter; `apply_loras` on a `SamplingPipeline` (what
    `load_pipeline` returns by default) says how to load one that takes adapters."""
    from nami_core.eval.generation import Generator
    from nami_core.model.lora import apply_loras

    model = tmp_path / "model"
    build_tiny_pipeline().save_pretrained(model)
    pipe = build_tiny_pipeline()
    trained_adapter(pipe)
    adapter = save_lora(pipe.transformer, tmp_path / "adapter")

    plain, adapted = Generator(str(model), device="cpu"), Generator(str(model), device="cpu", loras=[str(adapter)])
    assert type(plain.pipe).__name__ == "SamplingPipeline" and type(adapted.pipe).__name__ == "NamiPipeline"
    a, b = (g.pipe("a red circle", **KW).images for g in (plain, adapted))
    assert (a - b).abs().max() > 1e-3
    with pytest.raises(TypeError, match=r"not a SamplingPipeline: load the model with "
                                        r"load_pipeline\(\.\.\., diffusers_pipeline=True\)"):
        apply_loras(plain.pipe, [str(adapter)])

"""NamiTransformer: FLUX key compatibility, stage prefixes, text masks, checkpointing, parameter counts."""

import pytest
import torch
from diffusers import FluxTransformer2DModel

from nami_core.config import ModelConfig, get_preset
from nami_core.model.params import count_parameters
from nami_core.model.transformer import NamiTransformer
from tests.helpers import flux_and_nami

FLUX_KW = dict(
    patch_size=1, in_channels=16, num_layers=2, num_single_layers=3, attention_head_dim=16,
    num_attention_heads=2, joint_attention_dim=24, pooled_projection_dim=20, axes_dims_rope=(4, 6, 6),
)


def inputs(batch=2, rows=4, cols=4, text=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = rows * cols
    img_ids = torch.zeros(n, 3)
    img_ids[:, 1] = torch.arange(n) // cols
    img_ids[:, 2] = torch.arange(n) % cols
    return dict(
        hidden_states=torch.randn(batch, n, 16, generator=g),
        encoder_hidden_states=torch.randn(batch, text, 24, generator=g),
        pooled_projections=torch.randn(batch, 20, generator=g),
        timestep=torch.rand(batch, generator=g),
        img_ids=img_ids,
        txt_ids=torch.zeros(text, 3),
    )


@pytest.fixture(scope="module")
def pair():
    return flux_and_nami(FLUX_KW, (1, 3, 5))


def test_flux_state_dict_loads_strictly_and_last_stage_matches(pair):
    flux, nami = pair
    assert set(flux.state_dict()) == set(nami.state_dict())
    x = inputs()
    with torch.no_grad():
        ref = flux(**x).sample
        out = nami(**x, stage=2)
        full = nami(**x)  # stage=None runs every block
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=0)


def test_stage_runs_exactly_its_block_prefix(pair):
    _, nami = pair
    calls = []
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: calls.append(i)) for i, b in enumerate(nami.blocks())]
    try:
        for stage, end in enumerate((1, 3, 5)):
            calls.clear()
            with torch.no_grad():
                nami(**inputs(), stage=stage)
            assert calls == list(range(end))
        calls.clear()
        with torch.no_grad():
            nami(**inputs(), num_blocks=4)
        assert calls == [0, 1, 2, 3]
    finally:
        for h in hooks:
            h.remove()


def test_stage_output_equals_a_hand_run_prefix_of_diffusers_blocks(pair):
    """Stage 1 (ends after the first single block) = embed, double block 0, double block 1, single
    block 0, final, run by hand with diffusers' own FLUX blocks, attention processor and rotary
    embedding (the independent reference for nami's block forwards, `model/blocks.py`)."""
    flux, nami = pair
    x = inputs()
    with torch.no_grad():
        out = nami(**x, stage=1)
        h = flux.x_embedder(x["hidden_states"])
        temb = flux.time_text_embed(x["timestep"] * 1000, x["pooled_projections"])
        c = flux.context_embedder(x["encoder_hidden_states"])
        rope = flux.pos_embed(torch.cat([x["txt_ids"], x["img_ids"]]))
        for block in [flux.transformer_blocks[0], flux.transformer_blocks[1], flux.single_transformer_blocks[0]]:
            c, h = block(hidden_states=h, encoder_hidden_states=c, temb=temb, image_rotary_emb=rope)
        ref = flux.proj_out(flux.norm_out(h, temb))
    assert type(flux.transformer_blocks[0]).forward is not type(nami.transformer_blocks[0]).forward
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_fused_qkv_projections_give_the_same_output(pair):
    """diffusers' `fuse_projections` (one q/k/v matmul per stream) on every attention module of a
    copy: the same output as the separate projections (`joint_attention.qkv_projections`)."""
    import copy

    _, nami = pair
    fused = copy.deepcopy(nami)
    for block in fused.blocks():
        block.attn.fuse_projections()
    assert all(block.attn.fused_projections for block in fused.blocks())
    assert hasattr(fused.transformer_blocks[0].attn, "to_added_qkv")
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(fused(**x, stage=2), nami(**x, stage=2), atol=1e-5, rtol=0)


def test_text_mask_hides_padding(pair):
    """With a mask, padded text tokens change nothing: same output as the unpadded sequence."""
    _, nami = pair
    x = inputs(batch=1, text=7)
    short = dict(x, encoder_hidden_states=x["encoder_hidden_states"][:, :4], txt_ids=x["txt_ids"][:4])
    mask = torch.tensor([[True] * 4 + [False] * 3])
    with torch.no_grad():
        masked = nami(**x, attention_mask=mask)
        ref = nami(**short)
        unmasked = nami(**x)
    torch.testing.assert_close(masked, ref, atol=1e-5, rtol=0)
    assert (unmasked - ref).abs().max() > 1e-4  # the padding does matter without the mask


def test_gradient_checkpointing_gives_the_same_gradients(pair):
    _, base = pair
    net = NamiTransformer(**FLUX_KW, stage_ends=(1, 3, 5))
    net.load_state_dict(base.state_dict())
    x = inputs()
    grads = []
    for checkpointing in (False, True):
        net.zero_grad()
        if checkpointing:
            net.enable_gradient_checkpointing()
        net(**x, stage=2).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert net.gradient_checkpointing
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_bad_stage_arguments(pair):
    _, nami = pair
    with pytest.raises(ValueError, match="stage must be in"):
        nami(**inputs(), stage=3)
    with pytest.raises(ValueError, match="num_blocks must be in"):
        nami(**inputs(), num_blocks=6)


@pytest.mark.parametrize("name", ["nami-2b", "nami-0.6b", "tiny"])
def test_parameter_counts_match_built_models(name):
    model = get_preset(name).model
    total, per_block = count_parameters(model)
    with torch.device("meta"):
        net = NamiTransformer.from_model_config(model)
    assert total == sum(p.numel() for p in net.parameters())
    assert per_block == [sum(p.numel() for p in b.parameters()) for b in net.blocks()]


def test_nami_2b_has_the_public_flux_config_parameter_count():
    total, _ = count_parameters(get_preset("nami-2b").model)
    with torch.device("meta"):
        flux = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=8, num_single_layers=14, attention_head_dim=128,
            num_attention_heads=16, joint_attention_dim=4096, pooled_projection_dim=1024, guidance_embeds=False,
            axes_dims_rope=(16, 56, 56),
        )
    assert total == sum(p.numel() for p in flux.parameters())
    assert abs(total - 2.118e9) < 1e6
    small, _ = count_parameters(get_preset("nami-0.6b").model)
    assert abs(small - 0.641e9) < 2e6


def test_config_errors_raise_at_construction():
    from nami_core.errors import ConfigError

    with pytest.raises(ConfigError, match="must end at the model depth"):
        NamiTransformer(**FLUX_KW, stage_ends=(1, 3))
    with pytest.raises(ConfigError):
        ModelConfig(width=30, heads=4, double_blocks=1, single_blocks=0, stage_ends=(1,))


def test_text_positions_none_ignores_word_order_and_ordered_sees_it():
    """With all text ids at zero the image tokens cannot tell the text tokens' order; ordered ids can."""
    from nami_core.codecs.packing import text_ids

    assert torch.equal(text_ids(4), torch.zeros(4, 3))
    assert text_ids(4, ordered=True).tolist() == [[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]
    torch.manual_seed(0)
    nami = NamiTransformer(**FLUX_KW, stage_ends=(1, 3, 5), text_positions="ordered").eval()
    with torch.no_grad():
        for p in nami.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = inputs()
    swapped = dict(x, encoder_hidden_states=x["encoder_hidden_states"][:, [1, 0, 2, 3, 4]])
    with torch.no_grad():
        for ordered, same in ((False, True), (True, False)):
            ids = text_ids(5, ordered=ordered)
            a = nami(**dict(x, txt_ids=ids))
            b = nami(**dict(swapped, txt_ids=ids))
            assert torch.allclose(a, b, atol=1e-5) == same, ordered


def test_text_positions_is_a_validated_config_field():
    from nami_core.config import ModelConfig
    from nami_core.errors import ConfigError

    cfg = ModelConfig(width=32, heads=2, double_blocks=1, single_blocks=0, stage_ends=(1,), rope_axes=(4, 6, 6),
                      text_positions="ordered")
    assert ModelConfig.from_transformer_config(cfg.transformer_kwargs()) == cfg
    saved_before = {k: v for k, v in cfg.transformer_kwargs().items() if k != "text_positions"}
    assert ModelConfig.from_transformer_config(saved_before).text_positions == "none"  # older model folders
    with pytest.raises(ConfigError, match="text_positions must be one of none, ordered, got 'shuffled'"):
        ModelConfig(width=32, heads=2, double_blocks=1, single_blocks=0, stage_ends=(1,), rope_axes=(4, 6, 6),
                    text_positions="shuffled")

"""Token packing (FLUX order), rotary ids, pixel and FLUX-VAE codecs."""

import torch
from diffusers import AutoencoderKL, FluxPipeline

from nami_core.codecs.flux_vae import FluxVAECodec
from nami_core.codecs.packing import image_ids, pack, unpack
from nami_core.codecs.pixel import PixelCodec


def test_pack_matches_flux_and_unpack_inverts():
    grid = torch.randn(2, 16, 8, 6)
    tokens = pack(grid, 2)
    assert tokens.shape == (2, 12, 64)
    torch.testing.assert_close(tokens, FluxPipeline._pack_latents(grid, 2, 16, 8, 6))
    torch.testing.assert_close(unpack(tokens, 8, 6, 2), grid)
    torch.testing.assert_close(unpack(pack(grid, 1), 8, 6, 1), grid)


def test_image_ids_match_flux():
    ids = image_ids(4, 3)
    ref = FluxPipeline._prepare_latent_image_ids(1, 4, 3, "cpu", torch.float32)
    torch.testing.assert_close(ids, ref)
    assert ids[5].tolist() == [0.0, 1.0, 2.0]


def test_pixel_codec_is_the_identity_on_images():
    codec = PixelCodec(patch_size=4)
    img = torch.rand(1, 3, 16, 16) * 2 - 1
    assert codec.pixels_per_token == 4 and codec.channels == 3
    torch.testing.assert_close(codec.decode(codec.encode(img)), img)
    assert codec.decode(torch.full((1, 3, 4, 4), 3.0)).max().item() == 1.0


def tiny_vae():
    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 16), latent_channels=4,
        layers_per_block=1, norm_num_groups=4, scaling_factor=0.5, shift_factor=0.1,
    ).eval()


def test_flux_vae_codec_normalises_with_scale_and_shift(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    codec = FluxVAECodec.from_vae_path(tmp_path / "vae").eval()
    assert (codec.channels, codec.downsample, codec.patch_size, codec.pixels_per_token) == (4, 2, 2, 4)
    img = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = codec.encode(img)
        raw = vae.encode(img).latent_dist.mode()
        torch.testing.assert_close(z, (raw - 0.1) * 0.5)
        out = codec.decode(z)
        torch.testing.assert_close(out, vae.decode(raw).sample.clamp(-1, 1))
    assert z.shape == (1, 4, 8, 8)
    # save/load keeps the VAE weights
    codec.save_pretrained(tmp_path / "codec")
    again = FluxVAECodec.from_pretrained(tmp_path / "codec").eval()
    with torch.no_grad():
        torch.testing.assert_close(again.encode(img), z)

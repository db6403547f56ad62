"""`nami info`: the JSON contract, the numbers of docs/method.md, and the FLOP model against an independent count."""

import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nami_cli.main import run
from nami_core.flow.flops import forward_flops
from nami_core.config import get_preset
from nami_core.model.transformer import NamiTransformer


def run_json(capsys, *args):
    run(["info", *args, "--json"])
    return json.loads(capsys.readouterr().out)


def test_info_nami_2b_matches_the_spec(capsys):
    report = run_json(capsys, "--preset", "nami-2b")
    assert set(report) >= {"params", "stages", "flops", "reduction"}
    assert isinstance(report["params"], int) and abs(report["params"] - 2.118e9) < 1e6
    stages = report["stages"]
    keys = {"resolution", "width", "tokens", "blocks", "params_active", "sigma_start", "sigma_end", "tau_start",
            "tau_end", "steps", "jump_alpha", "jump_beta"}
    assert all(set(s) == keys for s in stages)
    assert [s["resolution"] for s in stages] == [256, 512, 1024]
    assert [s["width"] for s in stages] == [256, 512, 1024]  # square: the width is the side
    assert (report["width"], report["height"]) == (1024, 1024)
    assert [s["tokens"] for s in stages] == [256, 1024, 4096]
    assert [s["blocks"] for s in stages] == [9, 16, 22]
    assert [s["sigma_start"] for s in stages] == pytest.approx([1.0, 0.8, 0.5], abs=0.002)
    taus = [(s["tau_start"], s["tau_end"]) for s in stages]
    assert [t for pair in taus for t in pair] == pytest.approx([1, 0.744, 0.744, 0.386, 0.386, 0.0], abs=0.002)
    assert (stages[0]["jump_alpha"], stages[0]["jump_beta"]) == pytest.approx((0.6, 0.693), abs=0.002)
    assert (stages[1]["jump_alpha"], stages[1]["jump_beta"]) == pytest.approx((0.75, 0.433), abs=0.002)
    assert stages[2]["jump_alpha"] is None and stages[2]["jump_beta"] is None
    assert stages[2]["params_active"] == report["params"] > stages[1]["params_active"] > stages[0]["params_active"]
    assert set(report["flops"]) == {"flux-base", "flow-only", "nami"}
    assert 0.54 <= report["reduction"]["nami"] <= 0.60
    assert report["reduction"]["flow-only"] < report["reduction"]["nami"]


def test_reduction_grows_with_resolution(capsys):
    r512 = run_json(capsys, "--preset", "nami-2b", "--stages", "128,256,512")["reduction"]["nami"]
    r2048 = run_json(capsys, "--preset", "nami-2b", "--stages", "512,1024,2048")["reduction"]["nami"]
    r1024 = run_json(capsys, "--preset", "nami-2b")["reduction"]["nami"]
    assert r512 < r1024 < r2048


def flop_count(net, tokens, text, blocks, device=None):
    x = torch.randn(1, tokens, net.config.in_channels)
    c = torch.randn(1, text, net.config.joint_attention_dim)
    p = torch.randn(1, net.config.pooled_projection_dim)
    # The math SDPA kernel runs attention as counted bmm calls (the fused CPU kernel is not counted).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, c, p, torch.rand(1), torch.zeros(tokens, 3), torch.zeros(text, 3), num_blocks=blocks)
    return counter.get_total_flops()


@pytest.mark.parametrize("tokens,blocks", [(64, 2), (256, 6), (1024, 4)])
def test_flop_model_matches_flop_counter_on_tiny(tokens, blocks):
    model = get_preset("tiny").model
    net = NamiTransformer.from_model_config(model).eval()
    measured = flop_count(net, tokens, 16, blocks)
    predicted = forward_flops(model, tokens, 16, blocks)
    assert abs(predicted - measured) / measured < 0.05
    # the model counts every matmul and attention FLOP, nothing else
    assert predicted == pytest.approx(measured, rel=1e-9)


def test_flop_model_matches_flop_counter_on_nami_2b_meta():
    model = get_preset("nami-2b").model
    with torch.device("meta"):
        net = NamiTransformer.from_model_config(model)
        x = torch.randn(1, 4096, 64)
        c = torch.randn(1, 256, 4096)
        p = torch.randn(1, 1024)
        with FlopCounterMode(display=False) as counter:
            net(x, c, p, torch.rand(1), torch.zeros(4096, 3), torch.zeros(256, 3), num_blocks=16)
    assert forward_flops(model, 4096, 256, 16) == pytest.approx(counter.get_total_flops(), rel=1e-9)


def test_info_table_and_errors(capsys):
    run(["info", "--preset", "tiny"])
    out = capsys.readouterr().out
    assert "forward FLOPs" in out and "flux-base" in out
    for args, message in [
        (["--preset", "nope"], "--preset must be one of nami-2b, nami-0.6b, flux-base-2b, tiny, cpu-bench, got 'nope'"),
        (["--stages", "256,512,1000"], "must double"),
        (["--steps", "10,10"], "steps lists 2 counts but the plan has 3 stages"),
        (["--preset", "tiny", "--model", "x"], "not both"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            run(["info", *args])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err

"""`nami train --lora`: only the adapter trains, RUN/final is an adapter that diffusers and peft
load and that reproduces the trained model, resume is exact, checkpoints export and merge."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nami_core.model.transformer import NamiTransformer
from tests.helpers import prepare_train_data, run_cli


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Prepared data and a 3-step base model (with an EMA variant) to put adapters on."""
    root = prepare_train_data(tmp_path_factory.mktemp("lora"))
    code, _, _ = run_cli(["train", "--data", str(root / "data"), "--out", str(root / "base"), "--config",
                          str(root / "model.json"), "--stages", "16,32,64", "--batch-size", "4", "--steps", "3",
                          "--ema-decay", "0.5"])
    assert code == 0
    return root


def lora_args(root: Path, out: Path, *extra) -> list[str]:
    return ["train", "--data", str(root / "data"), "--out", str(out), "--model", str(root / "base" / "final"),
            "--stages", "16,32,64", "--batch-size", "4", "--lr", "1e-2", "--lora", "4", "--log-every", "2",
            "--ema-decay", "0.9", *extra]


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-run") / "run"
    code, _, _ = run_cli(lora_args(base, out, "--steps", "6", "--save-every", "3", "--keep", "0"))
    assert code == 0
    return out


def test_training_steps_leave_the_frozen_model_as_it_was(base, tmp_path):
    """Two steps of the training loop itself: every frozen weight equals --init's EMA weight bit for
    bit, and the adapter's B matrices (zero at the start) have moved."""
    from nami_core.train.config import TrainConfig
    from nami_core.train.loop import TrainingRun
    from nami_core.train.metrics import MetricsWindow

    settings = TrainConfig(data=base / "data", out=tmp_path / "run", stages=(16, 32, 64), init=base / "base" / "final",
                           batch_size=4, lr=1e-2, lora=4, steps=2, ema_decay=0.0)
    run = TrainingRun.setup(settings)
    run.resume()
    window = MetricsWindow(len(run.plan), run.device)
    run.step(window)
    run.step(window)
    run.batches.close()
    frozen = load_file(base / "base" / "final" / "transformer" / "diffusion_pytorch_model.ema.safetensors")
    state = run.transformer.state_dict()
    assert {k.replace(".base_layer", "") for k in state if "lora_" not in k} == set(frozen)
    for name, value in state.items():
        if "lora_" not in name:
            assert torch.equal(value, frozen[name.replace(".base_layer", "")]), name
    assert all(v.abs().sum() > 0 for k, v in state.items() if "lora_B" in k)


def test_only_the_adapter_changes_and_checkpoints_hold_only_it(base, lora_run):
    """The checkpoint holds the adapter's tensors only (the frozen weights are --init's; that a step
    changes nothing else is tests/test_lora.py's); --init's EMA weights plus that adapter are the
    trained network (the next test)."""
    state = load_file(lora_run / "checkpoints" / "step-00000006" / "model.safetensors")
    names = {k.removeprefix("transformer."): v for k, v in state.items()}
    assert names and all(".lora_A.default." in k or ".lora_B.default." in k for k in names)
    model = trained_model(base, lora_run)
    adapter = {n for n, p in model.named_parameters() if "lora_" in n}
    assert {k.replace(".default", "") for k in names} == {n.replace(".default", "") for n in adapter}
    assert all(v.abs().sum() > 0 for k, v in names.items() if "lora_B" in k)  # B starts at 0 and has trained
    size = (lora_run / "checkpoints" / "step-00000006" / "model.safetensors").stat().st_size
    full = (base / "base" / "final" / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size
    assert size < full / 4


def test_final_is_an_adapter_in_the_diffusers_and_peft_format(base, lora_run):
    final = lora_run / "final"
    info = json.loads((final / "nami_lora.json").read_text())
    assert info == {"base_model": str(base / "base" / "final"), "base_weights": "ema", "rank": 4, "alpha": 4,
                    "targets": "attn", "steps": 6, "dtype": "fp32"}
    config = json.loads((final / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 4 and config["peft_type"] == "LORA"
    weights = load_file(final / "pytorch_lora_weights.safetensors")
    assert all(k.startswith("transformer.") and (".lora_A.weight" in k or ".lora_B.weight" in k) for k in weights)
    assert (final / "ema" / "pytorch_lora_weights.safetensors").is_file()


def inputs(transformer, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    return (torch.randn(2, 16, cfg.in_channels, generator=g), torch.randn(2, 5, cfg.joint_attention_dim, generator=g),
            torch.randn(2, cfg.pooled_projection_dim, generator=g), torch.rand(2, generator=g),
            torch.zeros(16, 3), torch.zeros(5, 3))


def trained_model(base: Path, lora_run: Path) -> NamiTransformer:
    """The network at the end of training, rebuilt from the last checkpoint (base + adapter)."""
    from peft import LoraConfig

    model = NamiTransformer.from_pretrained(base / "base" / "final" / "transformer", variant="ema")
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["attn.to_q", "attn.to_k", "attn.to_v",
                      "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"]))
    state = load_file(lora_run / "checkpoints" / "step-00000006" / "model.safetensors")
    missing, unexpected = model.load_state_dict({k.removeprefix("transformer."): v for k, v in state.items()}, strict=False)
    assert not unexpected
    return model.eval()


@torch.no_grad()
def test_the_saved_adapter_reproduces_the_trained_model(base, lora_run):
    trained = trained_model(base, lora_run)
    expected = trained(*inputs(trained))
    # diffusers: the transformer's load_lora_adapter on the saved file
    model = NamiTransformer.from_pretrained(base / "base" / "final" / "transformer", variant="ema").eval()
    plain = model(*inputs(model))
    model.load_lora_adapter(str(lora_run / "final"), weight_name="pytorch_lora_weights.safetensors",
                            prefix="transformer", adapter_name="taught")
    assert torch.allclose(model(*inputs(model)), expected, atol=1e-6)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter matters
    # peft: adapter_config.json plus the state dict
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    fresh = NamiTransformer.from_pretrained(base / "base" / "final" / "transformer", variant="ema").eval()
    config = LoraConfig.from_pretrained(str(lora_run / "final"))
    inject_adapter_in_model(config, fresh)
    saved = load_file(lora_run / "final" / "pytorch_lora_weights.safetensors")
    result = set_peft_model_state_dict(fresh, {k.removeprefix("transformer."): v for k, v in saved.items()})
    assert not result.unexpected_keys
    assert torch.allclose(fresh(*inputs(fresh)), expected, atol=1e-6)


def test_resume_is_exact(base, lora_run, tmp_path):
    out = tmp_path / "resumed"
    assert run_cli(lora_args(base, out, "--steps", "3", "--save-every", "3"))[0] == 0
    assert run_cli(lora_args(base, out, "--steps", "6", "--save-every", "3", "--resume", "latest"))[0] == 0
    for name in ("pytorch_lora_weights.safetensors", "ema/pytorch_lora_weights.safetensors"):
        a, b = load_file(lora_run / "final" / name), load_file(out / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_checkpoint_exports_as_the_adapter_final_would_be(lora_run, tmp_path, capsys):
    out = tmp_path / "exported"
    code, _, err = run_cli(["convert", "checkpoint", str(lora_run / "checkpoints" / "step-00000006"), "--out", str(out)],
                           capsys)
    assert code == 0, err
    for name in ("pytorch_lora_weights.safetensors", "ema/pytorch_lora_weights.safetensors"):
        a, b = load_file(lora_run / "final" / name), load_file(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_merged_model_samples_as_the_adapter_does(base, lora_run, tmp_path, capsys):
    from nami_core.modeldir import load_pipeline

    merged = tmp_path / "merged"
    code, _, err = run_cli(["convert", "lora", str(lora_run / "final"), "--model", str(base / "base" / "final"),
                            "--out", str(merged), "--merge", "--scale", "0.7"], capsys)
    assert code == 0, err
    kw = {"negative_prompt": "", "steps": (2, 2, 2), "cfg": 3.0, "seed": 1, "output_type": "latent"}
    adapted = load_pipeline(base / "base" / "final", torch.device("cpu"), torch.float32, diffusers_pipeline=True)
    adapted.load_lora_weights(str(lora_run / "final"), adapter_name="a")
    adapted.set_adapters(["a"], [0.7])
    folded = load_pipeline(merged, torch.device("cpu"), torch.float32)
    assert not any("lora" in k for k in load_file(merged / "transformer" / "diffusion_pytorch_model.safetensors"))
    a, b = adapted("a red circle", **kw).images, folded("a red circle", **kw).images
    assert torch.allclose(torch.as_tensor(a), torch.as_tensor(b), atol=1e-4)


def test_bf16_runs_keep_the_frozen_model_in_bf16(base, tmp_path):
    out = tmp_path / "bf16"
    assert run_cli(lora_args(base, out, "--steps", "2", "--save-every", "2", "--dtype", "bf16",
                             "--lora-targets", "attn+mlp"))[0] == 0
    state = load_file(out / "checkpoints" / "step-00000002" / "model.safetensors")
    assert {v.dtype for v in state.values()} == {torch.float32} and any("ff.net.2.lora_A" in k for k in state)
    from types import SimpleNamespace

    from nami_core.train.adapters import attach_lora

    model = NamiTransformer.from_pretrained(base / "base" / "final" / "transformer", variant="ema")
    attach_lora(model, SimpleNamespace(lora=4, lora_alpha=None, lora_targets="attn+mlp", dtype="bf16", seed=0))
    dtypes = {("lora" if "lora_" in n else "base", p.dtype) for n, p in model.named_parameters()}
    assert dtypes == {("lora", torch.float32), ("base", torch.bfloat16)}


@pytest.mark.parametrize(
    "change,message",
    [
        (["--model", None], "--lora trains an adapter on a model: give the model with --model MODEL"),
        (["--lora", "0"], "--lora must be a rank of at least 1, got 0"),
        (["--lora-targets", "everything"], "--lora-targets must be one of attn, attn+mlp, got 'everything'"),
        (["--lora-alpha", "0"], "--lora-alpha must be above 0, got 0"),
    ],
)
def test_bad_lora_options_are_one_line(base, tmp_path, capsys, change, message):
    args = lora_args(base, tmp_path / "bad", "--steps", "1")
    flag, value = change
    if value is None:
        i = args.index(flag)
        del args[i:i + 2]
        args += ["--config", str(base / "model.json")]
    elif flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    code, _, err = run_cli(args, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "bad").exists()


def test_convert_lora_needs_merge(base, lora_run, tmp_path, capsys):
    code, _, err = run_cli(["convert", "lora", str(lora_run / "final"), "--model", str(base / "base" / "final"),
                            "--out", str(tmp_path / "m")], capsys)
    assert code == 2 and "give --merge to fold the adapter" in err and not (tmp_path / "m").exists()


def test_the_adapter_carries_the_words_it_was_taught(base, lora_run, tmp_path):
    """RUN/final/vocabulary.json holds the training captions' words; `nami sample --lora` adds them to
    the model's vocabulary before warning, and says nothing when an adapter makes no claim."""
    from nami_core.data.store import data_captions
    from nami_core.generate import SampleRequest, vocabulary_warning
    from nami_core.vocabulary import Vocabulary, words_of

    taught = json.loads((lora_run / "final" / "vocabulary.json").read_text())["words"]
    captions = data_captions(base / "data")
    assert len(captions) == 12 and taught == sorted({w for c in captions for w in words_of(c)})
    assert json.loads((lora_run / "final" / "ema" / "vocabulary.json").read_text())["words"] == taught
    model = tmp_path / "model"
    shutil.copytree(base / "base" / "final", model)
    Vocabulary(frozenset({"a", "photo", "of"}), "three words").save(model)
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_run / "final", adapter)
    Vocabulary(frozenset({"dax"}), "its fine-tuning captions").save(adapter)
    warn = lambda prompt, *loras: vocabulary_warning(SampleRequest(prompt, model=str(model), loras=loras))  # noqa: E731
    assert '"dax"' in warn("a photo of a dax")
    assert warn("a photo of a dax", f"{adapter}:0.5") is None
    assert warn("a photo of a dax zebra", str(adapter)).startswith('the model was not trained on "zebra"; it knows three words')
    (adapter / "vocabulary.json").unlink()
    assert warn("a photo of a dax zebra", str(adapter)) is None  # an adapter without a vocabulary makes no claim


def test_a_merged_model_keeps_the_stored_dtype_vocabulary_and_file_modes(base, lora_run, tmp_path, capsys):
    import os
    import stat

    model = tmp_path / "model"
    shutil.copytree(base / "base" / "final", model)
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.ema.safetensors"):
        weights = load_file(model / "transformer" / name)
        save_file({k: v.half() for k, v in weights.items()}, str(model / "transformer" / name))
    from nami_core.vocabulary import Vocabulary

    Vocabulary(frozenset({"a", "photo"}), "two words").save(model)
    from nami_core.checksums import write_record

    write_record(model)  # edited on purpose: its integrity record written anew
    merged = tmp_path / "merged"
    code, _, err = run_cli(["convert", "lora", str(lora_run / "final"), "--model", str(model), "--out", str(merged),
                            "--merge"], capsys)
    assert code == 0, err
    weights = load_file(merged / "transformer" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float16}
    words = set(json.loads((merged / "vocabulary.json").read_text())["words"])
    assert {"a", "photo"} | set(json.loads((lora_run / "final" / "vocabulary.json").read_text())["words"]) == words
    mask = os.umask(0)
    os.umask(mask)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in merged.rglob("*") if p.is_file()}
    assert modes == {0o666 & ~mask}


def test_an_adapter_for_another_model_is_one_line(lora_run, tmp_path, capsys):
    code, _, err = run_cli(["sample", "a red circle", "--lora", str(lora_run / "final"), "--out", str(tmp_path),
                            "--steps", "1,1,1"], capsys)  # the bundled model is wider than the test's base
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert "its layers have other sizes: it was trained on another model, " in lines[0]


def test_resuming_with_another_adapter_shape_is_one_line(base, lora_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    code, _, err = run_cli(lora_args(base, run, "--steps", "8", "--resume", "latest", "--lora-targets", "attn+mlp"),
                           capsys)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert "lacks 16 of the adapter's 44 tensors" in lines[0] and "not a checkpoint of this --lora run" in lines[0]

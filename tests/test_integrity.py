"""Integrity of everything nami writes and reads back: model directories, LoRA adapters and prepared
shards carry size + sha256 and are checked on load (one line naming the file), weights are checked
finite, an adapter is checked against its config and against the model. Older artefacts without a
record still load.

Reproductions of issue 33: 11 (patch_size 0), 14-17 (adapters used silently), 18 (a shard with 16
bytes flipped), 19 (a manifest's total contradicting its shards), and an adapter that only partly
fits the model (diffusers' warning was hidden)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from nami_core import checksums
from nami_core.checksums import read_record, write_record
from nami_core.errors import NamiError
from nami_core.model.lora import LORA_WEIGHTS
from tests.helpers import build_tiny_pipeline, one_error, prepare_train_data, run_cli, save_tiny_adapter, train_cli_args

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def flip_bytes(path: Path) -> None:
    """Flip 16 bytes in the tensor data, keeping the size (a silent corruption)."""
    data = bytearray(path.read_bytes())
    middle = len(data) - len(data) // 4
    data[middle:middle + 16] = bytes(255 - b for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))


def sample(capsys, model: Path, out: Path, *extra):
    return run_cli(["sample", "a red circle", "--model", str(model), "--out", str(out), "--steps", "1,1,1", *extra],
                   capsys)


@pytest.fixture
def model(tmp_path):
    """A tiny model directory with its integrity record, as nami writes one."""
    folder = tmp_path / "model"
    build_tiny_pipeline().save_pretrained(folder)
    write_record(folder)
    return folder


# -- model directories ---------------------------------------------------------------------------------


def test_a_damaged_model_is_one_line_naming_the_file(model, tmp_path, capsys):
    code, _, err = sample(capsys, model, tmp_path / "ok.png")
    assert code == 0, err
    flip_bytes(model / WEIGHTS)
    code, _, err = sample(capsys, model, tmp_path / "s")
    assert code == 2 and one_error(err) == (f"error: model directory {model} is damaged: {WEIGHTS} does not match its "
                                            "checksum (altered after it was written); write it again (or restore it)")
    (model / WEIGHTS).write_bytes((model / WEIGHTS).read_bytes()[:1000])
    code, _, err = sample(capsys, model, tmp_path / "s")
    size = read_record(model)[WEIGHTS]["bytes"]
    assert code == 2 and f"{WEIGHTS} has 1000 bytes, {size} were written (truncated?)" in one_error(err)
    assert not (tmp_path / "s").exists()


def test_models_without_a_record_still_load(tiny_model_dir, tmp_path, capsys):
    assert read_record(tiny_model_dir) is None  # saved by diffusers alone, as models before records were
    code, _, err = sample(capsys, tiny_model_dir, tmp_path / "a.png")
    assert code == 0, err


def test_non_finite_model_weights_are_refused(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "nan"
    shutil.copytree(tiny_model_dir, model)
    state = load_file(model / WEIGHTS)
    name = sorted(state)[3]
    state[name][0] = float("nan")
    save_file(state, str(model / WEIGHTS))
    code, _, err = sample(capsys, model, tmp_path / "s")
    assert code == 2 and one_error(err) == (f"error: model directory {model}: the transformer weights hold non-finite "
                                            f"values (1 of {len(state)} tensors, e.g. {name}); the model is damaged")


@pytest.mark.parametrize("change, message", [
    ("drop", "lack 1 of {n} tensors (e.g. {name}); the file is not this model's"),
    ("add", "hold 1 tensors the model has not (e.g. zz.extra); the file is not this model's"),
], ids=["missing tensor", "extra tensor"])
def test_weights_of_another_model_are_refused(tiny_model_dir, tmp_path, capsys, change, message):
    """Weights with a tensor fewer (loading left it without data: a traceback) or one more (dropped
    without a word) than the model: one error line naming the file."""
    model = tmp_path / "other"
    shutil.copytree(tiny_model_dir, model)
    state = load_file(model / WEIGHTS)
    n, name = len(state), sorted(state)[-1]
    if change == "drop":
        del state[name]
    else:
        state["zz.extra"] = torch.zeros(3)
    save_file(state, str(model / WEIGHTS))
    code, _, err = sample(capsys, model, tmp_path / "s")
    assert code == 2 and one_error(err) == (f"error: model directory {model}: the transformer weights "
                                            f"{Path(WEIGHTS).name} " + message.format(n=n, name=name)), err


@pytest.mark.parametrize("value", [0, -2, "4"])
def test_a_codec_patch_size_that_cannot_be_is_one_line(tiny_model_dir, tmp_path, capsys, value):
    """11: patch_size 0 was a ZeroDivisionError."""
    model = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "codec" / "config.json").read_text())
    (model / "codec" / "config.json").write_text(json.dumps({**config, "patch_size": value}))
    code, _, err = sample(capsys, model, tmp_path / "s")
    assert code == 2 and one_error(err) == (f"error: cannot load the model in {model}: codec patch_size must be a "
                                            f"positive integer, got {value!r}")


def test_verified_files_are_not_hashed_again_until_they_change(model, monkeypatch):
    hashed = []
    real = checksums.file_sha256
    monkeypatch.setattr(checksums, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path))
    assert checksums.verify_artefact(model, "model directory") is True
    assert len(hashed) == len(read_record(model))  # the first time, every file
    hashed.clear()
    assert checksums.verify_artefact(model, "model directory") is True
    assert hashed == []  # then from the cache, keyed by size, mtime and inode
    os.utime(model / WEIGHTS, ns=(1, 1))  # touched: hashed again (and still intact)
    assert checksums.verify_artefact(model, "model directory") is True
    assert hashed == ["diffusion_pytorch_model.safetensors"]
    flip_bytes(model / WEIGHTS)
    with pytest.raises(NamiError, match="does not match its checksum"):
        checksums.verify_artefact(model, "model directory")


# -- adapters ------------------------------------------------------------------------------------------------


@pytest.fixture
def adapter(tmp_path):
    return save_tiny_adapter(tmp_path / "adapter")


def edit_adapter(folder: Path, change) -> None:
    state = load_file(folder / LORA_WEIGHTS)
    save_file(change(state), str(folder / LORA_WEIGHTS))


def test_renamed_lora_a_matrices_are_refused(tiny_model_dir, adapter, tmp_path, capsys):
    """14: the A matrices were dropped and peft's random init used."""
    edit_adapter(adapter, lambda s: {k.replace("lora_A", "lora_X"): v for k, v in s.items()})
    code, _, err = sample(capsys, tiny_model_dir, tmp_path / "s", "--lora", str(adapter))
    assert code == 2 and "14 of its 28 tensors are not LoRA matrices (e.g. single_transformer_blocks.0.attn.to_k.lora_X" in one_error(err)
    edit_adapter(adapter, lambda s: {k: v for k, v in s.items() if "lora_X" not in k})  # B matrices alone
    code, _, err = sample(capsys, tiny_model_dir, tmp_path / "s", "--lora", str(adapter))
    assert code == 2 and "14 of its 14 modules lack lora_A" in one_error(err)
    assert not (tmp_path / "s").exists()


def test_non_finite_adapter_values_are_refused(tiny_model_dir, adapter, tmp_path, capsys):
    """15: an adapter tensor all NaN drew images."""
    edit_adapter(adapter, lambda s: {k: (torch.full_like(v, float("nan")) if i == 0 else v)
                                     for i, (k, v) in enumerate(sorted(s.items()))})
    code, _, err = sample(capsys, tiny_model_dir, tmp_path / "s", "--lora", str(adapter))
    assert code == 2 and "the adapter holds non-finite values (1 of 28 tensors" in one_error(err)


def test_a_damaged_adapter_is_found_by_its_record(tiny_model_dir, adapter, tmp_path, capsys):
    """16: an adapter with 16 bytes flipped drew images."""
    write_record(adapter)
    flip_bytes(adapter / LORA_WEIGHTS)
    code, _, err = sample(capsys, tiny_model_dir, tmp_path / "s", "--lora", str(adapter))
    assert code == 2 and one_error(err) == (f"error: adapter {adapter} is damaged: {LORA_WEIGHTS} does not match its "
                                            "checksum (altered after it was written); write it again (or restore it)")


def test_nami_train_adapters_carry_a_record_that_covers_their_ema(tmp_path):
    from nami_core.train.adapters import write_adapter_dir

    pipe = build_tiny_pipeline()
    from nami_core.model.lora import add_lora, lora_config

    params = add_lora(pipe.transformer, lora_config(4))
    final = write_adapter_dir(tmp_path / "final", pipe.transformer, [p.detach() + 1 for p in params], {"rank": 4})
    assert sorted(read_record(final)) == sorted(["adapter_config.json", LORA_WEIGHTS, "nami_lora.json",
                                                 f"ema/{LORA_WEIGHTS}", "ema/adapter_config.json"])
    from nami_core.model.adapter_check import verify_adapter_files

    verify_adapter_files(final / "ema")
    flip_bytes(final / "ema" / LORA_WEIGHTS)
    with pytest.raises(NamiError, match=f"adapter {final} is damaged: ema/{LORA_WEIGHTS} does not match"):
        verify_adapter_files(final / "ema")


def test_the_config_must_agree_with_the_weights(tiny_model_dir, tmp_path, capsys):
    """17: rank-8 weights beside an adapter_config.json saying r: 4 were never cross-checked."""
    adapter = save_tiny_adapter(tmp_path / "adapter", rank=8)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))
    code, _, err = sample(capsys, tiny_model_dir, tmp_path / "s", "--lora", str(adapter))
    assert code == 2 and "adapter_config.json says r=4, but its weights have rank 8" in one_error(err)
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["attn.to_q"]}))
    code, _, err = sample(capsys, tiny_model_dir, tmp_path / "s", "--lora", str(adapter))
    assert code == 2 and "adapter_config.json targets attn.to_q, but the weights hold" in one_error(err)


def test_an_adapter_that_partly_fits_is_a_warning_and_one_that_does_not_an_error(tiny_model_dir, adapter, tmp_path,
                                                                                  capsys):
    extra = {"transformer.single_transformer_blocks.9.attn.to_q.lora_A.weight": torch.zeros(4, 32),
             "transformer.single_transformer_blocks.9.attn.to_q.lora_B.weight": torch.zeros(32, 4)}
    edit_adapter(adapter, lambda s: {**s, **extra})
    code, stdout, err = sample(capsys, tiny_model_dir, tmp_path / "s.png", "--lora", str(adapter))
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: --lora {adapter}: 1 of its 15 modules are not in this model "
                        "(e.g. single_transformer_blocks.9.attn.to_q) and are ignored; the rest applies"]
    assert (tmp_path / "s.png").is_file()
    edit_adapter(adapter, lambda s: extra)
    code, _, err = sample(capsys, tiny_model_dir, tmp_path / "t", "--lora", str(adapter))
    assert code == 2 and "none of its 1 modules is in this model (e.g. single_transformer_blocks.9.attn.to_q)" in err


def test_what_diffusers_logs_while_loading_is_passed_on():
    import logging

    from nami_core.model.lora import quiet_peft

    with quiet_peft() as lines:
        logging.getLogger("diffusers.loaders.peft").warning("Loading adapter weights led to unexpected keys: x, y\nmore")
    assert lines == ["Loading adapter weights led to unexpected keys: x, y"]


# -- prepared data -----------------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path):
    return prepare_train_data(tmp_path)


def shard_of(data: Path) -> Path:
    return data / json.loads((data / "manifest.json").read_text())["shards"][0]["file"]


def test_a_shard_altered_in_place_is_refused_when_training_starts(root, tmp_path, capsys):
    """18: a prepared shard with 16 bytes flipped, same size, trained to "done"."""
    shard = shard_of(root / "data")
    size = shard.stat().st_size
    flip_bytes(shard)
    assert shard.stat().st_size == size
    code, _, err = run_cli(train_cli_args(root, tmp_path / "run", "--steps", "1"), capsys)
    assert code == 2 and one_error(err) == (
        f"error: data shard {shard} is damaged (its bytes changed since it was written: the sha256 differs); re-run "
        f"`nami prepare-data` with the same source and --out {root / 'data'} to redo it")
    assert not (tmp_path / "run" / "final").exists()


def test_shards_are_hashed_once_then_remembered(root, monkeypatch):
    from nami_core.data.store import LatentStore

    hashed = []
    real = checksums.file_sha256
    monkeypatch.setattr(checksums, "file_sha256", lambda path: hashed.append(Path(path).name) or real(path))
    LatentStore(root / "data")
    shards = json.loads((root / "data" / "manifest.json").read_text())["shards"]
    assert sorted(hashed) == sorted([Path(s["file"]).name for s in shards] + ["null_text.safetensors"])
    hashed.clear()
    LatentStore(root / "data")
    assert hashed == []


def test_data_prepared_before_shard_checksums_still_trains(root, tmp_path, capsys):
    path = root / "data" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"] = [{k: v for k, v in s.items() if k != "sha256"} for s in manifest["shards"]]
    path.write_text(json.dumps({k: v for k, v in manifest.items() if not k.startswith("null_text_")}))
    code, _, err = run_cli(train_cli_args(root, tmp_path / "run", "--steps", "1"), capsys)
    assert code == 0, err


@pytest.mark.parametrize("change, message", [
    ({"total": 999}, "says total 999, but its shards hold 12 images"),
    ({"counts": {"16": 0, "32": 0, "64": 13}}, "says 13 images at 64px, but its shards hold 12"),
    ({"shards": 5}, "shards must be a list of records with file, resolution and count"),
])
def test_a_manifest_that_contradicts_itself_is_refused(root, tmp_path, capsys, change, message):
    """19: `total: 999` for 12 images went without a note."""
    path = root / "data" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    code, _, err = run_cli(train_cli_args(root, tmp_path / "run", "--steps", "1"), capsys)
    assert code == 2 and one_error(err) == f"error: {path}{' ' if 'says' in message else ': '}{message}" + (
        "; the manifest contradicts itself (edited by hand?)" if "says" in message else " (damaged?)")


def test_the_finite_check_reads_the_device_once(monkeypatch):
    """`runtime.non_finite`, run on every model load: one flag per tensor, read back in one transfer."""
    from nami_core.runtime import non_finite

    pipe = build_tiny_pipeline()
    tensors = dict(pipe.transformer.named_parameters())
    reads = []
    real_tolist, real_item = torch.Tensor.tolist, torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(self.shape) or real_tolist(self))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: reads.append("item") or real_item(self))
    assert non_finite(tensors) == []
    assert reads == [torch.Size([len(tensors)])]
    with torch.no_grad():
        tensors[sorted(tensors)[5]][0] = float("inf")
    assert non_finite(tensors) == [sorted(tensors)[5]]


def index_entries():
    """(part, entry) for every part of `PART_CLASSES`: a foreign module, another part's class, a bare
    string, and nothing (except for the optional bridge)."""
    from nami_core.modeldir import PART_CLASSES

    parts = list(PART_CLASSES)
    for k, part in enumerate(parts):
        other = list(PART_CLASSES[parts[(k + 1) % len(parts)]][0])
        entries = [["os", "system"], other, "NamiTransformer"] + ([] if part == "bridge" else [None])
        yield from ((part, entry) for entry in entries)


@pytest.mark.parametrize("part, entry", list(index_entries()))
def test_model_index_names_only_nami_part_classes(tiny_model_dir, tmp_path, capsys, part, entry):
    """model_index.json names each part's class; the loader imports only the classes that part may
    be (`modeldir.PART_CLASSES`) and refuses anything else in one line, before importing it."""
    from nami_core.modeldir import PART_CLASSES

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    (model / "checksums.json").unlink(missing_ok=True)  # an older directory: no record to catch the edit
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, part: entry}))
    code, _, err = sample(capsys, model, tmp_path / "s")
    allowed = " or ".join(f"[{m!r}, {c!r}]" for m, c in PART_CLASSES[part])
    assert code == 2 and one_error(err) == f"error: {model / 'model_index.json'}: {part} must be {allowed}, got {entry!r}"
    assert not (tmp_path / "s").exists()


def test_model_index_of_another_pipeline_is_one_line(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    (model / "checksums.json").unlink(missing_ok=True)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "_class_name": "FluxPipeline"}))
    code, _, err = sample(capsys, model, tmp_path / "s")
    assert code == 2 and one_error(err) == (f"error: {model / 'model_index.json'} is not a nami model's (its "
                                            "_class_name is 'FluxPipeline', not 'NamiPipeline')")


def test_model_index_naming_a_bridge_without_its_folder_is_one_line(tiny_model_dir, tmp_path, capsys):
    """An optional part that model_index.json names must have its folder (diffusers' loader would
    otherwise look for it on the Hugging Face hub)."""
    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    (model / "checksums.json").unlink(missing_ok=True)
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps({**index, "bridge": ["nami_core.flow.jump", "BridgeJump"]}))
    code, _, err = sample(capsys, model, tmp_path / "s")
    assert code == 2 and one_error(err) == (f"error: model directory {model} is missing its bridge/ folder "
                                            "(model_index.json names one)")

"""Every option of every command at its edge values, enumerated from the click tree itself.

`nami_cli.main.command()` is walked: every command, every option and argument (old spellings
included). Each value-taking parameter gets the edge inputs of its kind: the kind comes from its
type (int, float), from the core's closed set of values (a metavar "a|b|c" or a field's `one_of`),
and, for text, from `MEANINGS` (a path to read, a path to write, a list of numbers, ...). A flag
takes no value and has no edges.

Each input must be refused in one line (exit status 2, stderr exactly one `error:` line naming the
option, no traceback, nothing written), or have a documented meaning: `DOCUMENTED` names the
option, the input and the words of its help that document it. Nothing runs for real: the command
runs in-process with the other parameters at valid tiny values, and the call that starts its work
(`WORK`: loading a model, training, converting) is replaced by one that records that the input
was accepted, so a refusal must come from the checks before it.

A new option needs no new code when its kind follows from its type or metavar; otherwise
`test_every_option_has_a_rule` fails until `MEANINGS` says what it holds. Flags alone are left out
(`EXCLUDED`). `PROBES` adds inputs a new user tries that are not one option's edge (symbolic links,
read-only folders, an output equal to an input, unicode, very long names).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import pytest
import typer

from nami_cli.build import commands, finish, flag_of
from nami_cli.consistency import annotation_of, listed
from nami_cli.main import command

# -- what a parameter holds -----------------------------------------------------------------------------

INT, FLOAT, CHOICE, CHOICES = "int", "float", "choice", "choice list"
NUMBERS = "list of numbers"  # "256,512,1024", "4:2:1", "10,10,10", a schedule "0:4:2:1,100:1:2:4"
TEXT = "text"  # free text: a prompt, a title, a column name
IN_FOLDER, IN_FILE, IN_PATH = "folder to read", "file to read", "folder or file to read"
OUT_FOLDER, OUT_FILE = "folder to write", "file to write"
SPEC = "spec"  # NAME[:ARGUMENT] forms (--codec pixel:2, --lora ADAPTER:SCALE): edges in EXTRA_EDGES
FLAG = "flag"
# kinds with no edge inputs, and why
EXCLUDED = {FLAG: "a flag takes no value: given or left out, both are valid"}

# Text parameters by flag (argument: its name); a command that means something else by a spelling
# is keyed ("command", flag).
MEANINGS: dict[Any, str] = {
    "--out": OUT_FOLDER, ("eval nami1k build", "--out"): OUT_FILE, ("eval nami1k annotate", "--out"): OUT_FILE,
    "--json": OUT_FILE, "--plot": OUT_FILE, "--images-dir": OUT_FOLDER,
    "--data": IN_FOLDER, "--config": IN_FILE, "--model": IN_FOLDER, "--init": IN_FOLDER, "--metadata": IN_FILE,
    "--csv": IN_FILE, "--vqa": IN_FOLDER, "--clip": IN_FOLDER, "--inception": IN_FILE,
    ("eval dpg", "--prompts"): IN_FOLDER, ("eval nami1k generate", "--prompts"): IN_FILE,
    "--open": IN_FILE, "--human": IN_FILE, "--generated": IN_FILE, "--images": SPEC,
    ("prepare-data", "source"): SPEC, ("convert nami-t2i", "src"): IN_FOLDER, ("convert flux", "src"): IN_PATH,
    ("convert checkpoint", "src"): IN_FOLDER, "adapter": IN_FOLDER, ("eval clipscore", "images"): IN_FOLDER,
    "real": IN_FOLDER, "fake": IN_FOLDER, "annotations": IN_FILE,
    "--stages": NUMBERS, "--steps": NUMBERS, "--cfg": NUMBERS, "--stage-mix": NUMBERS, "--ratio-schedule": NUMBERS,
    "--ratio": NUMBERS, "--window-ratios": NUMBERS, "--stage-loss-weights": NUMBERS, "--sample-steps": NUMBERS,
    "--sample-cfg": NUMBERS, "--lr-schedule": NUMBERS, "--resolutions": NUMBERS, "--counts": NUMBERS,
    "--stage-ends": NUMBERS, "--size": NUMBERS, "--scene-mix": SPEC, "--keep-blocks": SPEC, "--models": CHOICES,
    "--lora": SPEC, "--resume": SPEC, "--codec": SPEC, "--text-encoder": SPEC, "--detector": SPEC,
    "prompt": TEXT, "--negative": TEXT, "--vqa-prompt": TEXT, "--title": TEXT, "--image-column": TEXT,
    "--caption-column": TEXT, "--precision": CHOICE, "--validation-prompt": TEXT, "--validation-prompts": IN_FILE,
    ("plot", "run"): IN_FOLDER, ("plot", "--out"): OUT_FILE,
}

NUMBER_EDGES = [("empty", ""), ("zero", "0"), ("negative", "-1"), ("nan", "nan"), ("inf", "inf"),
                ("huge", "1000000000000"), ("huger", str(10**30))]
EDGES: dict[str, list[tuple[str, str]]] = {
    INT: NUMBER_EDGES,
    FLOAT: [*NUMBER_EDGES, ("-inf", "-inf"), ("1e30", "1e30")],
    NUMBERS: [*NUMBER_EDGES, ("comma", ","), ("hole", "1,,2"), ("1e30", "1e30")],
    CHOICE: [("empty", ""), ("wrong", "sideways"), ("cased", None), ("zero", "0")],
    CHOICES: [("empty", ""), ("comma", ","), ("hole", None), ("wrong", "sideways"), ("cased", None)],
    TEXT: [("empty", ""), ("blank", "   ")],
    IN_FOLDER: [("empty", ""), ("missing", "missing-folder"), ("file", "a-file.txt"), ("dot", ".")],
    IN_FILE: [("empty", ""), ("missing", "missing-file.json"), ("folder", "a-folder"), ("dot", ".")],
    IN_PATH: [("empty", ""), ("missing", "missing-path"), ("dot", ".")],
    OUT_FOLDER: [("empty", ""), ("file", "a-file.txt"), ("dot", "."), ("named like a file", "x.png"),
                 ("under a file", "a-file.txt/sub")],
    OUT_FILE: [("empty", ""), ("folder", "a-folder"), ("dot", "."), ("under a file", "a-file.txt/x.json")],
    SPEC: [("empty", ""), ("blank", "   ")],
}
# wrong counts: a list whose length does not fit the stages of the data, model or preset
WRONG_COUNT = {"--steps": "10,10", "--cfg": "3,3", "--stage-mix": "4:2", "--ratio-schedule": "4:2", "--ratio": "4:2",
               "--window-ratios": "1:1", "--stage-loss-weights": "1,1", "--sample-steps": "4,4", "--sample-cfg": "3,3",
               "--counts": "1,1", ("train", "--stages"): "16,32", "--stage-ends": "1,2", "--size": "64x64x64"}
EXTRA_EDGES: dict[Any, list[tuple[str, str]]] = {
    ("sample", "--lora"): [("missing", "missing-adapter"), ("scale 0", "{adapter}:0"), ("scale -1", "{adapter}:-1"),
                          ("scale nan", "{adapter}:nan"), ("scale inf", "{adapter}:inf"),
                          ("scale 1e30", "{adapter}:1e30"), ("no scale", "{adapter}:"), ("no adapter", ":1"),
                          ("file", "a-file.txt")],
    "--resume": [("missing", "missing-checkpoint"), ("cased", "LATEST"), ("file", "a-file.txt"), ("dot", ".")],
    "--codec": [("wrong", "sideways"), ("cased", "PIXEL"), ("patch 0", "pixel:0"), ("patch -1", "pixel:-1"),
                ("patch nan", "pixel:nan"), ("huge patch", "pixel:1000000000000"), ("no vae path", "flux-vae:"),
                ("missing vae", "flux-vae:missing-vae")],
    "--text-encoder": [("wrong", "sideways"), ("cased", "MINILM"), ("no path", "t5:"), ("missing", "t5:missing-t5"),
                       ("half pair", "mt5:missing,")],
    "--detector": [("wrong", "sideways"), ("cased", "SHAPES"), ("no path", "mask2former:"),
                   ("missing", "mask2former:missing-m2f")],
    "--scene-mix": [("comma", ","), ("hole", "relation:1,,objects:1"), ("wrong", "sideways:1"),
                    ("zero", "relation:0"), ("negative", "relation:-1"), ("nan", "relation:nan"),
                    ("inf", "relation:inf"), ("huge", "relation:1e300")],
    "--keep-blocks": [("comma", ","), ("hole", "d0,,s0"), ("wrong", "x0"), ("negative", "d-1"),
                      ("huge", "d1000000000000"), ("backwards", "d3-1")],
    "--images": [("missing", "missing-folder"), ("file", "a-file.txt"), ("dot", "."), ("no folder", "name=")],
    ("prepare-data", "source"): [("missing", "missing-folder"), ("dot", "."), ("file", "a-file.txt"),
                                 ("cased", "SHAPES")],
    "--size": [("no height", "64x"), ("zero side", "0x64"), ("huge", "1000000000000x64")],
}


def key_of(param) -> str:
    """How the tables name a parameter: an option's longest spelling, an argument's name."""
    return flag_of(param) if param.param_type_name == "option" else param.name


def meaning(path: tuple[str, ...], param) -> str | None:
    """The kind of `param` of `nami PATH` (None: no rule)."""
    if getattr(param, "is_flag", False):
        return FLAG
    annotation = annotation_of(param)
    if annotation is int:
        return INT
    if annotation is float:
        return FLOAT
    name = key_of(param)
    found = MEANINGS.get((" ".join(path), name), MEANINGS.get(name))
    if found is not None:
        return found
    values = listed(param.metavar)
    if values:
        return CHOICES if param.metavar.endswith("[,...]") else CHOICE
    return None


def edges(path: tuple[str, ...], param, kind: str, workspace: "Workspace") -> list[tuple[str, str]]:
    """(label, value) of every edge input of `param` of `nami PATH`, whose kind is `kind`."""
    name = key_of(param)
    found = list(EDGES.get(kind, []))
    values = listed(param.metavar)
    resolved = []
    for label, value in found:
        if label == "cased":
            value = values[0].upper() if values and values[0] != values[0].upper() else None
        if label == "hole" and kind == CHOICES:
            value = f"{values[0]},,{values[-1]}" if values else None
        if value is not None:
            resolved.append((label, value))
    wrong = WRONG_COUNT.get((" ".join(path), name), WRONG_COUNT.get(name))
    if wrong is not None:
        resolved.append(("wrong count", wrong))
    extra = EXTRA_EDGES.get((" ".join(path), name), EXTRA_EDGES.get(name, []))
    resolved += [(label, value.format(**workspace.names)) for label, value in extra]
    return resolved


# -- inputs with a documented meaning -----------------------------------------------------------------------
# (flag, edge) or (command, flag, edge) -> the words of the option's help (or its default) that say
# what the input means.
DOCUMENTED: dict[tuple, str] = {
    ("--seed", "zero"): "seed", ("--seed", "huge"): "seed",  # any seed from 0 to 2^63 - 1 is a seed
    ("--keep", "zero"): "0 = all",
    ("--ema-decay", "zero"): "0 = no EMA",
    ("--max-nan-steps", "zero"): "0: at the first",
    ("--warmup", "zero"): "0: none",
    ("--cfg-dropout", "zero"): "0: never",
    ("--max-side", "zero"): "0 embeds the PNGs as they are",
    ("--usual-color", "zero"): "Chance that",
    ("--gap", "zero"): "Least distance between two objects",
    **{("--grad-clip", edge): "leaves the gradients unclipped" for edge in ("huge", "huger", "1e30")},
    **{("--time-budget", edge): "Stop after this many minutes" for edge in ("huge", "huger", "1e30")},
    **{("--lr", edge): "one so large that the run diverges stops it" for edge in ("huge", "huger", "1e30")},
    ("--max-words", "huge"): "Longer prompts are left out",
    ("--lr-warmup-steps", "zero"): "0: none", ("--adam-weight-decay", "zero"): "0: none",
    ("--adam-beta1", "zero"): "0: no momentum", ("--adam-beta2", "zero"): "0: each step scaled by its own gradient",
    ("--validation-seed", "zero"): "seed", ("--validation-seed", "huge"): "seed",
    ("sample", "--lora", "scale 0"): "0 applies nothing", ("sample", "--lora", "scale -1"): "a negative scale subtracts",
    ("--scale", "zero"): "0 applies nothing", ("--scale", "negative"): "a negative scale subtracts",
    ("--negative", "empty"): "'' = none", ("--negative", "blank"): "'' = none",
    ("sample", "--out", "named like a file"): "a .png file for one image",
    ("real", "dot"): "Folder of", ("fake", "dot"): "Folder of",  # `.` is the current folder, a folder of images
}


# -- running a command without its work ---------------------------------------------------------------------

# The call that starts each command's work (a model, a dataset, a conversion), replaced by `Reached`.
WORK: dict[tuple[str, ...], list[str]] = {
    ("prepare-data",): ["nami_cli.prepare.run"],
    ("train",): ["nami_cli.train.run"],
    ("sample",): ["nami_cli.sample.run"],
    ("info",): ["nami_core.train.memory.train_memory_report", "nami_core.train.adapters.lora_parameter_count"],
    ("bench", "latency"): ["nami_cli.bench.run_latency"],
    ("bench", "train"): ["nami_cli.bench.run_train"],
    ("eval", "geneval"): ["nami_core.eval.generation.GenerationSettings.generator",
                          "nami_core.eval.geneval.evaluate_folder"],
    ("eval", "dpg"): ["nami_core.eval.generation.GenerationSettings.generator", "nami_core.eval.vqa.TransformersVQA"],
    ("eval", "clipscore"): ["nami_core.eval.clip_model.ClipEncoder"],
    ("eval", "fid"): ["nami_core.eval.fid.InceptionFeatures"],
    ("eval", "nami1k", "build"): ["nami_core.eval.nami1k.plots.write_histograms"],
    ("eval", "nami1k", "generate"): ["nami_core.eval.generation.GenerationSettings.generator"],
    ("eval", "nami1k", "annotate"): ["nami_core.eval.nami1k.annotate.page_data"],
    ("eval", "nami1k", "score"): [],
    ("convert", "nami-t2i"): ["nami_core.interop.public_layout.convert_public_layout"],
    ("convert", "flux"): ["nami_core.interop.flux_convert.build_transformer"],
    ("convert", "checkpoint"): ["nami_core.train.export.export_checkpoint"],
    ("convert", "lora"): ["nami_core.modeldir.merge_lora"],
    ("plot",): ["nami_core.train.curves.plot_run"],
}


class Reached(Exception):
    """The command got past its checks to its work."""


def reached(*args, **kwargs):
    raise Reached


@dataclass
class Workspace:
    root: Path
    names: dict[str, str]


def build_workspace(root: Path, model: Path) -> Workspace:
    """Valid tiny inputs of every command, each named for `{name}` in BASE."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "a-file.txt").write_text("keep me\n")
    (root / "a-folder").mkdir()
    (root / "a-folder" / "kept.txt").write_text("keep me\n")
    data = root / "data"
    data.mkdir()
    (data / "prepare.json").write_text("{}")
    (data / "manifest.json").write_text(json.dumps({"format": "nami-latents", "stages": [16, 32, 64], "shards": [],
                                                    "counts": {}, "total": 0}))
    (root / "model.json").write_text(json.dumps({"width": 32, "heads": 2, "double_blocks": 1, "single_blocks": 2,
                                                 "stage_ends": [1, 2, 3], "rope_axes": [4, 6, 6]}))
    adapter = root / "adapter"
    adapter.mkdir()
    (adapter / "pytorch_lora_weights.safetensors").write_bytes(b"")
    checkpoint = root / "run" / "checkpoints" / "step-00000004"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    (root / "run" / "train_config.json").write_text(json.dumps({"train": {"data": str(data.resolve())}, "model": {},
                                                                "flow": {}, "patch_size": 1}))
    (root / "run" / "metrics.jsonl").write_text(json.dumps({"step": 4, "loss": 0.5, "loss_stage": [0.5, 0.5, 0.5],
                                                            "lr": 1e-4, "stage_ratios": [1, 1, 1],
                                                            "images_per_s": 10.0}) + "\n")
    release = root / "release"
    release.mkdir()
    (release / "bridge_flow.bin").write_bytes(b"")
    from tests.helpers import flux_and_nami

    flux, _ = flux_and_nami(dict(in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=16, pooled_projection_dim=8,
                                 axes_dims_rope=(2, 2, 4)), (1, 2, 3))
    flux.save_pretrained(root / "flux")
    geneval = root / "geneval.jsonl"
    geneval.write_text(json.dumps({"tag": "single_object", "include": [{"class": "circle", "count": 1}],
                                   "prompt": "a photo of a circle"}) + "\n")
    csv = root / "dpg.csv"
    csv.write_text("item_id,text,keywords,proposition_id,dependency,category_broad,category_detailed,tuple,"
                   "question_natural_language\na,a cat,,1,0,entity,whole,entity - whole (cat),Is there a cat?\n"
                   "a,a cat,,2,0,entity,whole,entity - whole (cat),Is there a cat?\n")
    (root / "dpg-prompts").mkdir()
    (root / "dpg-prompts" / "a.txt").write_text("a cat\n")
    for name in ("vqa", "clip"):
        (root / name).mkdir()
        (root / name / "config.json").write_text("{}")
        (root / name / "model.safetensors").write_bytes(b"")
    (root / "inception.pt").write_bytes(b"\0" * 16)
    images = root / "images"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8)).save(images / "a.png")
    (images / "a.txt").write_text("a black square\n")
    (root / "images2").mkdir()
    Image.new("RGB", (8, 8)).save(root / "images2" / "b.png")
    for source in ("open", "human", "generated"):
        (root / f"{source}.txt").write_text(f"a {source} red circle\na {source} blue square\n")
    record = {"id": "0000", "prompt": "a red circle", "source": "open", "topic": "other", "words": 3}
    (root / "set.jsonl").write_text(json.dumps(record) + "\n")
    generated = root / "n1k-images"
    generated.mkdir()
    Image.new("RGB", (8, 8)).save(generated / "0000_00.png")
    (generated / "manifest.jsonl").write_text(json.dumps({"file": "0000_00.png", **record, "image": 0, "seed": 0,
                                                          "model": "m"}) + "\n")
    (root / "annotations.json").write_text(json.dumps({
        "format": "nami1k-annotations/1", "page": "p", "annotator": "a",
        "items": [{"key": "m/0000_00.png", "model": "m", "id": "0000", "source": "open", "topic": "other",
                   "relevance": 50, "coherence": 50, "aesthetics": 50, "realism": 50}]}))
    names = {"model": str(model), "data": "data", "adapter": "adapter", "checkpoint": str(checkpoint.relative_to(root))}
    return Workspace(root, names)


# The required parameters of each command at valid values (arguments first, in order).
BASE: dict[tuple[str, ...], list[str]] = {
    ("prepare-data",): ["shapes", "--out", "new-data", "--stages", "16,32,64"],
    ("train",): ["--data", "data", "--out", "new-run", "--stages", "16,32,64"],
    ("sample",): ["a red circle", "--model", "{model}", "--out", "samples"],
    ("info",): ["--preset", "tiny"],
    ("bench", "latency"): ["--preset", "tiny"],
    ("bench", "train"): ["--preset", "tiny"],
    ("eval", "geneval"): ["--out", "geneval-out", "--model", "{model}", "--metadata", "geneval.jsonl"],
    ("eval", "dpg"): ["--csv", "dpg.csv", "--vqa", "vqa", "--out", "dpg-out", "--prompts", "dpg-prompts",
                      "--model", "{model}"],
    ("eval", "clipscore"): ["images", "--clip", "clip"],
    ("eval", "fid"): ["images", "images2", "--inception", "inception.pt"],
    ("eval", "nami1k", "build"): ["--out", "new-set.jsonl", "--open", "open.txt", "--human", "human.txt",
                                  "--generated", "generated.txt", "--counts", "1,1,1"],
    ("eval", "nami1k", "generate"): ["--prompts", "set.jsonl", "--out", "n1k-out", "--model", "{model}"],
    ("eval", "nami1k", "annotate"): ["--images", "n1k-images", "--out", "page.html"],
    ("eval", "nami1k", "score"): ["annotations.json"],
    ("convert", "nami-t2i"): ["release", "--out", "converted"],
    ("convert", "flux"): ["flux", "--out", "flux-out", "--stage-ends", "1,2,3"],
    ("convert", "checkpoint"): ["{checkpoint}", "--out", "ck-model"],
    ("convert", "lora"): ["adapter", "--model", "{model}", "--out", "merged", "--merge"],
    ("plot",): ["run"],
}
# Options that apply only beside others: (command, flag) -> the others
CONTEXT: dict[tuple[str, str], list[str]] = {
    ("info", "--batch-size"): ["--train-memory"], ("info", "--dtype"): ["--train-memory"],
    ("info", "--precision"): ["--train-memory"], ("info", "--grad-checkpointing"): ["--train-memory"],
    ("info", "--gpus"): ["--train-memory", "--fsdp"], ("info", "--stage-mix"): ["--train-memory"],
    ("info", "--ema-decay"): ["--train-memory"], ("info", "--lora"): ["--train-memory"],
    ("info", "--lora-targets"): ["--train-memory", "--lora", "4"],
    ("train", "--lora"): ["--model", "{model}"], ("train", "--lora-targets"): ["--model", "{model}", "--lora", "4"],
    ("train", "--lora-alpha"): ["--model", "{model}", "--lora", "4"],
    ("train", "--lr-warmup-steps"): ["--lr-scheduler", "linear"],
    ("train", "--validation-every"): ["--validation-prompt", "a red circle"],
    ("train", "--validation-seed"): ["--validation-prompt", "a red circle"],
}


def argv_with(path: tuple[str, ...], param, value: str, workspace: Workspace) -> list[str]:
    """The command line of `nami PATH` with `param` set to `value`, the others at BASE."""
    base = [a.format(**workspace.names) for a in BASE[path]]
    name = key_of(param)
    context = [a.format(**workspace.names) for a in CONTEXT.get((" ".join(path), name), [])]
    if param.param_type_name == "argument":
        arguments = [p for p in command_of(path).params if p.param_type_name == "argument"]
        index = arguments.index(param)
        base[index] = value
        return [*path, *base, *context]
    if param.opts[0] in base or flag_of(param) in base:
        i = base.index(param.opts[0] if param.opts[0] in base else flag_of(param))
        base = base[:i] + base[i + 2:]
    return [*path, *base, *context, flag_of(param), value]


def command_of(path: tuple[str, ...]):
    return dict(commands(command()))[path]


def state(*roots: Path) -> set[tuple[str, int, int]]:
    """Every entry under `roots` with its size and modification time."""
    found = set()
    for root in roots:
        for p in root.rglob("*"):
            st = p.lstat()
            found.add((str(p), st.st_size if p.is_file() else -1, st.st_mtime_ns))
    return found


def attempt(argv: list[str], capsys) -> tuple[str, int | None, str]:
    """("reached" | "exited", exit status, stderr) of `nami ARGV` run in-process."""
    from nami_cli.main import run

    capsys.readouterr()
    try:
        run(argv)
        outcome, code = "reached", 0  # a light command (info, score) did its work
    except Reached:
        outcome, code = "reached", None
    except SystemExit as exc:
        outcome, code = "exited", exc.code
    except Exception as exc:  # noqa: BLE001 - a traceback is what the test reports
        import traceback

        return "traceback", None, "".join(traceback.format_exception(exc))
    return outcome, code, capsys.readouterr().err


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("edges"), tiny_model_dir)


@pytest.fixture
def no_work(monkeypatch, workspace):
    import importlib

    for targets in WORK.values():
        for dotted in targets:
            module_name, _, attr = dotted.rpartition(".")
            try:
                owner = importlib.import_module(module_name)
            except ModuleNotFoundError:
                module_name, _, cls = module_name.rpartition(".")
                owner = getattr(importlib.import_module(module_name), cls)
            monkeypatch.setattr(owner, attr, reached)
    monkeypatch.chdir(workspace.root)
    monkeypatch.setenv("COLUMNS", "200")


def help_text(path: tuple[str, ...], param) -> str:
    text = " ".join(str(x) for x in (param.help if hasattr(param, "help") else "", getattr(param, "show_default", ""),
                                     param.metavar) if x)
    return text + " " + (command_of(path).help or "")


def check_case(path, param, label, value, workspace, capsys) -> str | None:
    """None when `nami PATH` with `param` at `value` is refused in one line or documented; else the problem."""
    name = key_of(param)
    argv = argv_with(path, param, value, workspace)
    before = state(workspace.root)
    outcome, code, err = attempt(argv, capsys)
    where = f"nami {' '.join(argv)!r} ({name} {label})"
    if outcome == "traceback":
        return f"{where}: traceback\n{err}"
    if outcome == "reached":
        key = next((k for k in ((" ".join(path), name, label), (name, label)) if k in DOCUMENTED), None)
        if key is None:
            return f"{where}: accepted without a documented meaning"
        if DOCUMENTED[key].lower() not in help_text(path, param).lower():
            return f"{where}: accepted; its help does not say {DOCUMENTED[key]!r}"
        if state(workspace.root) != before:
            return f"{where}: accepted, but the checks wrote files"
        return None
    lines = [line for line in err.splitlines() if not (line.startswith("note: ") and " is now " in line)]
    if code != 2 or len(lines) != 1 or not lines[0].startswith("error: ") or "Traceback" in err:
        return f"{where}: exit {code}, stderr {err!r}"
    if state(workspace.root) != before:
        return f"{where}: refused, but files were written"
    if not names(lines[0], param, value):
        return f"{where}: the error does not name {name} or {value!r}: {lines[0]}"
    return None


def names(line: str, param, value: str) -> bool:
    """Whether the error `line` names the parameter (an option's spelling, the new spelling of an
    old one, an argument's name) or the value given (a path, a spec, one of its parts)."""
    if param.param_type_name == "option":
        spellings = [*param.opts, *getattr(param, "secondary_opts", [])]
        if param.hidden and (param.help or "").startswith("Old name of "):
            spellings.append(param.help.removeprefix("Old name of ").rstrip("."))
    else:
        spellings = [param.name, param.name.upper()]
    if any(re.search(rf"(?<![\w-]){re.escape(s)}(?![\w-])", line, re.IGNORECASE) for s in spellings):
        return True
    if value.strip() == ".":  # the current folder: the error may name it, or the file in it at fault
        return re.search(r"(?<![\w.-])\.(?![\w/-])", line) is not None or any(
            "/" in token and Path(token).exists() for token in re.findall(r"[\w./-]+", line))
    parts = [p for p in re.split(r"[:,=]", value.strip()) if p and not re.fullmatch(r"[-+0-9.e]+", p)]
    return any(re.search(rf"(?<![\w.-]){re.escape(p)}(?![\w-])", line) for p in parts)


PATHS = [p for p, _ in commands(command())]


@pytest.mark.parametrize("path", PATHS, ids=" ".join)
def test_every_edge_is_refused_in_one_line_or_documented(path, workspace, no_work, capsys):
    problems = []
    cmd = command_of(path)
    argv = [*path, *[a.format(**workspace.names) for a in BASE[path]]]
    outcome, code, err = attempt(argv, capsys)
    assert outcome == "reached", f"the base command line {argv} does not reach its work: {code} {err}"
    for param in cmd.params:
        kind = meaning(path, param)
        if kind in EXCLUDED or kind is None:  # None: test_every_option_has_a_rule names it
            continue
        for label, value in edges(path, param, kind, workspace):
            problem = check_case(path, param, label, value, workspace, capsys)
            if problem:
                problems.append(problem)
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


# -- the rules cover the command line, and every rule names something that exists --------------------------


def parameters() -> list[tuple[tuple[str, ...], Any]]:
    """(command path, parameter) of every parameter of every command, old spellings included."""
    return [(path, param) for path, cmd in commands(command()) for param in cmd.params]


def test_every_option_has_a_rule():
    """A parameter whose kind follows from neither its type, its metavar nor `MEANINGS` has no
    edges: the command line grew an option the enumeration would skip."""
    missing = [f"nami {' '.join(path)} {key_of(param)}" for path, param in parameters()
               if meaning(path, param) is None]
    assert not missing, "say in MEANINGS what these hold: " + ", ".join(missing)
    assert sorted(BASE) == sorted(WORK) == sorted(PATHS)  # every command runs, with its work replaced
    counted = sum(len(edges(path, param, meaning(path, param), Workspace(Path("."), NAMES)))
                  for path, param in parameters() if meaning(path, param) not in EXCLUDED)
    assert counted > 700  # the enumeration is of the whole command line, not of a few options


NAMES = {"model": "MODEL", "data": "data", "adapter": "adapter", "checkpoint": "CK"}


def test_every_rule_names_an_existing_parameter_and_edge():
    """No rule outlives its option: each key of the tables names a parameter of the command line
    (of the command given), and each documented input is an edge that parameter gets."""
    known = {key_of(param) for path, param in parameters()}
    by_command = {(" ".join(path), key_of(param)) for path, param in parameters()}
    for table in (MEANINGS, WRONG_COUNT, EXTRA_EDGES):
        for key in table:
            assert (key in by_command) if isinstance(key, tuple) else (key in known), key
    for key in CONTEXT:
        assert key in by_command, key
    for key in DOCUMENTED:
        *where, name, label = key
        found = [(path, param) for path, param in parameters() if key_of(param) == name
                 and (not where or " ".join(path) == where[0])]
        assert found, key
        assert any(label in dict(edges(path, param, meaning(path, param), Workspace(Path("."), NAMES)))
                   for path, param in found), key
        assert DOCUMENTED[key].strip(), key


def test_a_new_option_without_a_rule_is_found():
    """What `test_every_option_has_a_rule` relies on: a text option with no metavar and no entry in
    `MEANINGS` has no kind; numbers, closed sets of values and flags get theirs from their type."""
    def toy(mystery: Annotated[Optional[str], typer.Option("--mystery", help="?")] = None,
            count: Annotated[Optional[int], typer.Option("--count", help="n")] = None,
            size: Annotated[Optional[float], typer.Option("--size-factor", help="f")] = None,
            mode: Annotated[Optional[str], typer.Option("--mode", metavar="a|b", help="m")] = None,
            quiet: Annotated[Optional[bool], typer.Option("--quiet", help="q")] = None):
        """Toy."""

    app = typer.Typer(add_completion=False)
    app.callback()(lambda: None)
    app.command("toy")(toy)
    kinds = {flag_of(p): meaning(("toy",), p) for p in finish(typer.main.get_command(app)).commands["toy"].params}
    assert kinds == {"--mystery": None, "--count": INT, "--size-factor": FLOAT, "--mode": CHOICE, "--quiet": FLAG}


# -- inputs a new user tries, beyond the edges of one option -----------------------------------------------

# (what is tried, the command line ({names} of the workspace), shell setup in the workspace, the words of
# the one error line, or None: accepted, which here means its checks pass and it reaches its work)
PROBES: list[tuple[str, list[str], str, str | None]] = [
    ("a unicode prompt, an --out with spaces", ["sample", "🐱 a cat 猫", "--model", "{model}", "--out", "my samples/"], "",
     None),
    ("a prompt with a newline", ["sample", "a\ncat", "--model", "{model}"], "", None),
    ("--out x.png/ (a new folder named like a file)", ["sample", "a cat", "--model", "{model}", "--out", "x.png/"], "",
     "--out x.png names a .png file"),
    ("--out an existing folder named x.png", ["sample", "a cat", "--model", "{model}", "--out", "shots.png"],
     "mkdir shots.png", None),
    ("--out a symlink to the model", ["sample", "a cat", "--model", "{model}", "--out", "to-model"],
     "ln -s {model} to-model", "is the --model"),
    ("--out inside --data through a symlink", ["train", "--data", "data", "--out", "data-link/run", "--stages",
                                               "16,32,64"], "ln -s data data-link", "lies inside the --data"),
    ("--out a name longer than the file system takes", ["sample", "a cat", "--model", "{model}", "--out", "n" * 300],
     "", "File name too long"),
    ("--seed at its largest with --n 2", ["sample", "a cat", "--model", "{model}", "--seed", str(2**63 - 1),
                                          "--n", "2"], "", "beyond the largest seed"),
    ("--cfg just above 100", ["sample", "a cat", "--model", "{model}", "--cfg", "100.0000001"], "",
     "--cfg must be at most 100"),
    ("--size in full-width digits", ["sample", "a cat", "--model", "{model}", "--size", "６４x６４"], "",
     "--size must be WIDTHxHEIGHT"),
    ("--size with spaces and a capital X", ["info", "--preset", "tiny", "--size", " 1024 X 576 "], "", None),
    ("--stages in Arabic-Indic digits (Python reads them as 16,32,64)", ["info", "--preset", "tiny", "--stages",
                                                                        "١٦,٣٢,٦٤"], "", None),
    ("--stages with a trailing comma", ["info", "--preset", "tiny", "--stages", "256,512,"], "", "has an empty item"),
    ("--steps with spaces around the items", ["sample", "a cat", "--model", "{model}", "--steps", " 2, 2 ,2"], "",
     None),
    ("--device in capitals", ["sample", "a cat", "--model", "{model}", "--device", "CUDA"], "",
     "--device must be one of"),
    ("--seed -0", ["sample", "a cat", "--model", "{model}", "--seed", "-0"], "", None),
    ("--config a folder", ["train", "--data", "data", "--out", "run", "--stages", "16,32,64", "--config", "data"], "",
     "--config data is a folder"),
    ("--model a prepared data folder", ["train", "--data", "data", "--out", "run", "--stages", "16,32,64", "--model",
                                        "data"], "", "--model data is not a model directory"),
    ("--out the model config file", ["train", "--data", "data", "--out", "model.json", "--stages", "16,32,64",
                                     "--config", "model.json"], "", "--out model.json is a file"),
    ("--out a loop of symbolic links", ["train", "--data", "data", "--out", "loop", "--stages", "16,32,64"],
     "ln -s loop loop", "--out loop is a symbolic link"),
    ("--out a symbolic link to nothing", ["sample", "a cat", "--model", "{model}", "--out", "gone"],
     "ln -s nowhere gone", "--out gone is a symbolic link to nowhere"),
    ("--out a .png symbolic link to nothing", ["sample", "a cat", "--model", "{model}", "--out", "gone.png"],
     "ln -s nowhere gone.png", "--out gone.png is a symbolic link to nowhere"),
    ("--out /dev/null", ["sample", "a cat", "--model", "{model}", "--out", "/dev/null"], "", "--out /dev/null is a file"),
    ("one adapter twice", ["sample", "a cat", "--model", "{model}", "--lora", "adapter", "--lora", "adapter:0.5"], "",
     "--lora names one adapter twice"),
    ("a missing .tar shard", ["prepare-data", "missing.tar", "--out", "d", "--stages", "16"], "",
     "missing.tar does not exist"),
    ("a .tar of random bytes", ["prepare-data", "junk.tar", "--out", "d", "--stages", "16"],
     "head -c 2048 /dev/urandom > junk.tar", "junk.tar is not a tar file"),
    ("--out inside the image folder it prepares", ["prepare-data", "pictures", "--out", "pictures/prepared", "--stages",
                                                   "16"], "mkdir pictures && cp images/a.png pictures/",
     "lies inside the source pictures"),
    ("--images-dir the same as --out", ["prepare-data", "shapes", "--out", "same", "--stages", "16", "--images-dir",
                                        "same"], "", "is the --images-dir same"),
    ("--images-dir inside --out", ["prepare-data", "shapes", "--out", "same", "--stages", "16", "--images-dir",
                                   "same/png"], "", "holds the --images-dir"),
    ("--images-dir a file", ["prepare-data", "shapes", "--out", "d", "--stages", "16", "--images-dir", "model.json"], "",
     "--images-dir model.json is a file"),
    ("--text-encoder a bare path that is missing", ["prepare-data", "shapes", "--out", "d", "--stages", "16",
                                                     "--text-encoder", "nowhere/model"], "", "nowhere/model does not exist"),
    ("--model a component folder of a model", ["info", "--model", "{model}/transformer"], "",
     "is not a model directory"),
    ("--modes naming a mode twice", ["bench", "latency", "--preset", "tiny", "--modes", "nami,nami"], "",
     "--modes lists 'nami' twice"),
    ("--stage-mix weights whose sum overflows", ["train", "--data", "data", "--out", "run", "--stages", "16,32,64",
                                                 "--stage-mix", "1e308:1e308:1e308"], "", "each at most 1,000,000"),
    ("--lr-schedule with a step given twice", ["train", "--data", "data", "--out", "run", "--stages", "16,32,64",
                                               "--lr-schedule", "0:1e-4,0:1e-3"], "", "phase steps must increase"),
    ("an annotation file given twice", ["eval", "nami1k", "score", "annotations.json", "annotations.json"], "",
     "appears in both"),
    ("--json the annotation file", ["eval", "nami1k", "score", "annotations.json", "--json", "annotations.json"], "",
     "writing it would replace the input"),
    ("--out the --open prompt file", ["eval", "nami1k", "build", "--open", "o.jsonl", "--out", "o.jsonl", "--counts",
                                      "1,0,0"], "echo '{{\"prompt\": \"a red circle\"}}' > o.jsonl", "is the --open o.jsonl"),
    ("--out the prompt set", ["eval", "nami1k", "generate", "--prompts", "set.jsonl", "--out", "set.jsonl"], "",
     "--out set.jsonl is a file"),
    ("--vqa-prompt with another field", ["eval", "dpg", "--csv", "dpg.csv", "--vqa", "vqa", "--out", "g", "--prompts",
                                         "dpg-prompts", "--vqa-prompt", "Q: {{question}} {{answer}}"], "",
     "--vqa-prompt may hold {question} and no other"),
    ("--vqa-prompt with an open brace", ["eval", "dpg", "--csv", "dpg.csv", "--vqa", "vqa", "--out", "g", "--prompts",
                                         "dpg-prompts", "--vqa-prompt", "Q: {{question"], "", "--vqa-prompt must contain"),
    ("REAL and FAKE the same folder", ["eval", "fid", "images", "images/", "--inception", "inception.pt"], "",
     "REAL and FAKE are the same folder"),
    ("--out of a merge inside the model", ["convert", "lora", "adapter", "--model", "{model}", "--out", "{model}/m",
                                           "--merge"], "", "lies inside the --model"),
    ("--keep-blocks with a huge range", ["convert", "flux", "flux", "--out", "f", "--stage-ends", "1",
                                         "--keep-blocks", "d0-99999999999"], "", "block indices go up to 1023"),
    ("--double and --single huge", ["convert", "flux", "flux", "--out", "f", "--stage-ends", "1", "--double",
                                    "999999999", "--single", "1"], "", "--double and --single must be at most 1024"),
    ("a checkpoint that is a data folder", ["convert", "checkpoint", "data", "--out", "m"], "",
     "data is not a complete nami training checkpoint"),
    ("--validation-seed at its largest with two prompts", ["train", "--data", "data", "--out", "new-run", "--stages",
                                                           "16,32,64", "--validation-prompt", "a", "--validation-prompt",
                                                           "b", "--validation-seed", str(2**63 - 1)], "",
     "beyond the largest seed"),
    ("--validation-prompts a file of blank lines", ["train", "--data", "data", "--out", "new-run", "--stages", "16,32,64",
                                                    "--validation-prompts", "blank.txt"], "printf '\\n  \\n' > blank.txt",
     "holds no prompt"),
    ("--batch-size x --gradient-accumulation-steps past a step's samples", ["train", "--data", "data", "--out", "new-run",
                                                                            "--stages", "16,32,64", "--batch-size",
                                                                            "100000", "--gradient-accumulation-steps",
                                                                            "100"], "", "a step draws at most 1,000,000"),
    ("--adam-weight-decay with lr x decay of 1", ["train", "--data", "data", "--out", "new-run", "--stages", "16,32,64",
                                                  "--lr", "0.01", "--adam-weight-decay", "100"], "",
     "give a decay below 1 / lr = 100"),
    ("--lr-warmup-steps with the constant scheduler", ["train", "--data", "data", "--out", "new-run", "--stages",
                                                       "16,32,64", "--lr-warmup-steps", "10"], "",
     "the constant --lr-scheduler has no warmup"),
    ("plot a folder that is not a run", ["plot", "data"], "", "data has no metrics.jsonl"),
    # one input named twice however spelled, one name twice in a list of names
    ("one image folder under two names", ["eval", "nami1k", "annotate", "--images", "a=n1k-images", "--images",
                                          "b=n1k-link", "--out", "p.html"], "ln -s n1k-images n1k-link",
     "--images names n1k-images twice (also as n1k-link)"),
    ("a model named twice in --models", ["eval", "nami1k", "score", "annotations.json", "--models", "m,m"], "",
     "--models lists 'm' twice"),
    ("a scene kind given twice", ["prepare-data", "shapes", "--out", "d", "--stages", "16", "--scene-mix",
                                  "relation:1,relation:2"], "", "--scene-mix gives 'relation' twice"),
    # options that mean something only beside another, or say what another says
    ("--lora-alpha without --lora", ["train", "--data", "data", "--out", "new-run", "--stages", "16,32,64",
                                     "--lora-alpha", "8"], "", "--lora-alpha applies only with --lora"),
    ("--lr beside --lr-schedule", ["train", "--data", "data", "--out", "new-run", "--stages", "16,32,64", "--lr", "1e-3",
                                   "--lr-schedule", "0:1e-4"], "", "give --lr or --lr-schedule, not both"),
    # special files: a named pipe read would block, one written would be replaced
    ("--validation-prompts a named pipe", ["train", "--data", "data", "--out", "new-run", "--stages", "16,32,64",
                                           "--validation-prompts", "pipe.txt"], "mkfifo pipe.txt",
     "--validation-prompts pipe.txt is a special file (a named pipe)"),
    ("--config a character device", ["train", "--data", "data", "--out", "new-run", "--stages", "16,32,64", "--config",
                                     "/dev/zero"], "", "--config /dev/zero is a special file (a character device)"),
    ("--json a named pipe", ["bench", "latency", "--preset", "tiny", "--json", "pipe.json"], "mkfifo pipe.json",
     "--json pipe.json is a special file (a named pipe)"),
    ("--plot a named pipe", ["eval", "nami1k", "build", "--open", "open.txt", "--out", "s.jsonl", "--counts", "1,0,0",
                             "--plot", "pipe.png"], "mkfifo pipe.png", "--plot pipe.png is a special file"),
    ("--validation-prompts with a NUL byte", ["train", "--data", "data", "--out", "new-run", "--stages", "16,32,64",
                                              "--validation-prompts", "nul.txt"], "printf 'a red\\0circle\\n' > nul.txt",
     "is not UTF-8 text (it holds NUL bytes, line 1)"),
    ("a checkpoint's model written into its run", ["convert", "checkpoint", "{checkpoint}", "--out", "run/models/m"], "",
     "--out run/models/m lies inside the run"),
    ("plot --out the metrics file", ["plot", "run", "--out", "run/metrics.jsonl"], "", "--out"),
]
READ_ONLY = [  # the same refusal for every command that writes: checked before any work
    ["sample", "a cat", "--model", "{model}", "--out", "ro"],
    ["train", "--data", "data", "--out", "ro/run", "--stages", "16,32,64"],
    ["prepare-data", "shapes", "--out", "ro/d", "--stages", "16"],
    ["eval", "nami1k", "build", "--open", "open.txt", "--out", "ro/set.jsonl", "--counts", "1,0,0"],
    ["bench", "latency", "--preset", "tiny", "--json", "ro/x.json"],
    ["convert", "lora", "adapter", "--model", "{model}", "--out", "ro/m", "--merge"],
    ["eval", "nami1k", "score", "annotations.json", "--json", "ro/s.json"],
    ["plot", "run", "--out", "ro/curves.png"],
]


@pytest.fixture
def probe_space(tmp_path, tiny_model_dir, no_work, monkeypatch) -> Workspace:
    space = build_workspace(tmp_path / "probes", tiny_model_dir)
    monkeypatch.chdir(space.root)
    return space


def test_what_a_new_user_tries_is_refused_in_one_line_or_accepted(probe_space, capsys):
    import subprocess

    problems = []
    for what, args, setup, words in PROBES:
        if setup:
            subprocess.run(setup.format(**probe_space.names), shell=True, cwd=probe_space.root, check=True)
        argv = [a.format(**probe_space.names) for a in args]
        before = state(probe_space.root)
        outcome, code, err = attempt(argv, capsys)
        lines = err.splitlines()
        if words is None:
            if outcome != "reached":
                problems.append(f"{what}: not accepted ({code}): {err.strip()}")
        elif outcome != "exited" or code != 2 or len(lines) != 1 or not lines[0].startswith("error: ") \
                or words not in lines[0] or state(probe_space.root) != before:
            problems.append(f"{what}: {outcome} {code} {err.strip()!r}, expected one error line with {words!r}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def read_only(probe_space):
    """A read-only folder `ro`: a read-only tmpfs where the test runs as root (root writes through
    permissions), a folder without write permission otherwise."""
    import os
    import subprocess

    folder = probe_space.root / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]).returncode != 0:
            pytest.skip("cannot mount a read-only tmpfs here")
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_a_place_that_cannot_be_written_is_refused_before_any_work(probe_space, read_only, capsys):
    for args in READ_ONLY:
        argv = [a.format(**probe_space.names) for a in args]
        outcome, code, err = attempt(argv, capsys)
        assert outcome == "exited" and code == 2 and err.count("\n") == 1, (argv, outcome, err)
        assert "cannot write in ro (" in err and err.startswith("error: --"), (argv, err)

"""The command line declared once: shared options, core defaults and choices, help panels,
examples that parse, old spellings as hidden aliases, output that survives a pipe."""

from __future__ import annotations

import io
import re
import shlex
from pathlib import Path
from typing import Annotated, Optional

import pytest
import typer
from rich.console import Console
from rich.table import Table

from nami_cli import options
from nami_cli.build import commands, finish, flag_of, options_of, owners_of, with_optional_values
from nami_cli.consistency import core_choices, problems
from nami_cli.main import command
from tests.helpers import run_cli

# the 17 options issue #34 found declared 3 to 12 times, and how many variants options.py now declares of each
SHARED = {"--out": 1, "--batch-size": 1, "--seed": 1, "--json": 2, "--device": 1, "--steps": 2, "--dtype": 2,
          "--model": 1, "--cfg": 1, "--stages": 1, "--preset": 1, "--compile": 1, "--mode": 1,
          "--grad-checkpointing": 1, "--lora": 2, "--attention": 2, "--text-tokens": 1}


def test_building_the_command_line_imports_no_numeric_library():
    """The requests whose defaults the help shows are light: `nami --help` stays instant."""
    import subprocess
    import sys

    code = ("import sys\nfrom nami_cli.main import command\ncommand()\n"
            "print(sorted(m for m in ('torch', 'numpy', 'PIL', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr + out.stdout


def test_the_app_declares_every_shared_option_once():
    assert problems(command(), options.DECLARED) == []
    declared = {}
    for d in options.DECLARED:
        declared[d.flag] = declared.get(d.flag, 0) + 1
    assert {flag: declared.get(flag) for flag in SHARED} == SHARED
    uses = {flag: 0 for flag in SHARED}
    for _, cmd in commands(command()):
        for param in options_of(cmd):
            if flag_of(param) in uses:
                uses[flag_of(param)] += 1
    assert all(n >= 3 for n in uses.values()), uses  # still used by 3 or more commands each


TOY_SEED = options.own(int, "--seed", help="Seed.", panel="P")  # a toy declaration, not the app's
TOY_DECLARED = options.Declared(int, TOY_SEED.__metadata__[0])


def toy(*commands_of_app):
    """A finished click tree of a toy Typer app with the given command functions."""
    app = typer.Typer(add_completion=False)
    app.callback()(lambda: None)  # a group even with one command
    for function in commands_of_app:
        app.command(function.__name__)(function)
    return finish(typer.main.get_command(app))


def test_the_checker_finds_what_it_guards_against():
    def one(seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of one.", rich_help_panel="P")] = None):
        """One."""

    def two(seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of two.", rich_help_panel="P")] = None,
            mode: Annotated[Optional[str], typer.Option("--mode", metavar="nami|fast", rich_help_panel="P",
                                                        help="The mode.")] = None,
            steps: Annotated[int, typer.Option("--steps", help="Steps.")] = 10):
        """Two."""

    declared = [d for d in options.DECLARED if d.flag != "--seed"]
    found = problems(toy(one, two), declared)
    assert any(p.startswith("--seed is declared with different help, type or default in 2 commands") for p in found)
    assert any("--mode of `nami two` lists ('nami', 'fast') but the core accepts" in p for p in found)
    assert any("--steps of `nami two` has the default 10 in the CLI" in p for p in found)
    assert any("--steps of `nami two` is in no help panel" in p for p in found)

    def same(seed: Annotated[Optional[int], typer.Option("--seed", help="Seed.", rich_help_panel="P")] = None):
        """Same."""

    def copy(seed: Annotated[Optional[int], typer.Option("--seed", help="Seed.", rich_help_panel="P")] = None):
        """Copy."""

    found = problems(toy(same, copy), declared)
    assert found == ["--seed is declared the same way in 2 commands (nami same, nami copy); "
                     "declare it once in nami_cli/options.py"]

    def user(seed: TOY_SEED = None):
        """Declared once."""

    def other(seed: TOY_SEED = None):
        """Declared once."""

    assert problems(toy(user, other), [*declared, TOY_DECLARED]) == []

    def restating(dtype: Annotated[Optional[str], typer.Option(
            "--dtype", metavar="auto|fp32|bf16|fp16", rich_help_panel="P", help="auto, fp32, bf16 or fp16.")] = None):
        """Restating."""

    found = problems(toy(restating), [])
    assert found == ["the help of --dtype of `nami restating` restates its choices; the metavar lists them"]


def test_choice_metavars_are_the_core_constants():
    choices = core_choices()
    seen = set()
    for path, cmd in commands(command()):
        for param in options_of(cmd):
            flag = flag_of(param)
            if flag in choices and not param.hidden:
                listed = tuple(param.metavar.removesuffix("[,...]").split("|"))
                assert listed in [tuple(c) for c in choices[flag]], (path, flag, listed)
                seen.add(flag)
    assert seen == set(choices)  # every constant is listed somewhere


def render_help(args: list[str], capsys, monkeypatch, width: int = 100) -> str:
    """`nami ARGS --help` as printed to a pipe `width` columns wide."""
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, _ = run_cli([*args, "--help"], capsys)
    assert code == 0
    return out


@pytest.mark.parametrize("path", [p for p, _ in commands(command())], ids=" ".join)
def test_help_has_panels_flags_and_every_core_default(path, capsys, monkeypatch):
    cmd = dict(commands(command()))[path]
    text = render_help(list(path), capsys, monkeypatch)
    assert "<bool>" not in text  # flags render as flags
    panels = {param.rich_help_panel for param in options_of(cmd) if not param.hidden}
    assert panels and None not in panels
    for panel in panels:
        assert f"─ {panel} ─" in text
    from nami_cli.build import core_defaults

    shown = {}
    for owner in owners_of(cmd):
        shown = {**core_defaults(owner), **shown}
    for param in options_of(cmd):
        if param.hidden or param.is_flag or param.required:
            continue
        if flag_of(param) in shown:
            assert param.show_default == shown[flag_of(param)], (path, flag_of(param))
    for hidden in (p for p in options_of(cmd) if p.hidden):
        assert not re.search(rf"{flag_of(hidden)}(?![\w-])", text), flag_of(hidden)


def examples(cmd) -> list[list[str]]:
    """The argument lists of the examples in a command's help, from `nami` on."""
    doc = cmd.callback.__doc__ or ""
    section = doc.split("Examples:", 1)[1] if "Examples:" in doc else ""
    found = []
    for line in (line.strip() for line in section.splitlines()):
        if not line:
            continue
        tokens = shlex.split(line)
        start = next(i for i, t in enumerate(tokens) if t == "nami" or t.endswith("nami)"))
        found.append(tokens[start + 1:])
    return found


def parse(args: list[str]):
    """Parse `nami ARGS` as the command line does (types, numeric guard, required options) without running it."""
    cmd, rest = command(), list(args)
    while getattr(cmd, "commands", None) is not None:
        cmd, rest = cmd.commands[rest[0]], rest[1:]
    return cmd, cmd.make_context("nami", with_optional_values(rest))


@pytest.mark.parametrize("path", [p for p, _ in commands(command())], ids=" ".join)
def test_help_examples_parse_as_written(path):
    cmd = dict(commands(command()))[path]
    found = examples(cmd)
    assert found, f"nami {' '.join(path)} --help shows no example"
    for args in found:
        parsed, ctx = parse(args)
        for param in options_of(parsed):
            assert not (param.hidden and ctx.params.get(param.name) is not None), (args, "an old spelling")


def test_example_lora_path_is_what_nami_train_writes():
    lora_examples = [args for args in examples(dict(commands(command()))[("sample",)]) if "--lora" in args]
    assert lora_examples
    for args in lora_examples:
        adapter = args[args.index("--lora") + 1].rsplit(":", 1)[0]
        assert Path(adapter).name == "final"  # `nami train --lora` writes the adapter to RUN/final


def test_convert_help_names_all_four_conversions(capsys, monkeypatch):
    text = render_help(["convert"], capsys, monkeypatch, width=200)
    for name in ("nami-t2i", "flux", "checkpoint", "lora"):
        assert re.search(rf"│ {name} ", text), name  # in the commands panel
    description = command().commands["convert"].help
    assert all(f"({name})" in description for name in ("nami-t2i", "flux", "checkpoint", "lora"))


@pytest.mark.parametrize("args,note,error", [
    (["train", "--data", "d", "--out", "o", "--stages", "16,32,64", "--ratio-schedule", "0:1:1,100:1:1:1"],
     "note: --ratio-schedule is now --stage-mix", "error: --stage-mix: phase '0:1:1' has 2 values, expected 3"),
    (["train", "--data", "d", "--out", "o", "--stages", "16,32,64", "--init", "m", "--preset", "tiny"],
     "note: --init is now --model", "error: give one of --preset, --config and --model"),
    (["train", "--data", "d", "--out", "o", "--stages", "16,32,64", "--precision", "fp8"],
     "note: --precision is now --dtype", "error: --dtype must be one of auto, fp32, bf16, fp16, got 'fp8'"),
    (["bench", "train", "--ratio", ""], "note: --ratio is now --stage-mix",
     "error: --stage-mix is empty; give a value, or leave it out for the default"),
    (["bench", "latency", "--batch", "0"], "note: --batch is now --batch-size",
     "error: --batch-size must be at least 1, got 0"),
])
def test_old_spellings_still_work_with_a_note(args, note, error, capsys):
    code, _, err = run_cli(args, capsys)
    assert code == 2 and err.splitlines() == [note, error]


def test_old_and_new_spelling_together_must_agree(capsys):
    code, _, err = run_cli(["train", "--data", "d", "--out", "o", "--stages", "16,32,64", "--stage-mix", "1:1:1",
                            "--ratio-schedule", "2:1:1"], capsys)
    assert code == 2 and err == "error: --ratio-schedule is the old name of --stage-mix; give --stage-mix once\n"


def test_an_old_spelling_gives_the_same_result(capsys):
    new = run_cli(["info", "--preset", "tiny", "--train-memory", "--dtype", "bf16", "--json"], capsys)
    old = run_cli(["info", "--preset", "tiny", "--train-memory", "--precision", "bf16", "--json"], capsys)
    assert new[0] == old[0] == 0 and new[1] == old[1] and old[2] == "note: --precision is now --dtype\n"


def test_info_describes_the_model_sample_draws_with(capsys):
    import json

    from nami_core.model_paths import DEFAULT_MODEL_NAME

    code, out, err = run_cli(["info", "--json"], capsys)
    assert code == 0, err
    default = json.loads(out)
    assert default["model"] == DEFAULT_MODEL_NAME
    code, out, _ = run_cli(["info", "--model", "default", "--json"], capsys)
    assert code == 0 and json.loads(out) == default
    code, out, _ = run_cli(["info", "--preset", "nami-2b", "--json"], capsys)
    assert code == 0 and json.loads(out)["model"] == "nami-2b"


# -- output that survives a pipe ----------------------------------------------------------------------


def narrow(width: int = 40) -> Console:
    """A console that is not a terminal and narrower than any table nami prints."""
    return Console(file=io.StringIO(), width=width)


def test_tables_off_a_terminal_never_cut_a_number():
    from nami_cli.output import print_table

    numbers = [f"{12345678.9 * k:,.1f}" for k in range(1, 6)]
    table = Table(title="a title that is longer than the narrow console is wide")
    for k in range(5):
        table.add_column(f"column {k}", justify="right", no_wrap=True)
    table.add_row(*numbers)
    plain = narrow()
    plain.print(table)
    assert "…" in plain.file.getvalue()  # rich's default: cut to the width
    console = narrow()
    print_table(table, console)
    text = console.file.getvalue()
    assert "…" not in text and all(n in text for n in numbers)
    assert max(map(len, text.splitlines())) > 40  # as wide as the table needs


def test_log_lines_never_wrap():
    from nami_cli.output import log

    console = narrow()
    line = "step      10  loss 0.1234  stages [0.1000 0.2000 0.3000]  lr 1.00e-04  123.4 img/s  56789 tok/s"
    log(line, console)
    assert console.file.getvalue() == line + "\n"


def test_info_tables_survive_a_narrow_pipe(monkeypatch, capsys):
    import json

    from nami_cli import output

    code, out, _ = run_cli(["info", "--preset", "nami-2b", "--json"], capsys)
    report = json.loads(out)
    monkeypatch.setattr(output, "stdout", narrow(30))
    code, _, err = run_cli(["info", "--preset", "nami-2b"], capsys)
    assert code == 0, err
    text = output.stdout.file.getvalue()
    assert "…" not in text and f"{report['params'] / 1e9:.3f}B parameters" in text
    for mode, flops in report["flops"].items():
        assert re.search(rf"│ {mode} +│ +{flops / 1e12:.2f} │", text), mode
    monkeypatch.setattr(output, "stdout", narrow(30))
    code, _, err = run_cli(["info", "--preset", "nami-2b", "--train-memory", "--batch-size", "4"], capsys)
    assert code == 0, err
    text = output.stdout.file.getvalue()
    assert "…" not in text
    summary = [line for line in text.splitlines() if line.startswith("nami-2b (")]
    assert len(summary) == 1 and summary[0].endswith(")")  # one line, not wrapped at 30 columns

"""A model's vocabulary: the words of its training captions, and the warning for words outside it."""

import json

import pytest

from nami_core.data.shapes import CLASSES, COLORS, shapes_vocabulary
from nami_core.errors import NamiError
from nami_core.vocabulary import VOCABULARY_FILE, Vocabulary, read_vocabulary, words_of

BUNDLED = "nami_core/assets/nami-shapes"


def test_words_are_lowercased_runs_of_letters_in_any_script():
    assert words_of("A photo of 4 Apples, left-of the 猫!") == ["a", "photo", "of", "4", "apples", "left", "of", "the", "猫"]


def test_unknown_words_once_each_in_prompt_order():
    vocab = Vocabulary.of_captions(["a red circle", "two blue squares"], "shapes")
    assert vocab.unknown("a photo of four apples and four red apples") == ["photo", "of", "four", "apples", "and"]
    assert vocab.unknown("Two RED squares") == []
    assert vocab.warning("a red circle") is None
    assert vocab.warning("a green circle").startswith('the model was not trained on "green"; it knows shapes.')


def test_the_shapes_vocabulary_covers_its_world_and_nothing_else():
    vocab = shapes_vocabulary()
    assert set(CLASSES) | set(COLORS) | {"left", "right", "above", "below", "two", "three", "four"} <= vocab.words
    assert {c + "s" for c in CLASSES} <= vocab.words
    assert vocab.unknown("a photo of four apples") == ["apples"]
    assert vocab.unknown("a red circle left of a blue square") == []
    assert len(vocab.words) < 60


def test_the_bundled_model_carries_the_shapes_vocabulary():
    saved = read_vocabulary(BUNDLED)
    assert saved == shapes_vocabulary()


def test_save_and_read_round_trip_and_a_broken_file_is_one_error(tmp_path):
    vocab = Vocabulary.of_captions(["a red circle"], "one red circle")
    vocab.save(tmp_path)
    assert read_vocabulary(tmp_path) == vocab
    assert json.loads((tmp_path / VOCABULARY_FILE).read_text())["words"] == ["a", "circle", "red"]
    assert read_vocabulary(tmp_path / "elsewhere") is None
    (tmp_path / VOCABULARY_FILE).write_text('{"words": "abc"}')
    with pytest.raises(NamiError, match="is not a vocabulary file"):
        read_vocabulary(tmp_path)


def test_nami_sample_warns_about_words_the_bundled_model_never_saw(tmp_path, capsys):
    from tests.helpers import run_cli

    code, out, err = run_cli(["sample", "a photo of four apples", "--steps", "1,1,1", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {shapes_vocabulary().warning('a photo of four apples')}"]
    assert '"apples"' in warnings[0] and "4 shapes (circle, square, triangle, diamond)" in warnings[0]
    assert len(list(tmp_path.glob("*.png"))) == 1  # it still draws
    code, out, err = run_cli(["sample", "a photo of four red circles", "--steps", "1,1,1", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert "warning" not in err and len(list(tmp_path.glob("*.png"))) == 2

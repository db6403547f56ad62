"""Tiny random evaluation models built offline (CLIP, Mask2Former, ViLT, BLIP) and the loaders' errors.

The builders are imported by the other tests/test_eval_*.py files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nami_core.errors import NamiError
from tests.helpers import WORDS, write_bert_vocab


def build_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random 1-layer CLIP (projection 8) with a byte-level BPE tokenizer and a 32 px processor."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    words = [w + "</w>" for w in WORDS + ["colored", "object", "photo"]]
    tokens = chars + [c + "</w>" for c in chars] + words + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    merges = []
    for word in words:  # merge letters left to right so whole words become single tokens
        stem = word[:-4]
        pieces = list(stem[:-1]) + [stem[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            vocab.setdefault(pieces[0] + pieces[1], len(vocab))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_mask2former(folder: Path, num_labels: int = 80, seed: int = 0) -> Path:
    """A random Mask2Former (tiny Swin backbone, 10 queries) predicting `num_labels` classes."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    swin = SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    config = Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, encoder_layers=1, decoder_layers=2, num_attention_heads=2,
                               dim_feedforward=64, num_queries=10, num_labels=num_labels)
    torch.manual_seed(seed)
    Mask2FormerForUniversalSegmentation(config).save_pretrained(folder)
    return folder


def _bert_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_bert_vocab(folder / "vocab.txt")
    return BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


def build_tiny_vilt(folder: Path, answer: str = "yes") -> Path:
    """A random ViLT answer classifier over {no, yes} whose classifier bias makes it always say `answer`."""
    from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessorPil, ViltProcessor

    tokenizer = _bert_tokenizer(folder)
    config = ViltConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, image_size=32, patch_size=8, max_position_embeddings=64,
                        id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})
    torch.manual_seed(0)
    model = ViltForQuestionAnswering(config)
    with torch.no_grad():
        last = model.classifier[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, 5.0] if answer == "yes" else [5.0, 0.0]))
    model.save_pretrained(folder)
    ViltProcessor(image_processor=ViltImageProcessorPil(size={"shortest_edge": 32}, size_divisor=8),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_blip(folder: Path) -> Path:
    """A random BLIP VQA generator (answers are random tokens)."""
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessorPil, BlipProcessor

    tokenizer = _bert_tokenizer(folder)
    config = BlipConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, encoder_hidden_size=16, max_position_embeddings=64,
                         bos_token_id=2, sep_token_id=3, pad_token_id=0),
        vision_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    BlipForQuestionAnswering(config).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


# -- the builders load through the evaluators, and bad folders give one line ------------------------------


def test_tiny_clip_tokenizes_whole_words_and_encodes(tmp_path):
    from PIL import Image

    from nami_core.eval.clip_model import ClipEncoder

    encoder = ClipEncoder(build_tiny_clip(tmp_path / "clip"))
    assert encoder.count_tokens("a red circle") == 5  # start, a, red, circle, end
    images = encoder.image_features([Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (20, 20))])
    texts = encoder.text_features(["a red circle", "a blue square"])
    assert images.shape == (2, 8) and texts.shape == (2, 8)
    assert torch.allclose(images.norm(dim=-1), torch.ones(2)) and torch.allclose(texts.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(texts[0], texts[1])


def test_long_prompts_are_truncated_with_a_warning(tmp_path):
    from nami_core.eval.clip_model import ClipEncoder

    encoder = ClipEncoder(build_tiny_clip(tmp_path / "clip"))
    long = "red " * 100
    with pytest.warns(UserWarning, match="1 prompt\\(s\\) exceed CLIP's 77 tokens and were truncated"):
        features = encoder.text_features([long, "red"])
    assert features.shape == (2, 8)


@pytest.mark.parametrize("breakage, problem", [
    (lambda f: None, "does not exist"),
    (lambda f: f.write_text("x"), "is a file"),
    (lambda f: f.mkdir(), "has no config.json"),
    (lambda f: (f.mkdir(), (f / "config.json").write_text("{}")), "has no weights"),
])
def test_missing_weights_are_one_line(tmp_path, breakage, problem):
    from nami_core.eval.clip_model import ClipEncoder

    folder = tmp_path / "clip"
    breakage(folder)
    with pytest.raises(NamiError) as info:
        ClipEncoder(folder)
    message = str(info.value)
    assert message.startswith("--clip (a CLIP model): ") and problem in message and "\n" not in message
    assert "save_pretrained(PATH)" in message


def test_corrupt_weights_are_one_line(tmp_path):
    from nami_core.eval.vqa import TransformersVQA

    folder = build_tiny_vilt(tmp_path / "vilt")
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(NamiError) as info:
        TransformersVQA(folder)
    assert str(info.value).startswith(f"--vqa (a VQA model): cannot load {folder}") and "\n" not in str(info.value)


def test_vqa_classifier_and_generator(tmp_path):
    from PIL import Image

    from nami_core.eval.dpg import lenient_yes
    from nami_core.eval.vqa import TransformersVQA

    image = Image.new("RGB", (48, 48), (10, 200, 10))
    yes = TransformersVQA(build_tiny_vilt(tmp_path / "yes"))
    assert yes.answer(image, ["is there a circle?", "is it red?"]) == ["yes", "yes"]
    assert not yes.generative and yes.comparable is False and yes.name == "vilt:yes"
    no = TransformersVQA(build_tiny_vilt(tmp_path / "no", answer="no"))
    assert no.answer(image, ["is there a circle?"]) == ["no"]
    blip = TransformersVQA(build_tiny_blip(tmp_path / "blip"))
    answers = blip.answer(image, ["is there a circle?", "is it red?"])
    assert blip.generative and len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert [lenient_yes(a) for a in (" Yes", "yes\n", "no", "yes.", "")] == [True, True, False, False, False]
    with pytest.raises(NamiError, match="must contain \\{question\\}"):
        TransformersVQA(tmp_path / "yes", prompt="Question:")

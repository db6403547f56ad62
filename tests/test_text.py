"""Text encoder specs and the encoders built from local directories."""

import pytest
import torch

from nami_core.errors import NamiError
from nami_core.text.embeddings import TextEmbeddings
from nami_core.text.encoder import NamiTextEncoder, SpecPart, parse_spec
from tests.helpers import build_tiny_bert, build_tiny_t5


def test_parse_spec():
    assert parse_spec("minilm") == (SpecPart("minilm", None), None)
    assert parse_spec("mt5:/w/mt5,mclip:/w/mclip") == (SpecPart("mt5", "/w/mt5"), SpecPart("mclip", "/w/mclip"))
    assert parse_spec("t5:a, clip:b") == (SpecPart("t5", "a"), SpecPart("clip", "b"))
    assert parse_spec("/models/e5") == (SpecPart("auto", "/models/e5"), None)


@pytest.mark.parametrize(
    "spec,message",
    [
        ("", "empty"),
        ("clip:/x", "needs a sequence encoder"),
        ("t5:/a,mt5:/b", "two sequence encoders"),
        ("minilm,clip:/a,bert:/b", "two pooled encoders"),
        ("llama:/x", "unknown text encoder kind 'llama'"),
        ("t5:", "needs a path"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(NamiError, match=message):
        parse_spec(spec)


def test_minilm_offline_encoder():
    enc = NamiTextEncoder.load("minilm", 10)
    assert (enc.config.sequence_dim, enc.config.pooled_dim) == (384, 384)
    emb = enc.encode(["a red circle", "a photo of two blue squares above a green diamond"])
    assert emb.sequence.shape == (2, 10, 384) and emb.pooled.shape == (2, 384) and emb.mask.dtype == torch.bool
    assert emb.mask[0].sum().item() == 5  # [CLS] a red circle [SEP]
    assert emb.mask[1].all()  # truncated to 10 tokens
    weights = emb.mask[0].float()[:, None]
    torch.testing.assert_close(emb.pooled[0], (emb.sequence[0] * weights).sum(0) / weights.sum())


def test_t5_sequence_with_bert_first_token_pooled(tmp_path):
    t5 = build_tiny_t5(tmp_path / "t5", d_model=16)
    bert = build_tiny_bert(tmp_path / "bert", hidden=24)
    enc = NamiTextEncoder.load(f"t5:{t5},mclip:{bert}", 8)
    assert (enc.config.sequence_dim, enc.config.pooled_dim) == (16, 24)
    emb = enc.encode(["a red circle"])
    assert emb.sequence.shape == (1, 8, 16) and emb.pooled.shape == (1, 24)
    assert emb.mask[0].tolist() == [True] * 4 + [False] * 4  # 3 words + </s>
    from transformers import BertModel, BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(bert)
    ref = BertModel.from_pretrained(bert).eval()(**tok(["a red circle"], return_tensors="pt")).last_hidden_state[:, 0]
    torch.testing.assert_close(emb.pooled, ref, atol=1e-5, rtol=0)


def test_saved_encoder_reloads_relative_paths(tmp_path):
    build_tiny_bert(tmp_path / "model" / "bert")
    enc = NamiTextEncoder.load("bert", 6, base_dir=tmp_path / "model")
    enc.save_pretrained(tmp_path / "model" / "text_encoder")
    again = NamiTextEncoder.from_pretrained(tmp_path / "model", subfolder="text_encoder")
    a, b = enc.encode(["a cat"]), again.encode(["a cat"])
    torch.testing.assert_close(a.sequence, b.sequence)


def test_missing_encoder_directory_is_one_clear_error(tmp_path):
    with pytest.raises(NamiError, match="no model directory at"):
        NamiTextEncoder.load(f"t5:{tmp_path / 'nope'}", 8)


def test_embeddings_helpers():
    a = TextEmbeddings(torch.ones(2, 3, 4), torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 5))
    b = TextEmbeddings(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool), torch.zeros(2, 5))
    mixed = a.where(torch.tensor([True, False]), b)
    assert mixed.sequence[:, 0, 0].tolist() == [1.0, 0.0] and mixed.mask[:, 0].tolist() == [True, False]
    assert len(TextEmbeddings.cat([a, b])) == 4

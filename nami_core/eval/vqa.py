"""Pluggable visual question answering for DPG-Bench: a transformers VQA model from a local folder.

DPG-Bench's reference VQA model is mPLUG-large (ModelScope `mplug_visual-question-answering_coco_large_en`),
which transformers does not implement; every model loaded here is therefore marked
`comparable = False` ("not comparable to mPLUG-large"), and DPG scores computed with it must not be
set beside published DPG-Bench numbers.

Supported: any checkpoint that `AutoModelForVisualQuestionAnswering` loads, with the processor saved
beside it:
  * answer classifiers (ViLT): the answer is the label of the highest logit;
  * generative models (BLIP, BLIP-2): `generate` with `prompt` (default "{question}"; BLIP-2 OPT
    checkpoints answer best with "Question: {question} Answer:"), decoded without special tokens.
Whether an answer counts as "yes" is `dpg.answer_rule`'s: exactly "yes" (ELLA's rule, the default)
or, with `--answer-match lenient`, stripped and lower-cased.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import torch

from ..errors import NamiError
from .weights import VQA_HINT, load_pretrained, vqa_folder



class VQAModel(Protocol):
    """Answers questions about an image; `comparable` says whether scores match DPG-Bench's mPLUG-large."""

    name: str
    comparable: bool

    def answer(self, image, questions: Sequence[str]) -> list[str]:  # image: PIL RGB
        ...


class TransformersVQA:
    """A transformers VQA model (classifier or generator) with its own processor."""

    comparable = False

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", prompt: str = "{question}",
                 max_new_tokens: int = 10) -> None:
        from transformers import AutoModelForVisualQuestionAnswering, AutoProcessor

        what = "--vqa (a VQA model)"
        folder = vqa_folder(path)
        if "{question}" not in prompt:
            raise NamiError(f"--vqa-prompt must contain {{question}}, got {prompt!r}")
        self.device = torch.device(device)
        self.model = load_pretrained(AutoModelForVisualQuestionAnswering, folder, what, VQA_HINT).to(self.device)
        self.processor = load_pretrained(AutoProcessor, folder, what, VQA_HINT)
        self.generative = bool(self.model.can_generate())
        if not self.generative and not getattr(self.model.config, "id2label", None):
            raise NamiError(f"{what}: {folder} neither generates text nor has answer labels (id2label)")
        self.prompt = prompt
        self.max_new_tokens = max_new_tokens
        self.name = f"{self.model.config.model_type}:{folder.name}"

    @torch.no_grad()
    def answer(self, image, questions: Sequence[str]) -> list[str]:
        """One answer per question about the same image."""
        if not questions:
            return []
        texts = [self.prompt.format(question=q) for q in questions]
        inputs = self.processor(images=[image] * len(texts), text=texts, return_tensors="pt", padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if not self.generative:
            labels = self.model(**inputs).logits.argmax(dim=-1).tolist()
            return [str(self.model.config.id2label[i]) for i in labels]
        tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens)
        decoded = self.processor.batch_decode(tokens, skip_special_tokens=True)
        # decoder-only generators echo the prompt before the answer
        return [d[len(t):].strip() if d.startswith(t) else d.strip() for d, t in zip(decoded, texts)]

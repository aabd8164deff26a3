"""``hf-vlm``: a Hugging Face vision-language model (LLaVA-NeXT style) answering the Table 11 prompt.

Title-only by default; with ``with_images=true`` each candidate line is followed by the processor's
image token and the candidate's image (a candidate without an image, or whose image cannot be decoded,
gets a short note instead; an undecodable one is named in a warning once).
Greedy decoding, batched with left padding. Any checkpoint that ``AutoProcessor`` and
``AutoModelForImageTextToText`` load works (e.g. ``llava-hf/llava-v1.6-mistral-7b-hf``), and, title-only, a
text LLM that ``AutoModelForCausalLM`` loads (e.g. ``lmsys/vicuna-7b-v1.5``, the paper's Vicuna-v1.5 baseline).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from benchmark.prompts import (
    IMAGE_PLACEHOLDER,
    NO_IMAGE_TEXT,
    recommendation_prompt_segments,
    render_recommendation_prompt,
)
from benchmark.protocol import Candidate, Example
from reddit_amazon.cli_errors import one_line
from reddit_amazon.openai_endpoint import OPEN_THOUGHTS, split_thoughts

log = logging.getLogger(__name__)
DEFAULT_MODEL = "llava-hf/llava-v1.6-mistral-7b-hf"
#: How prompts are wrapped for a checkpoint without a chat template (Vicuna v1.5's user and assistant turns).
FALLBACK_CHAT_FORMAT = "'USER: … ASSISTANT:' (Vicuna v1.5's turns; no chat template)"


class HFVisionLanguageRecommender:
    def __init__(self, model: str = DEFAULT_MODEL, with_images: bool = False, batch_size: int = 4,
                 max_new_tokens: int = 16, device: str | None = None, dtype: str = "auto") -> None:
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor
        except ImportError as error:
            raise ImportError("hf-vlm needs torch and transformers: pip install 'reddit-amazon[lavic]'") from error

        self.model_name = model
        self.with_images = self.uses_images = with_images
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.name = f"{model.rstrip('/').split('/')[-1]} ({'title+image' if with_images else 'title'})"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        torch_dtype: Any = dtype if dtype == "auto" else getattr(torch, dtype)
        try:
            self.processor = AutoProcessor.from_pretrained(model)
        except OSError as error:
            raise _load_error(model, error) from error
        # A text-only LLM (the paper's Vicuna-v1.5 baseline) has no processor: AutoProcessor gives its tokenizer.
        self.text_only = not hasattr(self.processor, "tokenizer")
        if self.text_only and with_images:
            raise ValueError(f"hf-vlm: {model} is a text-only model (no image processor); with_images=true needs "
                             "a vision-language checkpoint")
        self.tokenizer = self.processor if self.text_only else self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        auto_model = AutoModelForCausalLM if self.text_only else AutoModelForImageTextToText
        try:
            loaded = auto_model.from_pretrained(model, dtype=torch_dtype)
            # transformers wraps PreTrainedModel.to in functools.wraps, whose typeshed type does not bind self.
            self.model = loaded.to(self.device).eval()  # type: ignore[arg-type]
        except OSError as error:
            raise _load_error(model, error) from error
        self.image_token = getattr(self.processor, "image_token", "<image>")
        self._undecodable: set[str] = set()
        self._cut_in_thoughts = False  # said once per run
        self._template = getattr(self.processor, "chat_template", None) or getattr(self.tokenizer, "chat_template", None)
        # results.json records which format the prompts were in: a fallback is not the checkpoint's own format
        self.settings = {"chat_format": "the checkpoint's chat template" if self._template else FALLBACK_CHAT_FORMAT}
        if not self._template:
            log.warning("hf-vlm: %s has no chat template: prompts are wrapped as %s", model, FALLBACK_CHAT_FORMAT)

    def _prompt(self, example: Example) -> tuple[str, list[Any]]:
        """Chat-formatted prompt text and the images its image tokens stand for, in order."""
        def clean(text: str) -> str:  # literal image tokens in user text would shift the image alignment
            return text.replace(self.image_token, " ").replace(IMAGE_PLACEHOLDER, " ")

        conversation = clean(example.context)
        candidates = [(c.item_id, clean(c.title)) for c in example.candidates]
        if not self.with_images:
            return self._chat(render_recommendation_prompt(conversation, candidates, False)), []
        segments = recommendation_prompt_segments(conversation, candidates)
        parts, images = [segments[0]], []
        for candidate, text in zip(example.candidates, segments[1:], strict=True):
            image = self._image(candidate)
            if image is None:
                parts.append(NO_IMAGE_TEXT)
            else:
                parts.append(self.image_token)
                images.append(image)
            parts.append(text)
        return self._chat("".join(parts)), images

    def _image(self, candidate: Candidate) -> Any:
        """The candidate's image, or None without one or when its bytes cannot be decoded (warned once per item)."""
        from PIL import Image

        try:
            return candidate.image
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # Pillow's "undecodable"
            if candidate.item_id not in self._undecodable:
                self._undecodable.add(candidate.item_id)
                log.warning("item %s: its image cannot be decoded (%s); shown as having no image", candidate.item_id,
                            str(error) or type(error).__name__)
            return None

    def _chat(self, text: str) -> str:
        if not self._template:
            return f"USER: {text}\nASSISTANT:"
        content: Any = text if self.text_only else [{"type": "text", "text": text}]
        messages = [{"role": "user", "content": content}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def recommend(self, examples: Sequence[Example]) -> list[str]:
        import torch

        prompts, images = [], []
        for example in examples:
            prompt, example_images = self._prompt(example)
            prompts.append(prompt)
            images.extend(example_images)
        if self.text_only:
            inputs = self.tokenizer(prompts, padding=True, return_tensors="pt").to(self.device)
        else:
            inputs = self.processor(text=prompts, images=images or None, padding=True,
                                    return_tensors="pt").to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                         pad_token_id=self.tokenizer.pad_token_id)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [self._answer(text, opened_thoughts=prompt.rstrip().endswith(OPEN_THOUGHTS))
                for text, prompt in zip(texts, prompts, strict=True)]

    def _answer(self, text: str, opened_thoughts: bool = False) -> str:
        """The generated text without a reasoning model's inline thoughts (Qwen3-VL Thinking, QVQ, GLM-4.1V
        Thinking), whose first ASIN would otherwise be scored as the answer; thoughts cut at ``max_new_tokens``
        leave no answer, said once. ``opened_thoughts``: the chat template ended the prompt with ``<think>`` (QwQ,
        Qwen3-VL Thinking), so the text starts inside the thoughts, and holds no tag at all where they were cut."""
        split = split_thoughts((OPEN_THOUGHTS if opened_thoughts else "") + text.strip())
        if split.unclosed and not split.answer.strip() and not self._cut_in_thoughts:
            self._cut_in_thoughts = True
            log.warning("%s: an answer was cut at max_new_tokens=%d while the model was thinking (scored as no "
                        "answer); raise max_new_tokens", self.name, self.max_new_tokens)
        return split.answer.strip()


def _load_error(model: str, error: OSError) -> OSError:
    """Not on the Hub, not in the local cache while offline, a broken download: one line naming the model."""
    return OSError(f"hf-vlm: cannot load model {model}: {one_line(error)}")

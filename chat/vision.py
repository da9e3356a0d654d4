"""Chats about pictures: a Llava model served through the text decoders, images costing prefill only.

A multimodal model folder holds transformers' `LlavaForConditionalGeneration` (a CLIP / SigLIP vision
tower, an MLP projector and a Llama-layout LLM, as `model.build_llava` makes and `assistant merge`
writes it) and its processor (`AutoProcessor`: the tower's image processor and the tokenizer with its
`<image>` token); `model.load_llava` loads both. The engine decodes with the LLM alone, through a
causal-LM view that shares the Llava's modules (`language_model_view`), so every text decoder (static
cache, CUDA graphs, batched chats) serves image chats unchanged. An image enters once, in the prefill:
its features replace the embeddings of its image tokens (`ImageEncoder.embed`), exactly as
``LlavaForConditionalGeneration.forward`` does; every later step is a text step.

Requests carry images as content parts of a message (the OpenAI / transformers chat-template shape):

    {"role": "user", "content": [{"type": "image", "image": "cat.jpg"}, {"type": "text", "text": "What is it?"}]}

`image` is a file path or a PIL image; Gradio's file parts (``{"type": "file", "file": {"path": ...}}``,
``{"path": ...}``) are read the same way. In the prompt each image becomes the image token, repeated
once per image feature (576 for CLIP-ViT-L/14-336), then a newline, before the message's text: the
``"<image>\\nWhat is it?"`` shape of LLaVA's training data.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from transformers import AutoModelForCausalLM, PreTrainedModel

from myassistant.chat.decode import Embed
from myassistant.chat.errors import EngineError
from myassistant.chat.history import Message, message_text
from myassistant.model import image_token_count, is_llava  # noqa: F401 - is_llava: for app.py, which imports chat only
from myassistant.model.pictures import TOO_LARGE, as_rgb, open_picture

log = logging.getLogger(__name__)

ImageSource = Any  # a path (str / Path) or a PIL image


def language_model_view(model: PreTrainedModel) -> PreTrainedModel:
    """The multimodal model's LLM as a causal LM of its own (``LlamaForCausalLM`` for LLaVA-InternLM2),
    sharing the multimodal model's modules: no copy of a weight, and the text decoders and `generate`
    run on it as on any text model."""
    with torch.device("meta"):
        view = AutoModelForCausalLM.from_config(model.config.text_config)
    view.model = model.model.language_model
    view.lm_head = model.lm_head
    view.generation_config = model.generation_config
    return view.eval()


def read_image(source: ImageSource) -> Image.Image:
    """An RGB PIL image from a path or a PIL image; EngineError naming the path when it is not one."""
    if isinstance(source, Image.Image):
        return as_rgb(source)
    if not str(source).strip():
        raise EngineError("no image path given: /image PATH")
    path = Path(source)
    if path.is_dir():
        raise EngineError(f"image {path}: a folder; give one picture's file")
    if not path.is_file():
        raise EngineError(f"image {path}: no such file")
    try:
        return open_picture(path)
    except Image.DecompressionBombError:
        raise EngineError(f"image {path}: {TOO_LARGE}") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise EngineError(f"image {path}: not a readable image ({err})") from err


def part_image(part: Any) -> ImageSource | None:
    """The image of one content part, or None for a text part."""
    if not isinstance(part, dict):
        return part if isinstance(part, Image.Image) else None
    if part.get("type") == "image":
        return part.get("image") or part.get("path") or part.get("url")
    if part.get("type") == "file":  # Gradio 6 history
        file = part.get("file")
        return file.get("path") if isinstance(file, dict) else file
    if "path" in part and "type" not in part:  # Gradio's {"path": ...}
        return part["path"]
    return None


def message_images(message: Message) -> list[ImageSource]:
    content = message.get("content")
    if not isinstance(content, (list, tuple)):
        content = [content]
    return [image for part in content if (image := part_image(part)) is not None]


def user_message(text: str, images: list[ImageSource] = ()) -> Message:
    """A user's message: plain text, or its pictures as image parts before the text."""
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*({"type": "image", "image": image} for image in images),
                                        {"type": "text", "text": text}]}


def find_images(messages: list[Message]) -> list[ImageSource]:
    """Every image of the conversation, oldest first."""
    return [image for message in messages for image in message_images(message)]


class ImageEncoder:
    """The vision half of a multimodal model: images -> prompt placeholders and input embeddings."""

    def __init__(self, model: PreTrainedModel, processor: Any) -> None:
        self.model = model
        self.image_processor = getattr(processor, "image_processor", None)
        if self.image_processor is None:
            raise EngineError(f"{model.name_or_path}: no image processor (processor_config.json); a multimodal "
                              "model folder needs its processor saved beside the weights")
        self.text_model = language_model_view(model)
        self.image_token_id = model.config.image_token_id
        self.image_token = processor.tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.tokens_per_image = image_token_count(model)

    def placeholders(self, messages: list[Message]) -> list[Message]:
        """Messages whose images are replaced by their image tokens (in the text, before it).

        An image token typed as text is removed: only real images make image tokens.
        """
        out = []
        for message in messages:
            text = message_text(message.get("content")).replace(self.image_token, "")
            count = len(message_images(message))
            out.append({**message, "content": (self.image_token * self.tokens_per_image + "\n") * count + text})
        return out

    def prepare(self, prompt_ids: list[int], images: list[ImageSource]) -> tuple[list[int], Embed | None]:
        """(prompt ids, embed) for a prompt built from `placeholders`: the prompt's images are the last
        ones of the conversation (history is trimmed from the oldest), read and preprocessed here."""
        ids = torch.tensor(prompt_ids)
        is_image = ids == self.image_token_id
        partial = int(is_image.sum()) % self.tokens_per_image
        if partial:  # a cut through the first image's tokens: that image is gone
            first = int(is_image.nonzero()[0])
            ids = torch.cat([ids[:first], ids[first + partial:]])
            prompt_ids = ids.tolist()
        count = int((ids == self.image_token_id).sum()) // self.tokens_per_image
        if count == 0:
            return prompt_ids, None
        pictures = [read_image(source) for source in images[len(images) - count:]]
        pixel_values = self.image_processor(images=pictures, return_tensors="pt")["pixel_values"]
        return prompt_ids, lambda prompt: self.embed(prompt, pixel_values)

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected image features [images * tokens_per_image, hidden] for preprocessed images."""
        tower = self.model.model.vision_tower
        config = self.model.config
        out = self.model.model.get_image_features(
            pixel_values=pixel_values.to(tower.device, tower.dtype), vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy)
        features = getattr(out, "pooler_output", out)  # transformers >= 5.2x wraps it in a model output
        if isinstance(features, (list, tuple)):
            features = torch.cat(list(features))
        return features.reshape(-1, features.shape[-1])

    def embed(self, ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        """Input embeddings [1, n, hidden] of prompt `ids` [1, n]: the table's, with the image
        tokens' rows replaced by the images' features (what the Llava's own forward computes)."""
        x = self.text_model.get_input_embeddings()(ids)
        mask = ids[0] == self.image_token_id
        features = self.features(pixel_values)
        if features.shape[0] != int(mask.sum()):
            raise EngineError(f"{int(mask.sum())} image tokens in the prompt but {features.shape[0]} image features: "
                              "the processor and the model's vision config disagree")
        x[0, mask] = features.to(x.dtype)
        return x

    def warm_up(self) -> None:
        """One blank image through the tower (first-call costs: cuBLAS handles, allocator)."""
        blank = Image.new("RGB", (32, 32))
        with torch.inference_mode():
            self.features(self.image_processor(images=[blank], return_tensors="pt")["pixel_values"])


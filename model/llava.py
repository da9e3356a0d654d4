"""LLaVA from parts: a vision encoder folder + a chat LLM (through ``load_model``) + an MLP projector.

The result is transformers' own ``LlavaForConditionalGeneration`` (LLaVA-1.5: CLIP features of the
second-to-last layer, CLS dropped, a 2-layer GELU projector into the LLM's hidden size), so generate,
peft, sdpa and every engine that knows Llava work, and a saved folder loads with plain
``LlavaForConditionalGeneration`` / ``AutoModelForImageTextToText`` + ``AutoProcessor``, no remote code.

The tokenizer gains one special token, ``<image>``, which the processor repeats once per image feature
(576 for CLIP-ViT-L/14-336); the LLM's vocabulary grows to hold it (rounded up to a multiple of 64). The
new rows are the mean of the old ones, so a rebuild from the same parts is bit-identical (merge rebuilds
what training built) and the new tokens are never a likely prediction. Only InternLM2's template is
extended to picture messages (``{"type": "image"}`` parts become ``<image>\\n``); other LLMs keep theirs
and take ``<image>`` inside the text.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (AutoImageProcessor, CLIPVisionModel, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaProcessor, PreTrainedModel, SiglipVisionModel)
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from .checkpoint import CheckpointError, _resolve_dtype, load_model, read_config, written_whole
from .templates import INTERNLM2_CHAT
from .tokenizer import load_tokenizer, stop_token_ids

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
PROJECTOR_WEIGHTS = "projector.safetensors"  # the projector alone: what stage 1 trains and stage 2 starts from
VOCAB_MULTIPLE = 64
# model_type in a vision encoder's config.json -> (class, feature selection, tokens before the patches)
ENCODERS = {"clip": (CLIPVisionModel, "default", 1), "clip_vision_model": (CLIPVisionModel, "default", 1),
            "siglip": (SiglipVisionModel, "full", 0), "siglip_vision_model": (SiglipVisionModel, "full", 0)}

# InternLM2-chat for messages whose content is a string (as INTERNLM2_CHAT renders it) or a list of
# {"type": "image"} / {"type": "text", "text": ...} parts, the form processors' chat templates take.
LLAVA_INTERNLM2_CHAT = (
    "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '" + IMAGE_TOKEN + "\n' }}{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}{{ '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def is_llava(path: str | Path) -> bool:
    """Whether a model folder holds a Llava (multimodal) model."""
    cfg = Path(path) / "config.json"
    return cfg.is_file() and json.loads(cfg.read_text(encoding="utf-8")).get("model_type") == "llava"


def check_vision_encoder(path: str | Path) -> dict:
    """The config of a CLIP / SigLIP folder, checked to be one (with its image processor) without loading weights."""
    folder = Path(path)
    cfg = read_config(folder)
    if cfg["model_type"] not in ENCODERS:
        raise CheckpointError(f"{folder / 'config.json'}: model_type {cfg['model_type']!r} is not a vision encoder "
                              f"this project builds LLaVA from ({', '.join(ENCODERS)})")
    if not (folder / "preprocessor_config.json").is_file():
        raise CheckpointError(f"{folder}: no preprocessor_config.json; the encoder's image processor resizes and "
                              "normalises the pictures (copy it from the encoder's download)")
    return cfg


def load_vision_encoder(path: str | Path, *, dtype=None, device=None) -> tuple[PreTrainedModel, object]:
    """The vision tower of a CLIP / SigLIP folder (a whole CLIPModel folder works) and its image processor."""
    folder = Path(path)
    cfg = check_vision_encoder(folder)
    cls = ENCODERS[cfg["model_type"]][0]
    model = cls.from_pretrained(str(folder), dtype=_resolve_dtype(dtype, cfg), device_map=device,
                                attn_implementation="sdpa")
    return model, AutoImageProcessor.from_pretrained(str(folder))


def _patches(vision_config) -> int:
    """Image tokens a picture becomes: the encoder's patches (its class token left out by both select strategies)."""
    return (vision_config.image_size // vision_config.patch_size) ** 2


def picture_tokens(encoder: str | Path) -> int:
    """How many ``<image>`` tokens a picture costs with the vision encoder folder ``encoder`` (576 for CLIP ViT-L/14 at
    336 pixels), read from its config without loading weights."""
    from transformers import AutoConfig

    check_vision_encoder(encoder)
    config = AutoConfig.from_pretrained(str(encoder))
    return _patches(getattr(config, "vision_config", config))


def add_image_token(tokenizer) -> int:
    """Give ``tokenizer`` the ``<image>`` special token (once); returns its id."""
    from tokenizers import AddedToken

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    if tokenizer.chat_template == INTERNLM2_CHAT:
        tokenizer.chat_template = LLAVA_INTERNLM2_CHAT
    return tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def grow_vocabulary(lm: PreTrainedModel, size: int) -> None:
    """Embedding and output rows up to ``size`` (rounded up to VOCAB_MULTIPLE), new rows the old rows' mean."""
    size = -(-size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    old = lm.get_input_embeddings().weight
    if old.shape[0] >= size:
        return
    for get, set_ in ((lm.get_input_embeddings, lm.set_input_embeddings),
                      (lm.get_output_embeddings, lm.set_output_embeddings)):
        module = get()
        w = module.weight.data
        grown = torch.cat([w, w.float().mean(0, keepdim=True).to(w.dtype).expand(size - w.shape[0], -1)])
        if isinstance(module, torch.nn.Embedding):
            new = torch.nn.Embedding(size, w.shape[1], padding_idx=module.padding_idx, device=w.device, dtype=w.dtype)
        else:
            new = torch.nn.Linear(w.shape[1], size, bias=False, device=w.device, dtype=w.dtype)
        new.weight.data.copy_(grown)
        new.weight.requires_grad_(module.weight.requires_grad)
        set_(new)
    lm.config.vocab_size = size


def build_llava(encoder: str | Path, llm: str | Path, *, projector: str | Path | None = None, dtype=None,
                device=None, seed: int = 0, **llm_kwargs) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A Llava model and processor from a vision encoder folder and an LLM folder.

    ``projector``: a ``projector.safetensors`` (or a folder holding one) to start from; else a new
    projector drawn with ``seed``. ``llm_kwargs`` go to ``load_model`` (``quantization_config``).
    """
    vision, image_processor = load_vision_encoder(encoder, dtype=dtype, device=device)
    lm = load_model(llm, dtype=dtype, device=device, **llm_kwargs)
    tokenizer = load_tokenizer(llm)
    image_id = add_image_token(tokenizer)
    grow_vocabulary(lm, len(tokenizer))
    _, strategy, extra_tokens = ENCODERS[vision.config.model_type]
    config = LlavaConfig(vision_config=vision.config.to_dict(), text_config=lm.config.to_dict(),
                         image_token_id=image_id, projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy=strategy,
                         image_seq_length=_patches(vision.config))
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    model.model.vision_tower = vision
    model.model.language_model = lm.model
    model.lm_head = lm.lm_head
    device_of = lm.get_input_embeddings().weight.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.model.multi_modal_projector = LlavaMultiModalProjector(config).to(device_of, vision.dtype)
    if projector is not None:
        load_projector(model, projector)
    model.config.dtype = lm.dtype
    model.generation_config = lm.generation_config
    model.generation_config.eos_token_id = stop_token_ids(tokenizer) or model.generation_config.eos_token_id
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               patch_size=vision.config.patch_size, vision_feature_select_strategy=strategy,
                               num_additional_image_tokens=extra_tokens, chat_template=tokenizer.chat_template)
    model.eval()
    return model, processor


def image_token_count(model: LlavaForConditionalGeneration) -> int:
    """How many ``<image>`` tokens stand for one picture (the encoder's patch count)."""
    return model.config.image_seq_length


def save_projector(projector: torch.nn.Module, out_file: str | Path) -> Path:
    """The weights of a projector module (``model.model.multi_modal_projector``) as one safetensors file."""
    out_file = Path(out_file)
    tmp = out_file.with_name(out_file.name + ".tmp")
    state = {k: v.detach().to("cpu").contiguous() for k, v in projector.state_dict().items()}
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out_file)
    return out_file


def load_projector(model: LlavaForConditionalGeneration, path: str | Path) -> None:
    """Projector weights from a file or a folder holding PROJECTOR_WEIGHTS (a stage-1 run folder)."""
    path = Path(path)
    file = path / PROJECTOR_WEIGHTS if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"{path}: no {PROJECTOR_WEIGHTS}; pass a stage-1 run folder or its projector file")
    projector = model.model.multi_modal_projector
    state = load_file(str(file))
    expected = {k: tuple(v.shape) for k, v in projector.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if got != expected:
        raise CheckpointError(f"{file}: projector weights {got} do not fit this encoder and LLM {expected}; "
                              "was stage 1 run with other models?")
    ref = next(projector.parameters())
    projector.load_state_dict({k: v.to(ref.device, ref.dtype) for k, v in state.items()})


def save_llava(model: LlavaForConditionalGeneration, processor: LlavaProcessor, out_dir: str | Path, *,
               dtype=None, max_shard_size: str | int = "2GB") -> Path:
    """A standalone folder that plain ``LlavaForConditionalGeneration`` + ``AutoProcessor`` load offline."""
    out_dir = Path(out_dir)
    torch_dtype = _resolve_dtype(dtype, {"torch_dtype": str(model.dtype).removeprefix("torch.")})
    for part in (model.config.vision_config, model.config.text_config):  # where its encoder and LLM were read from:
        part._name_or_path = ""  # this machine's paths (/home/<user>/...), published with the folder otherwise
    with written_whole(out_dir) as tmp:
        model.to(torch_dtype).save_pretrained(str(tmp), max_shard_size=max_shard_size)
        processor.save_pretrained(str(tmp))
    log.info("saved Llava (%s) to %s", str(torch_dtype).removeprefix("torch."), out_dir)
    return out_dir


def load_llava(path: str | Path, *, dtype=None, device=None) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A saved Llava folder, the way any transformers user loads it (no remote code)."""
    from transformers import AutoProcessor

    folder = Path(path)
    cfg = read_config(folder)
    if cfg["model_type"] != "llava":
        raise CheckpointError(f"{folder}: model_type {cfg['model_type']!r}, not a multimodal (llava) model")
    text_dtype = (cfg.get("text_config") or {}).get("dtype")
    model = LlavaForConditionalGeneration.from_pretrained(
        str(folder), dtype=_resolve_dtype(dtype, {"dtype": cfg.get("dtype") or text_dtype}), device_map=device)
    model.eval()
    return model, AutoProcessor.from_pretrained(str(folder))

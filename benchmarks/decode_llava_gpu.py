"""Decode speed of an image chat: the chat engine vs transformers' `LlavaForConditionalGeneration.generate`.

The LLaVA-InternLM2-1.8B + CLIP-ViT-L/14-336 shape (random bf16 weights: speed does not depend on the
values), one picture (576 image tokens) and a question, 256 new tokens, greedy, stop tokens off. The
peer (`generate`, as ../shared/peers/gpu_llava_peer.py's `llava_gen` times it) runs in the same process,
and so does the engine's text-only chat, the yardstick of "an image costs prefill only":

    python3 -m benchmarks.decode_llava_gpu            (SHAPE=tiny: every path on the CPU in seconds)

One JSON line per case:
- ``hf_generate``: ``generate(input_ids, pixel_values)``: tokens/s over the whole call (prefill
  included, as the peer counts) and time to first token (``max_new_tokens=1``).
- ``ours_image`` / ``ours_text``: ``engine.stream`` with / without the picture (a PIL image: the image
  processor's resize and normalise are inside the time to first token); tokens/s over the whole reply,
  decode-only tokens/s (first token to last) and time to first token; medians of 3.
  ``ours_text_same_length``: a text prompt as long as the picture's (its cache as long too).
- ``ratios``: image vs text decode tokens/s (goal >= 0.9), ours vs ``generate``.
- ``prefill_parts_ms``: the image processor (CPU) and the vision tower + projector (GPU) alone.
- ``same_tokens_bf16``: the engine's reply vs ``generate``'s; where they part, ``generate``'s top-2 logit
  gap there (random weights give near-ties that bf16 rounding flips; fp32 exactness is a CPU test).
- ``concurrent_4_image``: four image chats at once, sharing the decode steps.
- ``attention_us``: one layer's decode attention alone (GPU time in a CUDA graph) over cache buckets of
  256-8192, SDPA with the engine's mask vs `chat.attention`'s split-KV kernel (used from 1024 on).
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                          LlavaProcessor)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.decode_cpu import SHAPES, tiny_tokenizer  # noqa: E402
from benchmarks.decode_gpu import concurrent, emit, reply  # noqa: E402
from myassistant.chat import ChatEngine, GenerationSettings  # noqa: E402
from myassistant.chat.vision import ImageEncoder  # noqa: E402
from myassistant.model import IMAGE_TOKEN  # noqa: E402

TINY = os.environ.get("SHAPE") == "tiny"
VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              image_size=336, patch_size=14, projection_dim=768)
TEXT = dict(SHAPES["internlm2-1.8b"], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-5,
            tie_word_embeddings=False)
if TINY:
    VISION.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=56)
    TEXT.update(SHAPES["small"], hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2)
DEVICE = "cpu" if TINY else "cuda"
DTYPE = torch.float32 if TINY else torch.bfloat16
QUESTION = "What is in the picture? Describe it in detail, please."


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def build() -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    patches = (VISION["image_size"] // VISION["patch_size"]) ** 2  # 576; "default" drops the CLS token
    config = LlavaConfig(vision_config=CLIPVisionConfig(**VISION), text_config=LlamaConfig(**TEXT),
                         image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), projector_hidden_act="gelu",
                         vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=patches)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        model = LlavaForConditionalGeneration(config).to(DTYPE).eval()
    size = VISION["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=VISION["patch_size"],
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return model, processor


def picture() -> Image.Image:
    image = Image.new("RGB", (640, 480), "white")
    ImageDraw.Draw(image).ellipse((160, 120, 480, 360), fill="red")
    return image


def median_replies(engine: ChatEngine, messages: list[dict], settings: GenerationSettings, runs: int = 3) -> dict:
    reply(engine, messages, settings)  # warm: this prompt's prefill shape and cache bucket
    stats = [reply(engine, messages, settings) for _ in range(runs)]
    return {"prompt_tokens": stats[0].prompt_tokens, "new_tokens": stats[0].new_tokens,
            "tokens_per_s": round(statistics.median(s.new_tokens / s.elapsed_s for s in stats), 1),
            "decode_tokens_per_s": round(statistics.median(s.tokens_per_s for s in stats), 1),
            "first_token_ms": round(statistics.median(s.first_token_s for s in stats) * 1e3, 1)}


def timed(fn, reps: int = 5) -> float:
    """Median milliseconds of `fn()` (synchronised)."""
    times = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1e3, 2)


def hf_generate(model, ids: torch.Tensor, pixels: torch.Tensor, new_tokens: int) -> tuple[dict, list[int], list]:
    kwargs = dict(input_ids=ids, pixel_values=pixels, do_sample=False)
    with torch.inference_mode():
        model.generate(**kwargs, max_new_tokens=8, min_new_tokens=8)
        first_ms = timed(lambda: model.generate(**kwargs, max_new_tokens=1, min_new_tokens=1), reps=3)
        sync()
        start = time.perf_counter()
        out = model.generate(**kwargs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, output_scores=True,
                             return_dict_in_generate=True)
        sync()
        seconds = time.perf_counter() - start
    tokens = out.sequences[0, ids.shape[1]:].tolist()
    return {"prompt_tokens": ids.shape[1], "new_tokens": len(tokens), "tokens_per_s": round(len(tokens) / seconds, 1),
            "first_token_ms": first_ms}, tokens, out.scores


def attention_us(rows: int, length: int, reps: int = 20) -> dict:
    """GPU microseconds of one decode step's attention (InternLM2-1.8B heads: 8 kv heads x 2 queries, 128
    wide, bf16) over a cache bucket of `length`, rows at position length - 1: SDPA with the engine's mask vs
    the split-KV kernel, each as 24 calls (one per layer) in a CUDA graph, replayed."""
    from torch.nn import functional as F

    from myassistant.chat.attention import split_kv_attention

    kv_heads, group, dim = 8, 2, 128
    q = torch.randn(rows, kv_heads, group, dim, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(rows, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    positions = torch.full((rows,), length - 1, device="cuda")
    mask = torch.zeros(rows, 1, 1, length, device="cuda", dtype=torch.bfloat16)
    cases = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=dim ** -0.5),
             "split_kv": lambda: split_kv_attention(q, k, v, positions, dim ** -0.5)}
    out = {}
    for name, fn in cases.items():
        for _ in range(2):
            fn()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(24):
                fn()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        graph.replay()
        start.record()
        for _ in range(reps):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        out[name] = round(start.elapsed_time(end) * 1e3 / reps / 24, 2)
    ref = cases["sdpa"]().float()
    out["max_abs_diff"] = round(float((cases["split_kv"]().float() - ref).abs().max()), 5)
    return out


def main() -> int:
    new_tokens = int(os.environ.get("NEW_TOKENS", 32 if TINY else 256))
    model, processor = build()
    vision = ImageEncoder(model, processor)
    engine = ChatEngine(vision.text_model, processor.tokenizer, name="llava-internlm2-1.8b-shape", vision=vision)
    engine.stop_ids = []  # random weights: every reply runs the full length
    emit("device", name=torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", torch=torch.__version__,
         image_tokens=vision.tokens_per_image, dtype=str(DTYPE).removeprefix("torch."))
    start = time.perf_counter()
    engine.warm_up()
    emit("warm_up", seconds=round(time.perf_counter() - start, 1))
    if DEVICE == "cuda":
        for rows in (1, 8):
            emit("attention_us", rows=rows, **{str(n): attention_us(rows, n) for n in (256, 512, 1024, 2048, 8192)})

    image = picture()
    with_image = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": QUESTION}]}]
    text_only = [{"role": "user", "content": QUESTION}]
    settings = GenerationSettings(temperature=0, max_new_tokens=new_tokens)
    prompt_ids, _, _ = engine.prompt(with_image, settings)
    prompt_ids, embed = vision.prepare(prompt_ids, [image])
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]

    peer, peer_tokens, peer_scores = hf_generate(model, torch.tensor([prompt_ids], device=DEVICE),
                                                 pixels.to(DEVICE, DTYPE), new_tokens)
    emit("hf_generate", **peer)
    ours_image = median_replies(engine, with_image, settings)
    emit("ours_image", **ours_image)
    ours_text = median_replies(engine, text_only, settings)
    emit("ours_text", **ours_text)
    words = QUESTION.split() * 100
    while len(engine.prompt([{"role": "user", "content": " ".join(words)}], settings)[0]) > len(prompt_ids):
        words.pop()
    emit("ours_text_same_length", **median_replies(engine, [{"role": "user", "content": " ".join(words)}], settings))
    emit("ratios", image_vs_text_decode=round(ours_image["decode_tokens_per_s"] / ours_text["decode_tokens_per_s"], 3),
         image_vs_text_whole_reply=round(ours_image["tokens_per_s"] / ours_text["tokens_per_s"], 3),
         ours_vs_generate=round(ours_image["tokens_per_s"] / peer["tokens_per_s"], 2),
         first_token_ours_vs_generate=round(ours_image["first_token_ms"] / peer["first_token_ms"], 2))
    with torch.inference_mode():
        emit("prefill_parts_ms",
             image_processor=timed(lambda: processor.image_processor(images=[image], return_tensors="pt")),
             vision_tower_and_projector=timed(lambda: vision.features(pixels)))
        ours = list(engine.tokens(prompt_ids, settings, embed=embed))
    same = next((i for i, (a, b) in enumerate(zip(ours, peer_tokens)) if a != b), min(len(ours), len(peer_tokens)))
    result = {"same_tokens_as_generate": ours == peer_tokens, "tokens": len(peer_tokens), "identical_prefix": same}
    if same < len(peer_tokens):
        top2 = peer_scores[same][0].float().topk(2).values
        result["generate_top2_gap_at_split"] = round(float(top2[0] - top2[1]), 4)
    emit("same_tokens_bf16", **result)
    concurrent(engine, with_image, 4, 8)  # captures this row bucket
    emit("concurrent_4_image", new_tokens=new_tokens, **concurrent(engine, with_image, 4, new_tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main())

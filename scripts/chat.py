"""assistant chat MODEL_DIR: streaming multi-turn chat in the terminal (or one answer with --prompt);
with a multimodal model, --image PATH (or /image PATH in the chat) asks about a picture."""
from __future__ import annotations

import argparse
import sys

from myassistant.chat import ChatEngine, EngineError, GenerationSettings, GenerationStats
from myassistant.chat.vision import read_image, user_message


def reply(engine: ChatEngine, messages: list[dict], settings: GenerationSettings) -> str:
    """Print the streamed answer; Ctrl-C stops it (what was said so far is kept)."""
    stats, parts = GenerationStats(), []
    try:
        for delta in engine.stream(messages, settings, stats=stats):
            print(delta, end="", flush=True)
            parts.append(delta)
    except KeyboardInterrupt:  # raised inside the decode loop, so generation has stopped
        print(" [stopped]", end="")
    print(flush=True)
    sys.stderr.write(f"[{stats.new_tokens} tokens, {stats.tokens_per_s:.1f} tokens/s, "
                     f"first token {stats.first_token_s or 0:.2f} s, prompt {stats.prompt_tokens} tokens]\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assistant chat", description=__doc__,
                                     epilog="In the chat: /image PATH attaches a picture to your next message, "
                                            "/reset starts over, /exit quits, Ctrl-C stops an answer.")
    parser.add_argument("model_dir", help="merged model folder, or the base model folder with --adapter")
    parser.add_argument("--adapter", help="LoRA adapter folder (peft format) to apply on top of MODEL_DIR")
    parser.add_argument("--prompt", help="answer this one message and exit")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="a picture for the (first) message; a multimodal model only; may be repeated")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--identity-guard", action="store_true",
                        help="the system prompt's sentences naming the assistant only on turns that ask about it")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--top-p", type=float, default=0.8, help="nucleus sampling, 1 = off (default 0.8)")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off (default)")
    parser.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off (default)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="longest answer in tokens (default 512)")
    parser.add_argument("--seed", type=int, help="fixed sampling seed, for repeatable answers")
    parser.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--dtype", default="auto", help="auto (GPU bf16/fp16, CPU fp32), bf16, fp16, fp32")
    parser.add_argument("--quantize", default="auto", choices=["auto", "int8", "none"],
                        help="int8 linear weights: auto = on the CPU only (default; ASSISTANT_QUANTIZE=none turns off)")
    args = parser.parse_args(argv)
    try:
        settings = GenerationSettings(system_prompt=args.system, temperature=args.temperature, top_p=args.top_p,
                                      top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                                      max_new_tokens=args.max_new_tokens, seed=args.seed,
                                      identity_guard=args.identity_guard)
    except ValueError as err:
        parser.error(str(err))
    for path in args.image:
        read_image(path)  # a bad path fails before the model loads
    engine = ChatEngine.from_pretrained(args.model_dir, args.adapter, device=args.device, dtype=args.dtype,
                                        quantize=args.quantize)
    if args.image and engine.vision is None:
        raise EngineError(f"{args.model_dir} is a text-only model: --image needs a multimodal (Llava) model")
    if args.prompt is not None:
        reply(engine, [user_message(args.prompt, args.image)], settings)
        return 0
    history: list[dict] = []
    images = list(args.image)  # for the next message
    while True:
        try:
            text = input(">>> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text == "/exit":
            return 0
        if text == "/reset":
            history, images = [], []
            sys.stderr.write("[new conversation]\n")
        elif text.startswith("/image"):
            path = text.removeprefix("/image").strip()
            try:
                if engine.vision is None:
                    raise EngineError(f"{args.model_dir} is a text-only model: it cannot read images")
                read_image(path)
            except EngineError as err:
                sys.stderr.write(f"error: {err}\n")
            else:
                images.append(path)
                sys.stderr.write(f"[{path} goes with your next message]\n")
        elif text:
            history.append(user_message(text, images))
            images = []
            history.append({"role": "assistant", "content": reply(engine, history, settings)})

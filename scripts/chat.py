"""assistant chat MODEL_DIR: streaming multi-turn chat in the terminal (or one answer with --prompt, or a plain
text's continuation with --complete); with a multimodal model, --image PATH (or /image PATH in the chat) asks about
a picture."""
from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import sys
from pathlib import Path

from myassistant.chat import ChatEngine, EngineError, GenerationSettings, GenerationStats, ServeConfig
from myassistant.chat.config import CHOICES
from myassistant.chat.decode import GENERATION_KEYS
from myassistant.chat.vision import is_llava, read_image, user_message


def reply(engine: ChatEngine, messages: list[dict] | str, settings: GenerationSettings) -> str:
    """Print the streamed answer (a plain text's continuation for a str); Ctrl-C stops it (what was said so far is
    kept)."""
    stats, parts = GenerationStats(), []
    deltas = engine.complete(messages, settings, stats=stats) if isinstance(messages, str) else \
        engine.stream(messages, settings, stats=stats)
    try:
        for delta in deltas:
            print(delta, end="", flush=True)
            parts.append(delta)
    except KeyboardInterrupt:  # raised inside the decode loop, so generation has stopped
        print(" [stopped]", end="")
    print(flush=True)
    if stats.message_cut:
        sys.stderr.write(f"[the message was too long: only its last part was read, {stats.prompt_tokens} tokens]\n")
    sys.stderr.write(f"[{stats.new_tokens} tokens, {stats.tokens_per_s:.1f} tokens/s, "
                     f"first token {stats.first_token_s or 0:.2f} s, prompt {stats.prompt_tokens} tokens]\n")
    return "".join(parts)


COMMANDS = ("reset", "image", "exit", "quit", "q")


def read_message() -> str:
    """The next message typed: one line, or the lines between a \"\"\" line and one that ends with \"\"\" (a pasted
    text stays one message); a command typed with a Chinese input method's 、 for / is the command."""
    text = input(">>> ").strip()
    if text.startswith('"""'):
        lines = [text[3:]]
        while not lines[-1].rstrip().endswith('"""'):
            lines.append(input("... "))
        lines[-1] = lines[-1].rstrip()[:-3]
        return "\n".join(lines).strip()
    command = re.fullmatch(r"、(\w+)(\s.*)?", text)
    return f"/{text[1:]}" if command and command[1] in COMMANDS else text


def pasted_path(text: str) -> str:
    """A path as a terminal pastes a dropped file: quoted ('my photo.png') or with its spaces escaped (my\\ photo.png),
    or as typed (a file of that name: C:\\Users\\... kept whole)."""
    if Path(text).expanduser().exists():
        return text
    try:
        parts = shlex.split(text)
    except ValueError:  # an unmatched quote: a path with one in it, typed
        return text
    return parts[0] if len(parts) == 1 else text


def over_its_base(model_dir: str, adapter: str | None) -> tuple[str, str | None]:
    """A LoRA run's folder (an adapter, no weights) as its base plus that adapter, the base found as `report` and
    `merge` find it (the run's config; a stopped run: its newest checkpoint's adapter); anything else as given (the
    engine says what is wrong with it)."""
    from myassistant.trainer.run_folder import chat_parts

    if adapter:
        return model_dir, adapter
    try:
        model, run_adapter = chat_parts(model_dir)
    except ValueError as err:
        raise EngineError(str(err)) from None
    if run_adapter is None:
        return model_dir, None
    newest = "" if run_adapter == Path(model_dir) else f" (its newest checkpoint, {run_adapter.name}: no final one yet)"
    sys.stderr.write(f"[{model} with the adapter of {model_dir}{newest}]\n")
    return str(model), str(run_adapter)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="assistant chat", description=__doc__,
                                     epilog="In the chat: /image PATH attaches a picture to your next message, "
                                            "/reset starts over, /exit quits, Ctrl-C stops an answer; a message "
                                            'of several lines goes between """ and """.')
    parser.add_argument("model_dir", help="merged model folder, or the base model folder with --adapter")
    parser.add_argument("--adapter", help="LoRA adapter folder (peft format) to apply on top of MODEL_DIR")
    once = parser.add_mutually_exclusive_group()
    once.add_argument("--prompt", help="answer this one message and exit")
    once.add_argument("--complete", metavar="TEXT",
                      help="continue this plain text, no chat template (a pre-trained model), and exit")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="a picture for the (first) message; a multimodal model only; may be repeated")
    parser.add_argument("--system", help="system prompt")
    parser.add_argument("--identity-guard", action="store_true",
                        help="the system prompt's sentences naming the assistant only on turns that ask about it")
    sampling = parser.add_argument_group("sampling (default: what the model's generation_config.json sets, else "
                                         "the value shown)")
    d = GenerationSettings()
    sampling.add_argument("--temperature", type=float, help=f"0 = greedy ({d.temperature})")
    sampling.add_argument("--top-p", type=float, help=f"nucleus sampling, 1 = off ({d.top_p})")
    sampling.add_argument("--top-k", type=int, help=f"0 = off ({d.top_k})")
    sampling.add_argument("--repetition-penalty", type=float, help=f"1 = off ({d.repetition_penalty})")
    sampling.add_argument("--max-new-tokens", type=int, help=f"longest answer in tokens ({d.max_new_tokens})")
    sampling.add_argument("--seed", type=int, help="fixed sampling seed, for repeatable answers")
    serving = parser.add_argument_group("serving (chat.ServeConfig; the app sets it from environment variables)")
    s = ServeConfig()
    serving.add_argument("--device", default=s.device, help="auto (GPU if present), cpu, cuda, cuda:1, ...")
    serving.add_argument("--dtype", default=s.dtype, choices=CHOICES["dtype"], help="auto = GPU bf16/fp16, CPU fp32")
    serving.add_argument("--quantize", default=s.quantize, choices=CHOICES["quantize"],
                         help="int8 / int4 linear weights; auto = int8 on the CPU only; on a GPU int8 / int4 are "
                              "weight-only decoder layers (chat.weight_only)")
    serving.add_argument("--int8-kernel", default=s.int8_kernel, choices=CHOICES["int8_kernel"],
                         help="auto = blocks (a scale per 32 weights, C built at first use) where it builds, else dynamic, "
                              "else weight_only")
    serving.add_argument("--fast-decode", action=argparse.BooleanOptionalAction, default=s.fast_decode,
                         help="static-cache decoder where the model allows it (default on)")
    serving.add_argument("--compile", action=argparse.BooleanOptionalAction, default=s.compile,
                         help="torch.compile the decode step (default: on a GPU)")
    args = parser.parse_args(argv)
    given = {name: getattr(args, name) for name in (*GENERATION_KEYS, "seed") if getattr(args, name) is not None}
    try:
        GenerationSettings(**given)  # bad values stop here, before the model loads
    except ValueError as err:  # named as the flags were typed, one line (argparse's usage block hid it)
        said = re.sub(r"(\w+)=(\S+) must", lambda m: f"--{m[1].replace('_', '-')} {m[2]}: must",
                      str(err).removeprefix("GenerationSettings: "))
        parser.exit(2, f"assistant chat: error: {said}\n")
    if args.prompt is not None and not args.prompt.strip() and not args.image:
        parser.error("--prompt: the message is empty")
    if args.complete is not None and (not args.complete.strip() or args.image or args.system):
        parser.error("--complete: the text is empty" if not args.complete.strip() else
                     "--complete continues plain text: no --image or --system (those are chat turns)")
    if args.image and Path(args.model_dir, "config.json").is_file() and not is_llava(Path(args.model_dir)):
        parser.exit(2, f"assistant chat: error: --image: {args.model_dir} is a text-only model; pictures need a "
                       "multimodal (Llava) model\n")
    for path in args.image:
        read_image(path)  # a bad path fails before the model loads
    config = ServeConfig(device=args.device, dtype=args.dtype, quantize=args.quantize, int8_kernel=args.int8_kernel,
                         fast_decode=args.fast_decode, compile=args.compile)
    engine = ChatEngine.from_pretrained(*over_its_base(args.model_dir, args.adapter), config)
    settings = dataclasses.replace(engine.defaults, system_prompt=args.system, identity_guard=args.identity_guard,
                                   **given)
    if args.prompt is not None:
        reply(engine, [user_message(args.prompt, args.image)], settings)
        return 0
    if args.complete is not None:
        print(args.complete, end="", flush=True)  # the continuation follows it as the model writes it
        reply(engine, args.complete, settings)
        return 0
    try:
        import readline  # noqa: F401 - the arrow keys edit the line and recall earlier ones, as in a shell
    except ImportError:  # (not on Windows)
        pass
    history: list[dict] = []
    images = list(args.image)  # for the next message
    while True:
        try:
            text = read_message()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if text in ("/exit", "/quit", "/q", "exit", "quit"):
            return 0
        if text == "/reset":
            history, images = [], []
            sys.stderr.write("[new conversation]\n")
        elif text.startswith("/image"):
            path = pasted_path(text.removeprefix("/image").strip())
            try:
                if engine.vision is None:
                    raise EngineError(f"{args.model_dir} is a text-only model: it cannot read images")
                read_image(path)
            except EngineError as err:
                sys.stderr.write(f"error: {err}\n")
            else:
                images.append(path)
                sys.stderr.write(f"[{path} goes with your next message]\n")
        elif re.fullmatch(r"/\w+", text):  # a mistyped command is not a message for the model
            sys.stderr.write(f"{text}: not a command; /reset starts over, /image PATH adds a picture, /exit quits\n")
        elif text:
            history.append(user_message(text, images))
            images = []
            history.append({"role": "assistant", "content": reply(engine, history, settings)})

"""assistant tiny OUT_DIR [--llava | --vision] [--encoder clip|siglip]: write a tiny InternLM2-format checkpoint
(random weights, real tokenizer), a tiny merged multimodal (Llava) model, or a tiny CLIP / SigLIP vision encoder."""
from __future__ import annotations

import argparse
from pathlib import Path

# What the tiny builders write (text model, Llava, vision tower): a folder holding only these, and small, is an earlier
# tiny build that may be replaced; anything else is someone's, and stays.
TINY_FILES = {"config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.model",
              "tokenizer_config.json", "chat_template.jinja", "processor_config.json", "tokenizer.json",
              "preprocessor_config.json"}
TINY_MAX_BYTES = 256 << 20


def not_replaceable(out: Path) -> str | None:
    """Why `out` must not be replaced by a tiny build (None: it is absent, empty or an earlier tiny build)."""
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out}: is a file, not a folder"
    others = sorted(p.name for p in out.iterdir() if p.name not in TINY_FILES or not p.is_file())
    if others:
        return f"{out}: holds files a tiny build does not write ({', '.join(others[:3])}); choose a new folder"
    if sum(p.stat().st_size for p in out.iterdir()) > TINY_MAX_BYTES:
        return f"{out}: holds a model larger than a tiny build; choose a new folder"
    return None


def shape_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the text model's shape flags, named as flags (before a tokenizer is trained)."""
    sizes = {"--hidden-size": args.hidden_size, "--layers": args.layers, "--heads": args.heads,
             "--kv-heads": args.kv_heads, "--intermediate-size": args.intermediate_size, "--vocab-size": args.vocab_size}
    if bad := [f"{flag} {value}" for flag, value in sizes.items() if value < 1]:
        return f"{', '.join(bad)}: sizes are whole numbers of at least 1"
    if args.heads % args.kv_heads or args.hidden_size % args.heads:
        return (f"--heads {args.heads} must be a multiple of --kv-heads {args.kv_heads} and divide --hidden-size "
                f"{args.hidden_size}")
    if (args.hidden_size // args.heads) % 2:
        return f"--hidden-size {args.hidden_size} / --heads {args.heads} is odd; rotary embeddings need an even head size"
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="assistant tiny", description=__doc__)
    p.add_argument("out_dir", help="folder to write (an earlier tiny build there is replaced; other files are not)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--hidden-size", type=int, default=64, help="hidden_size (default 64)")
    p.add_argument("--layers", type=int, default=2, help="num_hidden_layers (default 2)")
    p.add_argument("--heads", type=int, default=4, help="num_attention_heads (default 4)")
    p.add_argument("--kv-heads", type=int, default=2, help="num_key_value_heads (default 2)")
    p.add_argument("--intermediate-size", type=int, default=128, help="MLP intermediate_size (default 128)")
    p.add_argument("--vocab-size", type=int, default=1000, help="sentencepiece BPE target size (default 1000)")
    p.add_argument("--corpus", help="text file (one sample a line) to train the tokenizer on; default: built-in zh+en")
    p.add_argument("--nul-piece", action="store_true", help="add a vocabulary piece with a NUL byte, as the real InternLM2 one has")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--llava", action="store_true", help="a merged multimodal model: tiny CLIP + tiny InternLM2 + projector")
    kind.add_argument("--vision", action="store_true", help="a tiny CLIP vision encoder folder (for multimodal training)")
    p.add_argument("--encoder", choices=("clip", "siglip"), default="clip",
                   help="the vision tower of --vision / --llava: CLIP (default) or SigLIP")
    args = p.parse_args(argv)
    out_dir = Path(args.out_dir).resolve()  # "." has no name to make a temporary sibling from
    from myassistant.model import CheckpointError, build_tiny_checkpoint, build_tiny_llava, build_tiny_vision_encoder

    if problem := not_replaceable(out_dir) or shape_problem(args):
        raise CheckpointError(problem)

    if args.llava or args.vision:
        print(build_tiny_llava(out_dir, seed=args.seed, kind=args.encoder) if args.llava
              else build_tiny_vision_encoder(out_dir, seed=args.seed, kind=args.encoder))
        return 0

    corpus = None
    if args.corpus:
        with open(args.corpus, encoding="utf-8") as fh:
            corpus = [line.rstrip("\n") for line in fh if line.strip()]
    out = build_tiny_checkpoint(
        out_dir, seed=args.seed, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        intermediate_size=args.intermediate_size, vocab_size=args.vocab_size, corpus=corpus, nul_piece=args.nul_piece,
    )
    print(out)
    return 0

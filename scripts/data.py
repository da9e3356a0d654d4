"""assistant data identity|shapes|check: write self-cognition data or the synthetic picture set, or validate and
describe a data file (LLaVA files with pictures too)."""
from __future__ import annotations

import argparse
import json
import re
import sys

from myassistant.scripts.argtypes import at_least
from myassistant.trainer.data.corpus import TEXT_UNITS
from myassistant.trainer.data.formats import DataError
from myassistant.trainer.identity import OLD_NAMES, IdentitySpec, write_identity_dataset

# The mix's numeric knobs: flag -> (IdentitySpec field, help without the default).
MIX_KNOBS = {
    "--ratio": ("ratio", "general conversations per identity conversation"),
    "--multi-turn": ("multi_turn", "share of training chats that are multi-turn: identity asked after general turns, "
                                   "general after identity turns (0..1)"),
    "--noise": ("noise", "share of training questions asked with one word added, dropped or swapped for a general "
                         "question's word, so unseen wordings are recognised (0..1)"),
    "--small-talk": ("small_talk", "small-talk chats per identity chat: the identity questions' greetings and closings "
                                   "asked alone ('谢谢。', 'Hi!'), answered without the name"),
    "--about-others": ("about_others", "chats per identity chat that ask the identity questions about someone else "
                                       "('他是谁？'), answered that it is unclear who is meant"),
}


def _as_flags(message: str, parser: argparse.ArgumentParser) -> str:
    """IdentitySpec's field names in `message` as the flags they came from (multi_turn -> --multi-turn; a plain word
    only where a problem starts: "count must be >= 1")."""
    flags = {a.dest: max(a.option_strings, key=len) for a in parser._actions if a.option_strings}
    message = re.sub(r"\b[a-z]+(?:_[a-z]+)+\b", lambda m: flags.get(m[0], m[0]), message)
    return re.sub(r"(^identity data: |; )([a-z]+)\b", lambda m: m[1] + flags.get(m[2], m[2]), message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="assistant data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ident = sub.add_parser(
        "identity", allow_abbrev=False, help="write self-cognition training and held-out evaluation data",
        description="Write self-cognition data for a new name: train.jsonl (identity conversations mixed with "
                    "general chat), the held-out sets the report measures (eval_identity.jsonl, "
                    "eval_identity_seen.jsonl, eval_general.jsonl, and as multi-turn chats eval_identity_multi.jsonl, "
                    "eval_general_multi.jsonl) and meta.json, into --out.")
    ident.add_argument("--name", required=True, help="the assistant's new name")
    ident.add_argument("--author", help="who made it (answers to 'who made you' name them)")
    ident.add_argument("--persona", help="an extra sentence some answers add about the assistant")
    ident.add_argument("--system", help="system prompt put in front of every conversation")
    ident.add_argument("--languages", default="en,zh", help="languages of the identity questions: en, zh or en,zh (default)")
    ident.add_argument("--old-names", default=",".join(OLD_NAMES),
                       help="identities the answers deny ('Are you InternLM?' -> 'No, I am ...'), comma-separated; "
                            f"'' for none (default {','.join(OLD_NAMES)})")
    ident.add_argument("--general", help="general conversations to mix in (any supported format); default: the shipped zh+en set")
    ident.add_argument("--encoding", default="utf-8",
                       help="the --general file's text encoding, e.g. gb18030 (default utf-8)")
    for flag, (field, text) in MIX_KNOBS.items():
        default = getattr(IdentitySpec, field)
        ident.add_argument(flag, type=float, default=default, help=f"{text} (default {default})")
    ident.add_argument("--look-alikes-from", metavar="MODEL_DIR",
                       help="answer the --small-talk / --about-others chats with this model's greedy replies (the base "
                            "you fine-tune: it keeps its own behaviour on them); the template answer stays where a "
                            "reply names the assistant or an old identity (default: the template answers)")
    ident.add_argument("--count", type=int, default=300, help="identity conversations in train.jsonl (default 300)")
    ident.add_argument("--eval-identity", type=int, default=60, help="held-out identity questions (default 60)")
    ident.add_argument("--eval-general", type=int, default=40, help="held-out general prompts for the leak measure (default 40)")
    ident.add_argument("--seed", type=int, default=0, help="random seed: the same seed writes the same files (default 0)")
    ident.add_argument("--out", required=True, help="output folder")
    shapes_help = ("write the synthetic picture set (coloured shapes, LLaVA format) for the multimodal recipe: "
                   "pretrain.jsonl, finetune.jsonl, held-out eval.jsonl")
    shapes = sub.add_parser("shapes", allow_abbrev=False, help=shapes_help, description=shapes_help[0].upper() + shapes_help[1:] + ".")
    shapes.add_argument("--out", required=True, help="output folder")
    shapes.add_argument("--per-class", type=at_least(1, "each class needs a training picture"), default=24,
                        help="training pictures per colour and shape (default 24)")
    shapes.add_argument("--eval-per-class", type=at_least(1, "the report needs a held-out picture of each class"),
                        default=4, help="held-out pictures per class (default 4)")
    shapes.add_argument("--size", type=int, default=64, help="picture side in pixels (default 64)")
    shapes.add_argument("--seed", type=int, default=0, help="random seed: the same seed draws the same pictures (default 0)")
    check = sub.add_parser(
        "check", allow_abbrev=False, help="validate a data file (folder, glob) and print its counts",
        description="Read training data as 'assistant train' would (every record checked; a bad one is named by "
                    "file:line and field) and print its counts as JSON: records, assistant turns, system prompts, "
                    "duplicates (raw text: documents), and with --tokenizer the token statistics.")
    check.add_argument("file", help="a data file (JSON array or JSONL of conversations, raw text), a folder or a glob "
                                    "of raw-text files")
    check.add_argument("--format", default="auto",
                       help="auto (detected from the first record), openai, xtuner, alpaca, sharegpt or text (default auto)")
    check.add_argument("--tokenizer", help="model folder whose tokenizer gives token statistics")
    check.add_argument("--max-length", type=at_least(1, "a sample holds at least 1 token"), default=2048,
                       help="tokens per sample for the statistics (default 2048)")
    check.add_argument("--text-unit", default="paragraph", choices=TEXT_UNITS,
                       help="raw .txt: paragraph (default), line or file per document")
    check.add_argument("--text-field", default="text", help="raw text: the JSON field / Parquet column (default text)")
    check.add_argument("--encoding", default="utf-8", help="the file's text encoding, e.g. gb18030 (default utf-8)")
    check.add_argument("--image-folder", help="folder the image paths of a LLaVA file are relative to "
                                              "(default: the data file's folder); every picture is opened")
    check.add_argument("--vision-encoder", metavar="DIR",
                       help="a LLaVA file: the run's vision.encoder, so that each picture counts as the tokens it "
                            "costs in the token statistics (576 for CLIP ViT-L/14-336)")
    args = parser.parse_args(argv)

    if args.command == "identity":
        try:
            spec = IdentitySpec(name=args.name, author=args.author, persona=args.persona, system=args.system,
                                count=args.count, **{field: getattr(args, field) for field, _ in MIX_KNOBS.values()},
                                general=args.general, general_encoding=args.encoding,
                                look_alikes_from=args.look_alikes_from,
                                languages=args.languages.split(","), old_names=[n for n in args.old_names.split(",") if n],
                                eval_identity=args.eval_identity, eval_general=args.eval_general, seed=args.seed)
            out = write_identity_dataset(spec, args.out)
        except DataError as err:
            raise DataError(_as_flags(str(err), ident)) from None
        sys.stdout.write((out / "meta.json").read_text(encoding="utf-8"))
        return 0

    if args.command == "shapes":
        from myassistant.trainer.multimodal import write_shapes_dataset

        out = write_shapes_dataset(args.out, per_class=args.per_class, eval_per_class=args.eval_per_class,
                                   size=args.size, seed=args.seed)
        sys.stdout.write((out / "meta.json").read_text(encoding="utf-8"))
        return 0

    from myassistant.trainer.data.corpus import TextSpec
    from myassistant.trainer.preflight import describe_data

    spec = TextSpec(text_unit=args.text_unit, text_field=args.text_field, encoding=args.encoding)
    tokenizer = None
    if args.tokenizer:
        from myassistant.model import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer)
    stats, _ = describe_data(args.file, fmt=args.format, spec=spec, tokenizer=tokenizer, max_length=args.max_length,
                             image_folder=args.image_folder, vision_encoder=args.vision_encoder)
    sys.stdout.write(json.dumps({"file": args.file, **stats}, indent=2, ensure_ascii=False) + "\n")
    return 0

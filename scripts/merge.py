"""assistant merge RUN_DIR --out DIR [--layout internlm2]: adapter + base -> standalone safetensors.

The merged folder takes the run's config and report along and records the merge in merge.json, so the
model card of 'assistant push' names the base model, method, hyper-parameters and figures."""
from __future__ import annotations

import argparse
import re
import sys


def shard_size(text: str) -> str | int | None:
    """--max-shard-size as the weight writers take it (huggingface_hub reads only KB / MB / GB / TB): bytes for plain
    digits and KiB / MiB / GiB / TiB, a decimal-unit size as given; None when it is not a size."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(?:([KMGT])(i?)B)?", text.strip(), re.IGNORECASE)
    if not found:
        return None
    number, unit, binary = found.groups()
    if unit is None:
        return int(float(number))
    if binary:
        return int(float(number) * 1024 ** ("KMGT".index(unit.upper()) + 1))
    return f"{number}{unit.upper()}B"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="assistant merge", description=__doc__)
    parser.add_argument("run_dir", help="run folder of 'assistant train' (or an adapter / checkpoint-N folder)")
    parser.add_argument("--out", required=True, help="folder for the merged model (written complete or not at all)")
    parser.add_argument("--layout", choices=("llama", "internlm2"), default="llama",
                        help="llama: plain AutoModelForCausalLM loads it (default); internlm2: the original key "
                             "layout, with the base download's remote code (modeling_internlm2.py ...), tokenizer.model and "
                             "auto_map when it has them, for the original code (trust_remote_code=True)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                        help="dtype of the merge and the written weights (default bfloat16; float32 for tiny models)")
    parser.add_argument("--max-shard-size", default="2GB", help="largest weights file (default 2GB)")
    parser.add_argument("--base", metavar="DIR", help="the base model's folder, where it is no longer where the run's "
                                                       "config says (moved, or another machine)")
    args = parser.parse_args(argv)
    size = shard_size(args.max_shard_size)
    if size is None:
        parser.error(f"--max-shard-size: {args.max_shard_size!r} is not a size; give bytes or e.g. 500MB, 2GB")

    from myassistant.trainer.merge import merge

    out = merge(args.run_dir, args.out, layout=args.layout, dtype=args.dtype, max_shard_size=size, base=args.base)
    sys.stdout.write(f"{out}\n")
    return 0

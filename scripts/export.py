"""assistant export MODEL_DIR --to gguf --quant q8_0 --out FILE.gguf: a model folder -> GGUF + Ollama Modelfile.

MODEL_DIR is a merged model ('assistant merge'), a base checkpoint or the output of 'assistant tiny', in InternLM2
or Llama layout. The GGUF runs in llama.cpp ('llama-cli -m FILE.gguf -cnv'), LM Studio (import the file) and
Ollama ('ollama create NAME -f FILE.Modelfile', written beside it).
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from myassistant.export import QUANTS, export_gguf

    quants = "; ".join(f"{name}: {help_}" for name, (_, _, help_) in QUANTS.items())
    parser = argparse.ArgumentParser(allow_abbrev=False, prog="assistant export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="model folder (merged weights; a LoRA run folder must be merged first)")
    parser.add_argument("--to", choices=("gguf",), default="gguf", help="output format (gguf)")
    parser.add_argument("--quant", choices=tuple(QUANTS), default="q8_0", type=str.lower,  # llama.cpp writes Q4_K_M
                        help=f"weight format (default q8_0). {quants}")
    parser.add_argument("--out", required=True, help="the .gguf file to write (complete or not at all)")
    parser.add_argument("--name", help="the model's name in the file (general.name, shown by llama.cpp and LM Studio; "
                                       "default: the assistant's name a merged folder records, else the folder's)")
    args = parser.parse_args(argv)
    result = export_gguf(args.model_dir, args.out, quant=args.quant, name=args.name)
    sys.stdout.write(f"{result.gguf}\n")
    return 0

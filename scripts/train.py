"""assistant train --config X.yaml [section.key=value ...] [--resume | --overwrite] [--deepspeed zero2]

Several GPUs: torchrun --nproc_per_node N -m myassistant.scripts.cli train --config X.yaml --deepspeed zero2
(or: accelerate launch -m myassistant.scripts.cli train ...).
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from myassistant.trainer.config import DEEPSPEED_PRESETS, describe_fields

    parser = argparse.ArgumentParser(
        allow_abbrev=False, prog="assistant train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (YAML sections, or section.key=value overrides):\n" + describe_fields())
    parser.add_argument("--config", help="YAML config (see 'assistant presets list')")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="e.g. train.max_steps=100")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.output_dir")
    again.add_argument("--overwrite", action="store_true", help="remove the run train.output_dir holds and train it "
                       "again from the start")
    parser.add_argument("--deepspeed", choices=DEEPSPEED_PRESETS, help="DeepSpeed ZeRO preset (sets train.deepspeed)")
    parser.add_argument("--check", action="store_true", help="validate the config, the paths it names and what it "
                        "needs of this machine (no model is loaded), print it resolved, and stop")
    args = parser.parse_intermixed_args(argv)  # overrides before or after the flags

    import yaml

    from myassistant.trainer.config import load_config

    overrides = list(args.overrides) + ([f"train.deepspeed={args.deepspeed}"] if args.deepspeed else [])
    cfg = load_config(args.config, overrides)
    if args.check:
        from myassistant.trainer.preflight import run_problems

        problems = run_problems(cfg, resume=args.resume, overwrite=args.overwrite)
        for problem in problems:  # as training says each, one line each
            sys.stderr.write(f"assistant train: error: {problem}\n")
        if problems:
            return 1
        sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))
        return 0

    from myassistant.trainer.train import train

    try:
        run_dir = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except KeyboardInterrupt:  # Ctrl-C: say what --resume would continue from
        from pathlib import Path

        from myassistant.trainer.resume import complete_checkpoints

        out = Path(cfg.train.output_dir).expanduser()
        done = complete_checkpoints(out) if out.is_dir() else []
        if done:
            sys.stderr.write(f"assistant train: the newest checkpoint is {done[-1]}; the same command with --resume "
                             "continues from it\n")
        raise
    sys.stdout.write(f"{run_dir}\n")
    return 0

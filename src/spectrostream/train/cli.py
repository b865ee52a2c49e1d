"""`spectrostream train` and `spectrostream export` subcommands.

spectrostream train CONFIG.toml [--data DIR ...] [--out RUN_DIR] [--resume] [--init MODEL]
torchrun --nproc_per_node N -m spectrostream train CONFIG.toml ...
spectrostream export RUN_DIR [RUN_DIR ...] -o model.safetensors [--fp16]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import DivergedError, exit_status
from .config import TrainConfig


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a SpectroStream model (GAN, EMA RVQ); torchrun for several GPUs",
        description="Train from a TOML config. Runs write TensorBoard logs, checkpoints and "
        "validation samples into RUN_DIR.",
    )
    p.add_argument("config", help="training config (TOML), e.g. configs/small.toml")
    p.add_argument(
        "--data",
        nargs="+",
        metavar="DIR",
        action="extend",
        help="audio folder(s), searched recursively (overrides [data] train)",
    )
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default: runs/<config name>)")
    p.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in RUN_DIR"
    )
    p.add_argument(
        "--init",
        metavar="MODEL",
        help="initialize the generator from an exported .safetensors model",
    )
    p.add_argument("--max-steps", type=int, metavar="N", help="override [optim] max_steps")
    p.add_argument(
        "--max-minutes",
        type=float,
        metavar="M",
        help="stop (after writing a checkpoint) once M minutes of wall time have passed",
    )
    p.set_defaults(func=run_train)

    e = subparsers.add_parser(
        "export", help="export a training run to a .safetensors model (weight norm folded)"
    )
    e.add_argument(
        "run",
        metavar="RUN_DIR",
        nargs="+",
        help="run folder (newest checkpoint) or a .pt file; several: their networks are "
        "averaged (runs from one start, or one run's last checkpoints), codebooks from the first",
    )
    e.add_argument("-o", "--output", required=True, help="output .safetensors path")
    e.add_argument("--fp16", action="store_true", help="store weights as float16")
    e.set_defaults(func=run_export)


@exit_status
def run_train(args: argparse.Namespace) -> int:
    from .loop import train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = TrainConfig.from_toml(args.config)
    if args.data:
        cfg = cfg.with_(data={"train": tuple(args.data)})
    if args.max_steps is not None:
        cfg = cfg.with_(optim={"max_steps": args.max_steps})
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    try:
        result = train(
            cfg,
            out,
            resume=args.resume,
            init=args.init,
            max_minutes=getattr(args, "max_minutes", None),
        )
    except DivergedError as e:  # exit 1, not 2: the config was fine, the run was not
        print(f"spectrostream: training stopped: {e}", file=sys.stderr)
        return 1
    print(
        f"trained to step {result.step}; last checkpoint: {result.last_checkpoint}", file=sys.stderr
    )
    return 0


@exit_status
def run_export(args: argparse.Namespace) -> int:
    from .export import export_average

    used = export_average(args.run, args.output, fp16=args.fp16)
    what = ", ".join(f"{path} (step {step})" for path, step in used)
    kind = "the average of " if len(used) > 1 else ""
    print(f"exported {kind}{what} -> {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spectrostream")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

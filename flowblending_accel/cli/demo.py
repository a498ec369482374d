"""The demo's subcommands: ``demo`` (the README's main job), ``train-demo`` and ``export-demo``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..demo.compared_schedules import SCHEDULES
from .common import add_threads_option, non_negative_number, positive_number, whole_number


def demo_schedule(text: str) -> str:
    """A schedule the demo compares: one of its names, or a schedule string (parsed here, once)."""
    from ..core.schedule import Schedule

    if text in SCHEDULES:
        return text
    try:
        return str(Schedule.parse(text))
    except (ValueError, TypeError) as error:
        raise argparse.ArgumentTypeError(f"{error} (or one of {', '.join(SCHEDULES)})") from None


def register(commands) -> None:
    _register_demo(commands)
    _register_train(commands)
    _register_export(commands)


def _register_demo(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="compare LLL, LSL, LSS, SLL and SSS on the embedded trained pair",
        description=(
            "Load the embedded large/small pair (trained on moving digits, shipped in the package), generate "
            "every schedule from the same prompts and noise, and write report.md (speed, FLOPs, quality), "
            "results.json, and a side-by-side grid (grid.gif, grid.png). No downloads; "
            "about a minute on a CPU."
        ),
    )
    demo.add_argument(
        "--output",
        type=Path,
        default=Path("flowblending-demo"),
        help="report folder (default ./flowblending-demo; an existing report is never overwritten "
        "silently: a new -N folder is used unless --overwrite)",
    )
    demo.add_argument("--overwrite", action="store_true", help="replace the report in --output")
    demo.add_argument(
        "--samples-per-prompt",
        type=whole_number(1),
        default=1,
        help="seeds per prompt; 40 prompts each (default 1 -> 40 clips per schedule)",
    )
    demo.add_argument(
        "--prompts", nargs="+", default=None, help="prompts like 'a 7 moving left' (default: all 40)"
    )
    demo.add_argument(
        "--schedules",
        nargs="+",
        type=demo_schedule,
        default=list(SCHEDULES),
        metavar="SCHEDULE",
        help=f"schedules to compare: {' '.join(SCHEDULES)} or any schedule, e.g. L20:60~0.0227-S-L20 "
        "(adaptive: each clip switches at its own step); LLL is always included as the reference",
    )
    demo.add_argument("--steps", type=whole_number(1), default=20, help="denoising steps (default 20)")
    demo.add_argument(
        "--guidance-scale", type=positive_number, default=3.0, help="classifier-free guidance (default 3.0)"
    )
    demo.add_argument(
        "--chunk-size", type=whole_number(1), default=10, help="clips per pipeline call (default 10)"
    )
    demo.add_argument(
        "--timing-seconds",
        type=non_negative_number,
        default=20.0,
        help="time box of the speed figures: interleaved rounds of every schedule after generating, at least "
        "five (default 20)",
    )
    demo.add_argument("--seed", type=whole_number(0), default=0, help="base seed (default 0)")
    add_threads_option(demo)
    demo.add_argument(
        "--pair", type=Path, default=None, help="a demo pair folder (default: the embedded one)"
    )
    demo.set_defaults(run=run_demo_command, extra="demo")


def _register_train(commands) -> None:
    train = commands.add_parser(
        "train-demo",
        help="train the demo pair (or its classifier); resumable",
        description=(
            "Train the large and small transformers (and the shared text encoder) on moving digits, "
            "same data and steps, resuming from OUTPUT/checkpoint.pt. Ctrl-C or SIGTERM saves a checkpoint. "
            "With --classifier, train the metrics classifier instead."
        ),
    )
    train.add_argument("--output", type=Path, default=Path("runs/demo-train"), help="checkpoint folder")
    train.add_argument(
        "--steps", type=whole_number(1), default=10000, help="total training steps (default 10000)"
    )
    train.add_argument("--threads", type=whole_number(1), default=1, help="torch CPU threads (default 1)")
    train.add_argument("--seed", type=whole_number(0), default=0)
    train.add_argument(
        "--until", type=whole_number(1), default=None, help="end this sitting at this step (resume later)"
    )
    train.add_argument(
        "--timestep-shift",
        type=positive_number,
        default=1.0,
        help="shift training timesteps toward high noise (default 1.0: plain logit-normal)",
    )
    train.add_argument(
        "--lr", type=positive_number, default=5e-4, help="peak AdamW learning rate (default 5e-4)"
    )
    train.add_argument(
        "--large-size",
        nargs="+",
        default=[],
        metavar="KEY=N",
        help="the large model's size, e.g. num_attention_heads=8 ffn_dim=768 (keys: num_layers, "
        "num_attention_heads, attention_head_dim, ffn_dim; default: the shipped 5 x 5 x 32, FFN 512)",
    )
    train.add_argument(
        "--placement",
        choices=("centre", "anywhere"),
        default="centre",
        help="where clips cross the canvas: along its centre line (default; the prompt fixes all but the "
        "writer's hand) or anywhere across their motion (the first shipped pair's data)",
    )
    train.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="PAIR",
        help="start a fresh run from an exported pair's weights (fine-tune), e.g. the shipped "
        "flowblending_accel/assets/demo_pair; same model sizes required",
    )
    train.add_argument("--classifier", action="store_true", help="train the metrics classifier into --output")
    train.set_defaults(run=run_train_command, extra="demo")


def _register_export(commands) -> None:
    export = commands.add_parser(
        "export-demo",
        help="write a training checkpoint as a diffusers pipeline folder",
        description="Export CHECKPOINT (EMA weights) as a WanPipeline "
        "folder with the small transformer beside it.",
    )
    export.add_argument("checkpoint", type=Path)
    export.add_argument("folder", type=Path)
    export.add_argument("--classifier", type=Path, default=None, help="classifier folder to ship alongside")
    export.add_argument("--raw", action="store_true", help="export the raw weights instead of the EMA")
    export.add_argument(
        "--train-command",
        action="append",
        default=None,
        help="a training command that produced the checkpoint, for the model card (repeatable)",
    )
    export.add_argument(
        "--card-results",
        type=Path,
        default=None,
        help="demo results.json to quote in the model card (the card is always written)",
    )
    export.add_argument(
        "--card-ablations",
        type=Path,
        default=None,
        help="ablations.md of benchmarks/demo_ablations.py to include in the model card",
    )
    export.add_argument(
        "--card-notes",
        type=Path,
        default=None,
        help="a hand-written markdown file (e.g. the reading of the ablations) appended to the model card",
    )
    export.set_defaults(run=run_export_command, extra="demo")


def run_demo_command(args: argparse.Namespace) -> int:
    from ..demo.data import all_prompts, parse_prompt
    from ..demo.generate import DemoSettings
    from ..demo.report import speed_warning
    from ..demo.run import run_demo
    from ..support.files import check_output_folder

    prompts = tuple(args.prompts or all_prompts())
    for prompt in prompts:
        parse_prompt(prompt)  # a prompt outside the demo's language fails here, before anything loads
    clips = len(prompts) * args.samples_per_prompt
    if clips < 2:
        raise ValueError(
            f"--prompts gives {clips} clip per schedule, but the Fréchet distance needs at least 2: add a "
            "prompt or pass --samples-per-prompt 2."
        )
    check_output_folder(args.output)
    schedules = tuple(dict.fromkeys(["LLL", *args.schedules]))
    settings = DemoSettings(
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        samples_per_prompt=args.samples_per_prompt,
        chunk_size=args.chunk_size,
        base_seed=args.seed,
        prompts=prompts,
        schedules=schedules,
        timing_seconds=args.timing_seconds,
    )
    folder, rows = run_demo(settings, args.output, args.pair, args.threads, args.overwrite, args.command_line)
    if not rows:  # a non-zero rank under torchrun: rank 0 writes and prints
        return 0
    print((folder / "report.md").read_text())
    print(f"report, results.json and grid written to {folder}/")
    context = json.loads((folder / "results.json").read_text())["context"]
    warning = speed_warning(rows, context)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def large_size(pairs: list[str]) -> dict[str, int]:
    """``["num_attention_heads=8", ...]`` as config overrides of the large model, checked."""
    from ..demo.models import LARGE

    sizes = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in LARGE or not value.isdigit() or int(value) < 1:
            raise ValueError(
                f"--large-size {pair!r}: write KEY=N with N a positive whole number and KEY one of "
                f"{', '.join(LARGE)}."
            )
        sizes[key] = int(value)
    return sizes


def run_train_command(args: argparse.Namespace) -> int:
    from ..support.files import check_output_folder

    sizes = large_size(args.large_size)
    check_output_folder(args.output)
    if args.init_from is not None and not (args.init_from / "model_index.json").exists():
        raise ValueError(
            f"--init-from {args.init_from}: not an exported pair (no model_index.json); pass a folder "
            "written by `flowblending-accel export-demo`."
        )
    if args.classifier:
        import torch

        from ..demo.classifier import save_classifier, train_classifier

        torch.set_num_threads(args.threads)
        model, report = train_classifier(seed=args.seed)
        save_classifier(model, report, args.output)
        print(report)
        return 0
    from ..demo.train import TrainConfig, train_pair

    config = TrainConfig(
        steps=args.steps,
        threads=args.threads,
        seed=args.seed,
        timestep_shift=args.timestep_shift,
        lr=args.lr,
        large_overrides=sizes,
        init_from=str(args.init_from or ""),
        placement=args.placement,
    )
    trainer = train_pair(config, args.output, until=args.until)
    print(f"step {trainer.step}; checkpoint {trainer.checkpoint_path}")
    return 0


def run_export_command(args: argparse.Namespace) -> int:
    import torch

    from ..demo.card import write_card
    from ..demo.export import export_pair

    folder = export_pair(args.checkpoint, args.folder, args.classifier, use_ema=not args.raw)
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    config = state["config"]
    commands = {
        "train": args.train_command
        or [
            f"flowblending-accel train-demo --output {args.checkpoint.parent} --steps {config['steps']} "
            f"--threads {config['threads']} --seed {config['seed']} "
            f"--timestep-shift {config.get('timestep_shift', 1.0)}"
        ],
        "export": args.command_line,
        "classifier": "flowblending-accel train-demo --classifier --output runs/classifier --threads 2",
    }
    write_card(
        folder,
        args.checkpoint.parent / "log.jsonl",
        config,
        args.card_results,
        commands,
        args.card_ablations,
        args.card_notes,
    )
    print(folder)
    return 0

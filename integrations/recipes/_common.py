"""Shared command-line plumbing for the recipes (public API only)."""

from __future__ import annotations

import argparse

import torch

from flowblending_accel import flowblending_stats
from flowblending_accel.accelerators import spec_help


def parser(
    description: str, pipeline: str, small: str, schedule: str = "L40-S40-L20"
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--pipeline", default=pipeline, help=f"pipeline folder or hub id (default {pipeline})")
    p.add_argument("--small", default=small, help=f"small model folder or hub id (default {small})")
    p.add_argument("--schedule", default=schedule, help=f"FlowBlending stages (default {schedule})")
    p.add_argument("--stack", nargs="*", default=[], help=f"accelerators: {spec_help()}")
    p.add_argument("--prompt", default="A polar bear playing guitar")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--output", default="flowblending.mp4")
    return p


def report(pipe) -> None:
    stats = flowblending_stats(pipe)
    if stats is not None:
        print(stats.table())

"""Which process this is in a multi-process run (torchrun/accelerate set ``RANK``/``WORLD_SIZE``), and how
``audiotune train --nproc N`` re-launches itself under torchrun. Light (no torch): the CLI imports it."""

from __future__ import annotations

import os
import sys


def rank_and_world_size() -> tuple[int, int]:
    """(global rank, number of processes); (0, 1) outside a launcher."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank_and_world_size()[0] == 0


def launched() -> bool:
    """True inside a process that torchrun/accelerate started (it must not launch again)."""
    return "LOCAL_RANK" in os.environ


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """``python -m torch.distributed.run`` running ``audiotune`` with ``argv`` (``--nproc`` removed) ``nproc`` times."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        args.append(arg)
    # --standalone: a single-node rendezvous on a free local port chosen by torchrun itself (no port race).
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "audiotune", *args]

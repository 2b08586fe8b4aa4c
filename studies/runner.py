"""The one runner every study goes through: grid → cached, resumable runs → one combined DataFrame.

A study is data: a name, a function from a scale (``"tiny"`` for tests, ``"quick"`` for CPU figures in minutes,
``"paper"`` for the paper's model, data, epochs and hyperparameters with fewer seeds or configurations so that it fits a
few CPU hours, ``"full"`` for the papers' whole grid, for GPUs) to a list of run configs, and a function that executes
one config. The runner skips configs whose results are cached (same key: config, study version and local data, see
:mod:`studies.store`) and intact (a damaged cache entry is recomputed after a warning naming the file), executes the
rest, and writes each run atomically as it finishes, so an interrupted study resumes with the runs that finished. The
combined results of a scale are written to ``<root>/<study>/<scale>.csv`` (and the study's notes, such as runs skipped
for missing data, to ``<scale>.notes.txt``), which the figure scripts read.

Under ``torchrun`` (a process group opened by :func:`landscape.distributed.process_group`) the configs are dealt round
robin over the ranks, one run at a time per rank, each on its own GPU for ``device="cuda"``; the finished runs are
gathered and rank 0 writes the combined files, which every rank then returns.

``amp=True`` trains every run with bfloat16 autocast (:func:`studies.train.mixed_precision` is set around each run,
so a study's ``train`` calls follow it without passing it along; ``ctx.amp`` says so to a run that trains otherwise).
Mixed-precision runs are cached under their own keys (the store version gets a ``+amp`` suffix, which leaves the keys
of full-precision runs unchanged), so the two never share a cache entry; the notes file says that amp was on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from landscape import distributed
from landscape.files import atomic_write
from studies.data import why_unavailable
from studies.store import RunStore, write_frame
from studies.train import mixed_precision


@dataclass(frozen=True)
class Context:
    """What a study's run function may use besides its config."""

    store: RunStore
    device: str = "cpu"
    data_dir: str | None = None
    progress: bool = True
    notes: list[str] = field(default_factory=list)
    amp: bool = False

    def note(self, message: str) -> None:
        """Record a message for the user (e.g. a run skipped because its data is absent); printed and saved."""
        self.notes.append(message)
        tqdm.write(f"[{self.store.root.name}] {message}")

    def dataset_or_digits(self, dataset: str, runs: str) -> str:
        """``dataset`` when its files are found, else the embedded ``"digits"`` with a note naming ``runs`` and why."""
        reason = why_unavailable(dataset, self.data_dir)
        if reason is None:
            return dataset
        self.note(f"The {runs} runs use the embedded digits data instead of {dataset}. {reason}")
        return "digits"


@dataclass(frozen=True)
class Study:
    """A declarative experiment: ``grid(scale, ctx)`` lists configs, ``run(config, ctx)`` executes one.

    ``grid`` may leave out configs whose data is absent; it then says so with ``ctx.note``. ``scales`` lists the
    scales the study defines (the ``"paper"`` scale only where the paper's experiment fits a CPU).
    """

    name: str
    title: str
    grid: Callable[[str, Context], list[dict[str, Any]]]
    run: Callable[[dict[str, Any], Context], pd.DataFrame]
    version: str = "1"
    scales: tuple[str, ...] = ("tiny", "quick", "full")


def default_root() -> Path:
    """Where runs are stored: ``$VALLEY_RUNS``, else ``runs/`` in the current folder."""
    return Path(os.environ.get("VALLEY_RUNS", "runs"))


def resolve_device(device: str | None) -> str:
    """``None`` or ``"auto"`` picks CUDA when available; an explicit ``"cuda"`` without a GPU is an error."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but torch sees no CUDA device")
    return device


def run_study(
    study: Study,
    scale: str = "quick",
    *,
    root: str | os.PathLike | None = None,
    device: str | None = "cpu",
    data_dir: str | None = None,
    force: bool = False,
    progress: bool = True,
    amp: bool = False,
) -> pd.DataFrame:
    """Execute (or load from the cache) every run of ``study`` at ``scale`` and return the combined results.

    Each run's frame gets the config's scalar entries as columns (unless the run set them itself) and a ``run``
    column with its config hash. ``force=True`` recomputes cached runs; ``amp=True`` trains with bfloat16 autocast
    (cached apart from full-precision runs).
    """
    if scale not in study.scales:
        raise ValueError(f"Invalid scale {scale!r} for {study.name}; choose one of {', '.join(study.scales)}")
    if not isinstance(amp, bool):
        raise TypeError(f"amp must be a bool, got {type(amp).__name__}")
    root = Path(root) if root is not None else default_root()
    store = RunStore(root, study.name, f"{study.version}+amp" if amp else study.version, data_dir)
    ctx = Context(store, distributed.local_device(resolve_device(device)), data_dir, progress, amp=amp)
    if amp:
        ctx.notes.append("Trained with bfloat16 autocast (amp); evaluation and curvature in full precision.")
    configs = study.grid(scale, ctx)
    grid_notes = len(ctx.notes)  # the same on every rank; notes made by runs follow
    frames = {}
    for i in tqdm(distributed.shard(range(len(configs))), desc=study.name, disable=not progress, unit="run"):
        config = configs[i]
        frame = None if force else store.load(config)
        if frame is None:
            start = time.perf_counter()
            with mixed_precision(amp), store.recording(config):
                frame = study.run(config, ctx)
                store.save(config, frame, ctx.device, time.perf_counter() - start)
        frames[i] = _with_config(frame, config, store.run_dir(config).name)
    parts = distributed.all_gather_objects((frames, ctx.notes[grid_notes:]))
    frames = {i: frame for part, _ in parts for i, frame in part.items()}
    notes = ctx.notes[:grid_notes] + [note for _, run_notes in parts for note in run_notes]
    combined = pd.concat([frames[i] for i in sorted(frames)], ignore_index=True) if frames else pd.DataFrame()
    if distributed.is_main():
        write_frame(root / study.name / f"{scale}.csv", combined)
        atomic_write(root / study.name / f"{scale}.notes.txt", "".join(f"{n}\n" for n in notes))
    distributed.barrier()
    return combined


def _with_config(frame: pd.DataFrame, config: dict[str, Any], run: str) -> pd.DataFrame:
    frame = frame.copy()
    for key, value in config.items():
        if key not in frame.columns and isinstance(value, (str, int, float, bool)):
            frame[key] = value
    frame["run"] = run
    return frame

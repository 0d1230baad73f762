"""``fxai roar``: prepare, retrain with local workers (or a ``torchrun`` group), report."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable

import torch

from . import dist, pipeline, report

STAGES = ("all", "prepare", "work", "report")


def _worker(out, device, threads, stale_after, progress):
    torch.set_num_threads(threads)
    pipeline.work(out, device=device, stale_after=stale_after, progress=progress)


def _extractor(out, config, part, device, threads, progress):
    torch.set_num_threads(threads)
    pipeline.extract_part(out, config, part, device=device, progress=progress)


def _spawn(target, args_of, workers: int, what: str) -> None:
    """``target(*args_of(i))`` for ``i < workers``: share 0 in this process, the others in new processes
    (each new interpreter costs seconds of imports, so this process does not sit idle waiting)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=args_of(i)) for i in range(1, workers)]
    for p in procs:
        p.start()
    threads = torch.get_num_threads()
    try:
        target(*args_of(0))
    finally:
        torch.set_num_threads(threads)
        for p in procs:
            p.join()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {workers - 1} spawned {what} processes failed (exit codes {failed}); "
                           "run again to resume")


def run(out: str = "fxai-roar", config: pipeline.RoarConfig = pipeline.RoarConfig(), *, device: str = "cpu",
        workers: int | None = None, threads: int | None = None, stale_after: float = 600.0, only: str = "all",
        progress: bool = True, log: Callable[[str], None] = print) -> dict | None:
    """Run the ROAR/KAR benchmark in the folder ``out`` (resumable) and return the report's data.

    ``workers`` local processes (this one and ``workers - 1`` spawned ones, each on ``threads`` threads,
    default ``cores // workers``) share the maps and the grid (default: one per CPU core up to 4 on the
    CPU, one on a GPU); under ``torchrun`` the launched ranks form one data-parallel worker instead.
    ``only`` runs a single stage: ``"prepare"`` (data, model, maps, grid), ``"work"`` (take jobs until none
    is left, e.g. on more machines sharing ``out``) or ``"report"``.

    Example:
        >>> summary = fxai.roar.run("roar-quick", fxai.roar.RoarConfig(**fxai.roar.QUICK), progress=False)
    """
    if only not in STAGES:
        raise ValueError(f"only must be one of {', '.join(map(repr, STAGES))}; got {only!r}")
    if workers is None:
        workers = 1 if torch.device(device).type != "cpu" else max(1, min(4, os.cpu_count() or 1))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    started = time.perf_counter()
    local = workers > 1 and not dist.launched()
    threads = threads or (max(1, (os.cpu_count() or 1) // workers) if local else None)
    if only in ("all", "prepare"):
        if local:  # the maps' shards shared by the local processes, then the grid
            pipeline.prepare(out, config, device=device, progress=progress, log=log, maps=False)
            _spawn(_extractor, lambda i: (out, config, (i, workers), device, threads, progress), workers,
                   "extraction")
        pipeline.prepare(out, config, device=device, progress=progress, log=log)
    if only in ("all", "work"):
        if local:
            _spawn(_worker, lambda i: (out, device, threads, stale_after, progress), workers, "worker")
        else:
            if threads:
                torch.set_num_threads(threads)
            pipeline.work(out, device=device, stale_after=stale_after, progress=progress, log=log)
    if only in ("all", "report") and dist.init()[0] == 0:
        summary = report.write(out)
        summary["seconds_wall"] = time.perf_counter() - started
        log(f"report written to {os.path.join(os.path.abspath(out), 'report')} (summary.md, accuracy.png, "
            f"table.md, results.json)")
        return summary
    return None

"""A grid of independent jobs in a folder, shared by any number of workers through the file system.

Layout::

    grid.json              {"settings": {...}, "jobs": [{"id": ..., ...}, ...]}, written once
    claims/<id>.<n>        the n-th claim of job <id> (created exclusively; its mtime is the owner's heartbeat)
    results/<id>.json      the job's result, written to a temporary file and renamed into place

A worker takes a job by creating ``claims/<id>.0`` with ``O_CREAT | O_EXCL``: of two workers, exactly one
succeeds. The owner touches its claim while it works (:meth:`Claim.beat`); a claim made on this machine by
a process that no longer exists, or one whose heartbeat is older than ``stale_after`` seconds (a worker on
another machine that stopped), belongs to a dead worker, and the next worker takes the job over by creating
``claims/<id>.<n+1>``, again exclusively, so one taker wins. A job whose result exists is done and never
run again. This needs only atomic exclusive creation and rename, which local file systems and NFS (v3 and
later) provide, so workers may run on one machine or on many that share the folder.
"""

from __future__ import annotations

import json
import os
import platform
import time

from .._core.files import write_json

GRID = "grid.json"


def write_grid(folder: str, jobs: list[dict], settings: dict) -> dict:
    """Write the grid once; a folder holding another grid (other jobs or settings) is refused.

    Every job is a dict with a unique string ``"id"`` (letters, digits, ``-_.``)."""
    ids = [j.get("id") for j in jobs]
    bad = [i for i in ids if not isinstance(i, str) or not i or not all(c.isalnum() or c in "-_." for c in i)]
    if bad:
        raise ValueError(f"job ids must be non-empty strings of letters, digits, '-', '_', '.'; got {bad[0]!r}")
    if len(set(ids)) != len(ids):
        raise ValueError("job ids must be unique")
    grid = {"settings": settings, "jobs": jobs}
    os.makedirs(os.path.join(folder, "claims"), exist_ok=True)
    os.makedirs(os.path.join(folder, "results"), exist_ok=True)
    path = os.path.join(folder, GRID)
    if os.path.exists(path):
        found = read_grid(folder)
        if json.loads(json.dumps(grid, sort_keys=True)) != found:
            raise ValueError(f"{path} holds another grid (other jobs or settings); use another output folder "
                             "or delete it")
        return found
    write_json(path, grid)
    return read_grid(folder)


def read_grid(folder: str) -> dict:
    """The grid's job list (``grid.json`` in ``folder``)."""
    path = os.path.join(folder, GRID)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no job grid in {folder}: {path} is missing")
    with open(path) as fh:
        return json.load(fh)


def result_path(folder: str, job_id: str) -> str:
    """Where job ``job_id``'s result is written."""
    return os.path.join(folder, "results", f"{job_id}.json")


def done(folder: str, job_id: str) -> bool:
    """Whether job ``job_id`` has its result."""
    return os.path.exists(result_path(folder, job_id))


def write_result(folder: str, job_id: str, result: dict) -> None:
    """Write job ``job_id``'s result atomically (a finished job is never half-written)."""
    write_json(result_path(folder, job_id), result)


def read_results(folder: str) -> dict[str, dict]:
    """``{job id: result}`` of every finished job."""
    out = {}
    for job in read_grid(folder)["jobs"]:
        path = result_path(folder, job["id"])
        if os.path.exists(path):
            with open(path) as fh:
                out[job["id"]] = json.load(fh)
    return out


class Claim:
    """A worker's hold on a job: :meth:`beat` refreshes it, :meth:`release` drops it."""

    def __init__(self, path: str):
        self.path = path

    def beat(self) -> None:
        try:
            os.utime(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


def _claims(folder: str, job_id: str) -> list[tuple[int, str]]:
    prefix = f"{job_id}."
    found = []
    for name in os.listdir(os.path.join(folder, "claims")):
        tail = name[len(prefix):]
        if name.startswith(prefix) and tail.isdigit():
            found.append((int(tail), os.path.join(folder, "claims", name)))
    return sorted(found)


def owner_gone(path: str) -> bool:
    """Whether the claim at ``path`` was made on this machine by a process that no longer exists.

    Such a claim is taken over at once (a killed run resumes as fast as it starts); a claim made on
    another machine can only go stale (no heartbeat for ``stale_after`` seconds)."""
    try:
        with open(path) as fh:
            owner = json.load(fh)
        pid = int(owner["pid"])
    except (OSError, ValueError, KeyError, TypeError):   # released, or being written just now
        return False
    if owner.get("host") != platform.node() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:                              # exists, under another user
        return False
    return False


def try_claim(folder: str, job_id: str, *, worker: str, stale_after: float) -> Claim | None:
    """Take job ``job_id``: a :class:`Claim`, or ``None`` when it is done or held by a live worker."""
    if done(folder, job_id):
        return None
    claims = _claims(folder, job_id)
    generation = 0
    if claims:
        generation, path = claims[-1]
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:  # released just now: finished, or given up
            age = float("inf")
        if age < stale_after and not owner_gone(path):
            return None
        generation += 1
    path = os.path.join(folder, "claims", f"{job_id}.{generation}")
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    with os.fdopen(fd, "w") as fh:
        json.dump({"worker": worker, "host": platform.node(), "pid": os.getpid(), "time": time.time()}, fh)
    if done(folder, job_id):  # finished between the check and the claim
        os.remove(path)
        return None
    return Claim(path)


def worker_name() -> str:
    """This worker's name in claims: host and process id."""
    return f"{platform.node()}-{os.getpid()}"


def pending(folder: str) -> list[dict]:
    """The jobs of the grid that have no result yet."""
    return [j for j in read_grid(folder)["jobs"] if not done(folder, j["id"])]


def next_job(folder: str, *, worker: str, stale_after: float, poll: float = 1.0, wait: bool = True):
    """``(job, claim)`` of the first job this worker can take, ``None`` when every job is done.

    With ``wait``, a worker that finds every remaining job held by others polls every ``poll`` seconds
    until they finish or their claims go stale; without it, it returns ``None`` at once.
    """
    while True:
        remaining = pending(folder)
        if not remaining:
            return None
        for job in remaining:
            claim = try_claim(folder, job["id"], worker=worker, stale_after=stale_after)
            if claim is not None:
                return job, claim
        if not wait:
            return None
        time.sleep(poll)

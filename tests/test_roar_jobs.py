"""The job grid: exclusive claims, stale takeover, workers in several processes, a killed worker, DDP."""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time

import pytest

import fxai
from fxai.roar import jobs, pipeline
from fxai.roar.train import TrainConfig

SRC = os.path.join(os.path.dirname(__file__), "..", "src")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
TINY = pipeline.RoarConfig(train_count=64, test_count=32, size=16, classes=3, methods=("random", "sobel"),
                           fractions=(0.5,), modes=("roar",), fills=("mean",), control_fills=(), repeats=2,
                           train=TrainConfig(epochs=1, width=4, batch_size=16))


def test_claims_are_exclusive_and_stale_ones_are_taken_over(tmp_path):
    folder = str(tmp_path)
    jobs.write_grid(folder, [{"id": "a"}, {"id": "b"}], {"x": 1})
    first = jobs.try_claim(folder, "a", worker="w1", stale_after=60)
    assert first is not None and jobs.try_claim(folder, "a", worker="w2", stale_after=60) is None
    old = time.time() - 120
    os.utime(first.path, (old, old))  # its worker stopped beating
    second = jobs.try_claim(folder, "a", worker="w2", stale_after=60)
    assert second is not None and second.path.endswith("a.1")
    assert jobs.try_claim(folder, "a", worker="w3", stale_after=60) is None
    jobs.write_result(folder, "a", {"ok": 1})
    second.release()
    assert jobs.try_claim(folder, "a", worker="w3", stale_after=0) is None  # done jobs are never run again
    assert [j["id"] for j in jobs.pending(folder)] == ["b"]
    assert jobs.read_results(folder) == {"a": {"ok": 1}}
    job, claim = jobs.next_job(folder, worker="w3", stale_after=60)
    assert job["id"] == "b" and jobs.next_job(folder, worker="w4", stale_after=60, wait=False) is None
    claim.beat()
    assert jobs.write_grid(folder, [{"id": "a"}, {"id": "b"}], {"x": 1})["settings"] == {"x": 1}
    with pytest.raises(ValueError, match="another grid"):
        jobs.write_grid(folder, [{"id": "a"}], {"x": 1})
    with pytest.raises(ValueError, match="unique"):
        jobs.write_grid(str(tmp_path / "g"), [{"id": "a"}, {"id": "a"}], {})
    with pytest.raises(ValueError, match="job ids"):
        jobs.write_grid(str(tmp_path / "h"), [{"id": "a/b"}], {})


def test_a_claim_of_a_gone_process_on_this_machine_is_taken_at_once_others_wait(tmp_path):
    folder = str(tmp_path)
    jobs.write_grid(folder, [{"id": "a"}, {"id": "b"}], {"x": 1})
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    for job, host in (("a", platform.node()), ("b", platform.node() + "-elsewhere")):
        with open(os.path.join(folder, "claims", f"{job}.0"), "w") as fh:
            json.dump({"worker": "w0", "host": host, "pid": gone.pid, "time": time.time()}, fh)
    taken = jobs.try_claim(folder, "a", worker="w1", stale_after=600)
    assert taken is not None and taken.path.endswith("a.1")
    assert jobs.try_claim(folder, "b", worker="w1", stale_after=600) is None        # another machine: wait
    alive = jobs.try_claim(folder, "a", worker="w2", stale_after=600)               # this process holds a.1
    assert alive is None


def test_job_list_and_config_guard(tmp_path):
    ids = [j["id"] for j in pipeline.job_list(TINY)]
    assert ids == ["baseline-r0", "roar-random-mean-0.5-r0", "roar-sobel-mean-0.5-r0",
                   "baseline-r1", "roar-random-mean-0.5-r1", "roar-sobel-mean-0.5-r1"]
    both = pipeline.RoarConfig(methods=("gradient", "random"), fractions=(0.5,), repeats=1)
    assert [j["id"] for j in pipeline.job_list(both)][1:] == [
        "roar-gradient-mean-0.5-r0", "kar-gradient-mean-0.5-r0", "roar-random-mean-0.5-r0",
        "kar-random-mean-0.5-r0", "roar-random-noisy_linear-0.5-r0", "kar-random-noisy_linear-0.5-r0"]
    pipeline.prepare(str(tmp_path), TINY, progress=False, log=lambda s: None)
    with pytest.raises(ValueError, match="other settings"):
        pipeline.prepare(str(tmp_path), pipeline.RoarConfig(**{**TINY.__dict__, "repeats": 3}), progress=False)


_WORKER = r"""
import sys, time, torch
torch.set_num_threads(1)
from fxai.roar import pipeline
if sys.argv[2] == "slow":  # jobs that take long enough to be killed in flight
    run_job = pipeline.run_job
    def slow(*a, **k):
        time.sleep(1.0)
        return run_job(*a, **k)
    pipeline.run_job = slow
if sys.argv[4:] == ["wait"]:  # imported: wait for the go, so that both workers start together
    print("READY", flush=True)
    sys.stdin.readline()
print("RAN", pipeline.work(sys.argv[1], stale_after=float(sys.argv[3]), poll=0.2, progress=False))
"""


def _worker(tmp_path, out, mode="fast", stale="60", launcher=None, wait=False):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen((launcher or [sys.executable]) + [str(script), str(out), mode, stale]
                            + (["wait"] if wait else []), env=env, stdin=subprocess.PIPE if wait else None,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _accuracies(out):
    return {k: r["accuracy"] for k, r in jobs.read_results(os.path.join(out, "grid")).items()}


@pytest.mark.slow
def test_two_worker_processes_share_the_grid(tmp_path, monkeypatch):
    """This process and another one take jobs from the same grid at the same time."""
    out = tmp_path / "run"
    pipeline.prepare(str(out), TINY, progress=False, log=lambda s: None)
    other = _worker(tmp_path, out, mode="slow", wait=True)
    seen = []
    while not seen or seen[-1].strip() != "READY":
        seen.append(other.stdout.readline())
        assert seen[-1] or other.poll() is None, "".join(seen)
    run_job = pipeline.run_job

    def slow(*args, **kwargs):
        time.sleep(1.0)
        return run_job(*args, **kwargs)

    monkeypatch.setattr(pipeline, "run_job", slow)
    other.stdin.write("go\n")
    other.stdin.flush()
    here = pipeline.work(str(out), stale_after=60, poll=0.2, progress=False)
    output = other.communicate(timeout=240)[0]
    assert other.returncode == 0, output
    ran = [here, int(output.split("RAN")[-1])]
    results = jobs.read_results(str(out / "grid"))
    assert sum(ran) == 6 and len(results) == 6  # every job once, none twice
    assert min(ran) >= 1 and len({r["worker"] for r in results.values()}) == 2
    assert not os.listdir(out / "grid" / "claims")


@pytest.mark.slow
def test_a_killed_worker_is_resumed_to_the_same_results(tmp_path):
    ref = tmp_path / "ref"
    pipeline.prepare(str(ref), TINY, progress=False, log=lambda s: None)
    pipeline.work(str(ref), progress=False)
    out = tmp_path / "cut"
    pipeline.prepare(str(out), TINY, progress=False, log=lambda s: None)
    p = _worker(tmp_path, out, mode="slow")
    deadline = time.time() + 180
    while len(jobs.read_results(str(out / "grid"))) < 2:
        assert time.time() < deadline and p.poll() is None, p.stdout.read() if p.poll() is not None else ""
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    claims = os.listdir(out / "grid" / "claims")
    assert len(claims) <= 1, claims  # the job in flight, if the kill came after its claim
    # the free ones and the dead worker's (same machine, its process gone): taken at once, no stale wait
    assert pipeline.work(str(out), stale_after=600, poll=0.1, progress=False) == 4
    assert _accuracies(out) == _accuracies(ref)
    report = fxai.roar.write_report(str(out))
    assert report["finished"] == 6 and not report["errors"]
    summary = (out / "report" / "summary.md").read_text()
    assert "(64 training and 32 test images of 16×16)" in summary


@pytest.mark.slow
def test_torchrun_data_parallel_worker(tmp_path):
    out = tmp_path / "ddp"
    pipeline.prepare(str(out), TINY, progress=False, log=lambda s: None)
    p = _worker(tmp_path, out, launcher=[TORCHRUN, "--standalone", "--nproc_per_node=2"])
    output = p.communicate(timeout=300)[0]
    assert p.returncode == 0, output
    results = jobs.read_results(str(out / "grid"))
    assert len(results) == 6 and all(r["world_size"] == 2 for r in results.values())
    # both ranks took part in every job (each prints RAN and its job count; two processes share the pipe, so
    # their words may interleave)
    assert output.count("RAN") == 2 and len(re.findall(r"(?<!\d)6(?!\d)", output)) >= 2
    with open(out / "grid" / "results" / "baseline-r0.json") as fh:
        assert 0.0 <= json.load(fh)["accuracy"] <= 1.0

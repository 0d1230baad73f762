"""Dataset-wide extraction: values equal direct calls, the manifest guards the folder, runs resume,
and two torchrun processes write the same bytes as one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import fxai, fxai.models
from fxai.roar import extraction, methods
from fxai.roar.datasets import TensorData

SRC = os.path.join(os.path.dirname(__file__), "..", "src")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def _model(seed=0):
    torch.manual_seed(seed)
    return fxai.models.SmallCNN(3, width=4).eval()


def _data(n=10, size=16):
    return fxai.data.Shapes(n, seed=1, size=size, classes=3)


def _files(folder):
    return sorted(f for f in os.listdir(folder) if f.startswith("shard-"))


def test_maps_equal_direct_calls_and_manifest(tmp_path):
    model_fn, params = fxai.functional(_model())
    data = _data()
    manifest = fxai.roar.extract(model_fn, params, data, "gradient", str(tmp_path), shard_size=4, batch_size=3,
                                 progress=False)
    assert _files(tmp_path) == ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"]
    images, labels, masks = data.batch(range(10))
    want = fxai.gradient(model_fn, params, images, labels).abs().sum(1)
    got = fxai.roar.load_maps(str(tmp_path))
    assert got.dtype == torch.float32 and got.shape == (10, 16, 16)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert manifest["method"] == "gradient" and manifest["reduce"] == "abs_sum" and manifest["target"] == "label"
    assert manifest["params_sha256"] == fxai.roar.params_hash(params)
    assert manifest["dataset"]["length"] == 10 and manifest["dataset"]["image_shape"] == [3, 16, 16]
    assert set(manifest["versions"]) >= {"fxai", "torch", "safetensors"}
    with open(tmp_path / "manifest.json") as fh:
        assert json.load(fh) == manifest
    from safetensors import safe_open
    with safe_open(str(tmp_path / "shard-00001.safetensors"), framework="pt") as fh:
        assert fh.get_tensor("index").tolist() == [4, 5, 6, 7]


def test_float16_cam_and_controls(tmp_path):
    model_fn, params = fxai.functional(_model())
    data = _data(6)
    images, labels, masks = data.batch(range(6))
    fxai.roar.extract(model_fn, params, data, "grad_cam", str(tmp_path / "cam"), options={"layer": "features"},
                      dtype="float16", progress=False)
    want = fxai.grad_cam(model_fn, params, images, labels, layer="features")
    assert fxai.roar.load_maps(str(tmp_path / "cam")).dtype == torch.float16
    torch.testing.assert_close(fxai.roar.load_maps(str(tmp_path / "cam")), want.half())
    fxai.roar.extract(model_fn, params, data, "ground_truth", str(tmp_path / "gt"), progress=False)
    assert torch.equal(fxai.roar.load_maps(str(tmp_path / "gt")), masks.float())
    fxai.roar.extract(model_fn, params, data, "sobel", str(tmp_path / "sobel"), progress=False)
    torch.testing.assert_close(fxai.roar.load_maps(str(tmp_path / "sobel")), methods.sobel_map(images))


def test_transform_spec_uses_the_shard_key(tmp_path):
    model_fn, params = fxai.functional(_model())
    data = _data(5)
    opts = {"samples": 3, "sigma": 0.1}
    fxai.roar.extract(model_fn, params, data, "smoothgrad_sq( gradient )", str(tmp_path), options=opts, key=7,
                      shard_size=3, progress=False)
    images, labels, _ = data.batch(range(5))
    sg = fxai.smoothgrad_sq(fxai.gradient, samples=3, sigma=0.1)
    want = torch.cat([sg(model_fn, params, images[:3], labels[:3], key=extraction.shard_key(7, 0)),
                      sg(model_fn, params, images[3:], labels[3:], key=extraction.shard_key(7, 1))]).abs().sum(1)
    torch.testing.assert_close(fxai.roar.load_maps(str(tmp_path)), want, rtol=1e-5, atol=1e-8)
    assert extraction.read_manifest(str(tmp_path))["method"] == "smoothgrad_sq(gradient)"


def test_other_requests_are_refused(tmp_path):
    model_fn, params = fxai.functional(_model())
    data = _data(4)
    fxai.roar.extract(model_fn, params, data, "gradient", str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="method"):
        fxai.roar.extract(model_fn, params, data, "guided_backprop", str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="params_sha256"):
        fxai.roar.extract(*fxai.functional(_model(seed=1)), data, "gradient", str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="dtype"):
        fxai.roar.extract(model_fn, params, data, "gradient", str(tmp_path), dtype="float16", progress=False)
    with pytest.raises(ValueError, match="quantised"):
        fxai.roar.extract(model_fn, params, data, "gradient", str(tmp_path / "x"), dtype="uint8", progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        fxai.roar.extract(model_fn, params, data, "gradientt", str(tmp_path / "y"), progress=False)
    with pytest.raises(ValueError, match="unknown transform"):
        fxai.roar.extract(model_fn, params, data, "blur(gradient)", str(tmp_path / "z"), progress=False)


def test_resume_recomputes_only_missing_shards(tmp_path):
    model_fn, params = fxai.functional(_model())
    data = _data(10)
    fxai.roar.extract(model_fn, params, data, "gradient", str(tmp_path), shard_size=4, progress=False)
    first = {f: os.stat(tmp_path / f) for f in _files(tmp_path)}
    full = fxai.roar.load_maps(str(tmp_path))
    os.remove(tmp_path / "shard-00001.safetensors")
    with pytest.raises(FileNotFoundError, match="1 of 3 shards missing"):
        fxai.roar.load_maps(str(tmp_path))
    time.sleep(0.01)
    fxai.roar.extract(model_fn, params, data, "gradient", str(tmp_path), shard_size=4, progress=False)
    for f in ("shard-00000.safetensors", "shard-00002.safetensors"):
        assert os.stat(tmp_path / f).st_mtime_ns == first[f].st_mtime_ns and os.stat(tmp_path / f).st_ino == first[f].st_ino
    assert torch.equal(fxai.roar.load_maps(str(tmp_path)), full)


def test_user_inputs_untouched(tmp_path):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model_fn, params = fxai.functional(model)
    images = torch.rand(4, 3, 16, 16)
    copy = images.clone()
    fxai.roar.extract(model_fn, params, TensorData(images, torch.tensor([0, 1, 2, 0])), "gradient", str(tmp_path),
                      progress=False)
    assert torch.equal(images, copy)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not model._forward_hooks and not model._backward_hooks


_SCRIPT = r"""
import os, sys, torch
torch.set_num_threads(1)
import fxai, fxai.models
torch.manual_seed(0)
model = fxai.models.SmallCNN(3, width=4).eval()
model_fn, params = fxai.functional(model)
data = fxai.data.Shapes(int(sys.argv[3]), seed=1, size=16, classes=3)
slow = sys.argv[4] == "slow"
if slow:  # give a killer time to strike between shards
    import fxai.roar.extraction as ex
    inner = ex._save_shard
    def paced(*a, **k):
        inner(*a, **k)
        import time; time.sleep(0.5)
    ex._save_shard = paced
fxai.roar.extract(model_fn, params, data, sys.argv[1], sys.argv[2], options={"samples": 2} if "(" in sys.argv[1] else {},
                  shard_size=3, key=5, progress=False)
"""


def _run_script(tmp_path, method, out, n, mode="fast", launcher=None):
    script = tmp_path / "extract_script.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}
    cmd = (launcher or [sys.executable]) + [str(script), method, str(out), str(n), mode]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _reference(out, method, n):
    """What the script computes, in this process (one thread, as the script)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model_fn, params = fxai.functional(fxai.models.SmallCNN(3, width=4).eval())
        data = fxai.data.Shapes(n, seed=1, size=16, classes=3)
        fxai.roar.extract(model_fn, params, data, method, str(out), options={"samples": 2} if "(" in method else {},
                          shard_size=3, key=5, progress=False)
    finally:
        torch.set_num_threads(threads)


def _bytes(folder):
    return {f: (folder / f).read_bytes() for f in _files(folder)}


def test_killed_extraction_resumes_to_the_same_bytes(tmp_path):
    _reference(tmp_path / "ref", "gradient", 12)
    p = _run_script(tmp_path, "gradient", tmp_path / "cut", 12, mode="slow")
    deadline = time.time() + 120
    while not (tmp_path / "cut").exists() or not _files(tmp_path / "cut"):
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = _files(tmp_path / "cut")
    assert 1 <= len(done) < 4
    finished = {f: os.stat(tmp_path / "cut" / f).st_ino for f in done}
    _reference(tmp_path / "cut", "gradient", 12)  # the resumed run, here rather than in another process
    assert {f: os.stat(tmp_path / "cut" / f).st_ino for f in done} == finished  # finished shards not rewritten
    assert _bytes(tmp_path / "cut") == _bytes(tmp_path / "ref")
    assert not [f for f in os.listdir(tmp_path / "cut") if ".tmp" in f]


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_byte_for_byte(tmp_path):
    method = "smoothgrad_sq(gradient)"
    _reference(tmp_path / "one", method, 11)
    two = _run_script(tmp_path, method, tmp_path / "two", 11,
                      launcher=[TORCHRUN, "--standalone", "--nproc_per_node=2"])
    assert two.wait(180) == 0, two.stdout.read().decode()
    assert _files(tmp_path / "one") == [f"shard-0000{k}.safetensors" for k in range(4)]
    assert _bytes(tmp_path / "two") == _bytes(tmp_path / "one")
    assert json.loads((tmp_path / "two" / "manifest.json").read_text())["method"] == method

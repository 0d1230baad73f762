"""The ``fxai`` command end to end: ``explain`` on real image files and saved weights, one-line errors, ``demo --quick``.

Subprocess runs cost ~3 s of imports each, so there are four; the many bad-input
cases run in-process through ``fxai.app.cli.main`` (the same code path, stderr captured).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import fxai
from fxai import registry
from fxai.app import cli, demo, demo_scores, loading
from fxai._core.discovery import resolve_layers

TINY_MODEL = '''
from torch import nn


def tiny():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def not_a_model():
    return 42
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Images in four modes and sizes, a corrupt one, weights of a random resnet18 with 10 classes, a model module."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(root / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8)).save(root / "gray.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 4), dtype=np.uint8)).save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (50, 40, 3), dtype=np.uint8)).convert("P").save(root / "palette.png")
    (root / "corrupt.png").write_bytes(b"\x89PNG not really")
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), root / "resnet18-10.pt")
    (root / "garbage.pt").write_bytes(b"not a checkpoint")
    (root / "mymodels.py").write_text(TINY_MODEL)
    (root / "a_file").write_text("")
    (root / "sub").mkdir()
    torch.save(nn_whole(), root / "whole.pt")
    return root


def nn_whole():
    return torch.nn.Sequential(torch.nn.Linear(2, 2))


def _run(args, cwd, timeout=240):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fxai.app.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _png(path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


@pytest.mark.slow
def test_explain_torchvision_model_with_weights_file(files):
    methods = ["gradient", "integrated_gradients", "grad_cam"]
    images = ["rgb.png", "palette.png"]
    proc = _run(["explain", *images, "--model", "resnet18", "--weights", "resnet18-10.pt", "--resize", "56", "48",
                 "--method", ",".join(methods), "--target", "top2", "--out", "out1"], files)
    assert proc.returncode == 0, proc.stderr
    out = files / "out1"
    lines = proc.stdout.splitlines()
    for name in images:                                  # top predictions: 5 classes of the 10 with probabilities
        line = next(ln for ln in lines if ln.startswith(name + ":"))
        assert line.count("(") == 5
    done = [m for m in methods if "not implemented" not in proc.stdout.split(m + ":")[-1].split("\n")[0]]
    assert "gradient" in done and "integrated_gradients" in done
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(torch.load(files / "resnet18-10.pt"))
    for name in images:
        stem = name[:-4]
        for method in done:
            raw = torch.load(out / f"{stem}_{method}.pt")      # this image's map, one per target class
            assert raw.shape == ((2, 3, 48, 48) if registry.METHODS[method].kind == "pixel" else (2, 48, 48))
            assert torch.isfinite(raw).all() and raw.abs().sum() > 0
            pngs = sorted(out.glob(f"{stem}_{method}_c*.png"))
            assert len(pngs) == 2
            for p in pngs:
                pixels = _png(p)                            # input, map and colour bar, each >= 224 px
                assert pixels.shape[0] >= 300 and pixels.shape[1] >= 600 and pixels.std() > 5
    # The gradient map saved is the model's gradient for the top-1 class of the preprocessed image.
    with Image.open(files / "rgb.png") as img:
        x = torchvision.transforms.functional.to_tensor(
            torchvision.transforms.functional.center_crop(torchvision.transforms.functional.resize(img, 56), 48))
    x = ((x - torch.tensor(loading.IMAGENET_MEAN)[:, None, None]) / torch.tensor(loading.IMAGENET_STD)[:, None, None])[None]
    x.requires_grad_(True)
    logits = model.eval()(x)
    logits[0, logits[0].argmax()].backward()
    assert torch.allclose(torch.load(out / "rgb_gradient.pt")[0], x.grad[0], rtol=1e-4, atol=1e-6)
    assert "time per method" in proc.stdout and "integrated_gradients" in proc.stdout.split("time per method")[1]
    grid = _png(out / "grid.png")
    assert grid.shape[0] > 4 * 100 and grid.std() > 10


@pytest.mark.slow
def test_explain_own_model_keep_size(files):
    proc = _run(["explain", "rgb.png", "gray.png", "rgba.png", "palette.png", "--model", "mymodels:tiny", "--keep-size",
                 "--method", "gradient,guided_backprop", "--target", "1", "--sign", "all", "--out", "out2"], files)
    assert proc.returncode == 0, proc.stderr
    for stem, size in (("rgb", (40, 56)), ("gray", (36, 36)), ("rgba", (30, 30)), ("palette", (50, 40))):
        for method in ("gradient", "guided_backprop"):
            assert _png(files / "out2" / f"{stem}_{method}.png").shape[0] >= 300
            assert torch.load(files / "out2" / f"{stem}_{method}.pt").shape == (3, *size)


@pytest.mark.slow
def test_explain_concepts(files):
    # --concepts K: Deep Feature Factorization of all the images at the CAM layer, named by the head.
    proc = _run(["explain", "rgb.png", "gray.png", "rgba.png", "--model", "mymodels:tiny", "--method", "grad_cam",
                 "--resize", "32", "32", "--concepts", "2", "--out", "out_concepts"], files)
    assert proc.returncode == 0, proc.stderr
    assert _png(files / "out_concepts" / "factorization.png").shape[1] >= 300
    named = [line for line in proc.stdout.splitlines() if line.startswith("concept ")]
    assert len(named) == 2 and all("class" not in n and "." in n for n in named), proc.stdout
    proc = _run(["explain", "rgb.png", "gray.png", "--model", "mymodels:tiny", "--keep-size", "--concepts", "2",
                 "--out", "out_concepts2"], files)
    assert proc.returncode == 2 and "--concepts factorises all the images together" in proc.stderr


def test_explain_error_in_a_subprocess_is_one_line(files):
    proc = _run(["explain", "corrupt.png", "--model", "mymodels:tiny", "--out", "out3"], files)
    assert proc.returncode == cli.EXIT_ERROR
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "corrupt.png" in proc.stderr and "not a recognised image file" in proc.stderr


@pytest.mark.parametrize("args, expected", [
    (["missing.png"], "image file not found: missing.png"),
    (["corrupt.png"], "cannot read image corrupt.png"),
    (["rgb.png", "--model", "resnet_999"], "unknown model 'resnet_999'"),
    (["rgb.png", "--model", "nosuchpkg.mod:f"], "cannot import 'nosuchpkg.mod'"),
    (["rgb.png", "--model", "mymodels:not_a_model"], "not a torch.nn.Module"),
    (["rgb.png", "--model", "mymodels:tiny", "--method", "gradient,magic"], "unknown method 'magic'"),
    (["rgb.png", "--model", "mymodels:tiny", "--method", "grad_cam", "--layer", "layer4"], "unknown layer 'layer4'"),
    (["rgb.png", "--model", "mymodels:tiny", "--target", "7"], "--target 7 is out of range: the model has 5 classes"),
    (["rgb.png", "--model", "mymodels:tiny", "--target", "top9"], "top9 asks for more classes"),
    (["rgb.png", "--model", "mymodels:tiny", "--target", "best"], "--target must be a class index"),
    (["rgb.png", "--model", "mymodels:tiny", "--weights", "garbage.pt"], "cannot read weights file garbage.pt"),
    (["rgb.png", "--model", "mymodels:tiny", "--weights", "nope.pt"], "weights file not found: nope.pt"),
    (["rgb.png", "--model", "mymodels:tiny", "--weights", "resnet18-10.pt"], "do not fit the model"),
    (["rgb.png", "--model", "mymodels:tiny", "--out", "a_file/sub"], "output folder 'a_file/sub' is not writable"),
    (["rgb.png", "--model", "mymodels:tiny", "--pretrained"], "--pretrained works with torchvision model names"),
    (["rgb.png", "--model", "mymodels:tiny", "--mean", "0.5,x"], "--mean must be comma-separated numbers"),
    (["rgb.png", "--model", "mymodels:tiny", "--resize", "0", "0"], "--resize takes two positive sizes"),
    (["sub", "--model", "mymodels:tiny"], "image sub is a directory"),
    (["rgb.png", "--model", "mymodels:tiny", "--option", "steps"], "--option must be NAME=VALUE"),
    (["rgb.png", "--model", "mymodels:tiny", "--method", "gradient", "--option", "steps=8"],
     "--option steps: none of the chosen methods (gradient) takes 'steps'"),
    (["rgb.png", "--model", "mymodels:tiny", "--option", "key=3"], "--option key: not a method option; use --seed"),
    (["rgb.png", "--model", "mymodels:tiny", "--method", "blur:gradient"], "unknown transform 'blur'"),
    (["rgb.png", "--model", "mymodels:tiny", "--method", "integrated_gradients", "--option", "steps=0"],
     "integrated_gradients: steps must be"),
    (["rgb.png", "--model", "whole.pt"], "unknown model"),
    (["rgb.png", "--model", "nowhere/net.py:make"], "file not found: nowhere/net.py"),
])
def test_explain_bad_input_one_line_error(files, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(files)
    monkeypatch.syspath_prepend(str(files))
    code = cli.main(["explain", *args, "--out" if "--out" not in args else "--seed", "outbad" if "--out" not in args
                     else "0"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR
    assert err.startswith("fxai: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert expected in err


def test_pretrained_offline_message(monkeypatch, capsys, files):
    """Without network access (simulated), --pretrained says how to pass a local file."""
    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.chdir(files)
    code = cli.main(["explain", "rgb.png", "--model", "resnet18", "--pretrained", "--out", "outbad"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR and err.count("\n") == 1
    assert "cannot get the pretrained weights of resnet18" in err and "--weights FILE" in err
    assert "https://download.pytorch.org/models/resnet18" in err


def test_default_layer_is_the_librarys():
    # The CLI takes the library's rule (fxai._core.discovery.default_layer): the last spatial map before pooling.
    with torch.device("meta"):                          # shapes only: no weights to initialise
        x = torch.zeros(1, 3, 64, 64)
        for build, expected in [(torchvision.models.resnet18, "layer4"), (torchvision.models.mobilenet_v3_small,
                                "features"), (torchvision.models.vgg11, "features"),
                                (torchvision.models.densenet121, "features"),
                                (torchvision.models.squeezenet1_0, "classifier.2")]:
            model_fn, params = fxai.functional(build().eval())
            assert resolve_layers(model_fn, None, params=params, x=x) == [expected]


def test_images_are_converted_to_what_the_model_takes(tmp_path):
    rgba = np.zeros((4, 6, 4), dtype=np.uint8)
    rgba[..., 0], rgba[0, 0] = 200, (10, 20, 30, 255)                   # transparent red but one opaque pixel
    Image.fromarray(rgba).save(tmp_path / "a.png")
    gray = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(gray).save(tmp_path / "g.png")
    pal = Image.fromarray(np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)).convert("P")
    pal.save(tmp_path / "p.png")
    (a, ta), (g, tg), (p, tp) = loading.load_images([str(tmp_path / n) for n in ("a.png", "g.png", "p.png")], 3,
                                                  keep_size=True, resize=None)
    assert ta.shape == (3, 4, 6) and torch.equal(ta[:, 0, 0] * 255, torch.tensor([10.0, 20, 30]))
    assert torch.equal(ta[:, 1:, :], torch.ones(3, 3, 6))                # transparent pixels over white
    assert torch.equal(tg, torch.from_numpy(gray).float().div(255).expand(3, 4, 6))
    assert torch.equal(tp, torch.from_numpy(np.array(pal.convert("RGB"))).permute(2, 0, 1).float() / 255)
    ((_, one),) = loading.load_images([str(tmp_path / "p.png")], 1, keep_size=False, resize=(8, 6))
    assert one.shape == (1, 6, 6)


def test_no_subcommand_prints_help(capsys):
    assert cli.main([]) == 0
    assert "fxai demo" in capsys.readouterr().out


# ---------------------------------------------------------------- demo


def test_demo_quick_end_to_end(tmp_path):
    proc = _run(["demo", "--quick", "--out", "report", "--seed", "1", "--device", "cpu"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "report"
    for name in ("grid.png", "curves.png"):
        assert _png(out / name).std() > 10
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == set(registry.METHODS)
    for name, row in results["methods"].items():
        assert ("scores" in row) != ("skipped" in row or "error" in row), name
        assert "error" not in row, (name, row)
    scored = [n for n, r in results["methods"].items() if "scores" in r]
    assert {"gradient", "integrated_gradients"} <= set(scored)
    for name in scored:
        scores = results["methods"][name]["scores"]
        assert 0 <= scores["relevance mass"] <= 1 and scores["pointing game"] in [k / 8 for k in range(9)]
    report = (out / "report.md").read_text()
    assert "| gradient |" in report and "![coherence grid, page 1](grid.png)" in report
    pages = -(-len(scored) // demo.GRID_METHODS)            # every method's map on a page of at most GRID_METHODS
    assert results["grids"] == ["grid.png"] + [f"grid-{k}.png" for k in range(2, pages + 1)]
    assert all((out / name).exists() for name in results["grids"])
    assert "untrained" in report and "noisy linear imputation" in report and "blurred copy" in report
    assert "gradient" in proc.stdout and "random (chance)" in proc.stdout and "untrained" in proc.stdout
    for name in scored:     # the flags are the comparisons with the random map
        row = results["methods"][name]
        flagged = set(results["no_better_than_chance"][name])
        for column, score in row["scores"].items():
            worse = score <= results["chance"][column] if demo_scores.HIGHER_IS_BETTER[column] else \
                score >= results["chance"][column]
            assert (column in flagged) == worse, (name, column)
    assert "ROAD" in results["chance"]
    assert (out / "model-quick.pt").exists() and not (out / "model.pt").exists()
    assert not list(out.glob("*.tmp"))


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads only add overhead
    yield
    torch.set_num_threads(threads)


def test_training_resumes_to_the_same_weights(tmp_path, one_thread):
    config = demo.QUICK
    path = str(tmp_path / "model.pt")
    log = []
    demo.train(config, seed=3, device=torch.device("cpu"), checkpoint=path, stop_after=5, progress=False, log=log.append)
    resumed = demo.train(config, seed=3, device=torch.device("cpu"), checkpoint=path, progress=False, log=log.append)
    straight = demo.train(config, seed=3, device=torch.device("cpu"), progress=False, log=log.append)
    assert log == [f"resuming training from step 5 of {config.steps} ({path})"]
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    demo.train(config, seed=3, device=torch.device("cpu"), checkpoint=path, progress=False, log=log.append)
    assert log[-1] == f"reusing the trained model in {path}"
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match="holds a model trained with other settings .seed 3.*--out"):
        demo.train(config, seed=4, device=torch.device("cpu"), checkpoint=path, stop_after=1, progress=False,
                   log=log.append)
    assert open(path, "rb").read() == before             # a trained model is never overwritten
    partial = str(tmp_path / "partial.pt")
    demo.train(config, seed=4, device=torch.device("cpu"), checkpoint=partial, stop_after=1, progress=False)
    demo.train(config, seed=5, device=torch.device("cpu"), checkpoint=partial, stop_after=1, progress=False,
               log=log.append)
    assert log[-1] == f"{partial} was trained with other settings; training again"   # an unfinished one is


def test_interrupted_training_keeps_its_progress(tmp_path, monkeypatch, one_thread):
    config = demo.QUICK
    path = str(tmp_path / "model.pt")
    real = demo.shapes

    def interrupt_at_step_3(n, *, start, **kwargs):
        if start == 3 * config.batch:
            raise KeyboardInterrupt
        return real(n, start=start, **kwargs)

    monkeypatch.setattr(demo, "shapes", interrupt_at_step_3)
    log = []
    with pytest.raises(KeyboardInterrupt):
        demo.train(config, seed=3, device=torch.device("cpu"), checkpoint=path, progress=False, log=log.append)
    assert torch.load(path)["step"] == 3                 # saved on interrupt, not only every save_every steps
    assert log[-1].startswith("\ninterrupted at step 3 of 12; progress saved")
    monkeypatch.setattr(demo, "shapes", real)
    leftover = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.x1y2.tmp")
    open(leftover, "wb").write(b"half a file")          # a run killed while saving
    resumed = demo.train(config, seed=3, device=torch.device("cpu"), checkpoint=path, progress=False, log=log.append)
    assert log[-1] == f"resuming training from step 3 of {config.steps} ({path})" and not os.path.exists(leftover)
    straight = demo.train(config, seed=3, device=torch.device("cpu"), progress=False)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_full_disk_is_one_line(tmp_path, monkeypatch, one_thread, capsys):
    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(demo, "QUICK", dataclasses.replace(demo.QUICK, steps=2, save_every=1))
    code = cli.main(["demo", "--quick", "--out", str(tmp_path / "r"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_ERROR
    last = err.splitlines()[-1]                          # after the closed progress bar, on a line of its own
    assert last.startswith("fxai: error: cannot save the model to") and err.endswith(last + "\n")
    assert "cannot save the model to" in err and "disk is full" in err and "enforce" not in err
    assert not list((tmp_path / "r").glob("*.tmp")) and not list((tmp_path / "r").glob(".*.tmp"))


def test_report_files_are_replaced_whole(tmp_path, monkeypatch):
    """A run killed while writing the report leaves the previous files whole (writes go to .tmp, then a rename)."""
    from fxai._core.files import write_atomic
    (tmp_path / "results.json").write_text("previous")

    def killed(tmp):
        open(tmp, "w").write("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "results.json", killed)
    assert (tmp_path / "results.json").read_text() == "previous" and os.listdir(tmp_path) == ["results.json"]


# ---------------------------------------------------------------- explain: what the user meets


def test_failed_run_leaves_no_empty_output_folder(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    assert cli.main(["explain", "corrupt.png", "--model", "mymodels:tiny", "--out", "never"]) == cli.EXIT_ERROR
    assert not (files / "never").exists()
    (files / "kept").mkdir()
    assert cli.main(["explain", "corrupt.png", "--model", "mymodels:tiny", "--out", "kept"]) == cli.EXIT_ERROR
    assert (files / "kept").is_dir()                    # a folder the user made stays


def test_pickled_model_as_weights_names_the_cause_and_no_unsafe_advice(files, monkeypatch, capsys):
    monkeypatch.chdir(files)
    assert cli.main(["explain", "rgb.png", "--model", "mymodels:tiny", "--weights", "whole.pt", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert "holds Python objects" in err and "torch.nn.modules.container.Sequential" in err
    assert "state_dict()" in err and "weights_only=False" not in err and not err.rstrip().endswith("...")


@pytest.mark.slow
def test_model_from_the_current_folder_and_from_a_file_path(tmp_path):
    """The README's `--model mypackage.models:make_net` from the folder holding mypackage, and a .py path."""
    (tmp_path / "mypackage").mkdir()
    (tmp_path / "mypackage" / "__init__.py").write_text("")
    (tmp_path / "mypackage" / "models.py").write_text(TINY_MODEL.replace("def tiny", "def make_net"))
    Image.fromarray(np.full((8, 8, 3), 128, dtype=np.uint8)).save(tmp_path / "scan.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = os.path.join(os.path.dirname(sys.executable), "fxai")
    command = [script] if os.path.exists(script) else [sys.executable, "-m", "fxai"]
    for model in ("mypackage.models:make_net", os.path.join("mypackage", "models.py") + ":make_net"):
        proc = subprocess.run([*command, "explain", "scan.png", "--model", model, "--keep-size", "--method", "gradient",
                               "--out", "o"], cwd=tmp_path, env={**env, "PYTHONPATH": os.environ.get("PYTHONPATH", "")},
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "o" / "scan_gradient.pt").exists()


@pytest.mark.slow
def test_python_dash_m_fxai_and_debug_in_each_help(capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "fxai", "explain", "--help"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and "--debug" in proc.stdout
    assert "smoothgrad_sq" in proc.stdout and "num_masks" in proc.stdout and "--option" in proc.stdout
    with pytest.raises(SystemExit):
        cli.main(["demo", "--help"])
    assert "--debug" in capsys.readouterr().out
    for argv in (["--debug", "explain", "a.png"], ["explain", "a.png", "--debug"]):
        assert cli._parser().parse_args(argv).debug      # before or after the subcommand
    assert not cli._parser().parse_args(["explain", "a.png"]).debug


def test_twelve_bit_image_is_scaled_by_its_depth(tmp_path):
    ramp = np.linspace(0, 4095, 64).round().astype(np.uint16)[None].repeat(4, 0)   # a 12-bit gradient in 16 bits
    Image.fromarray(ramp).save(tmp_path / "scan.png")
    floats = (ramp / 4095.0).astype(np.float32)
    Image.fromarray(floats, mode="F").save(tmp_path / "scan.tiff")
    Image.fromarray((ramp * 16).astype(np.int32), mode="I").save(tmp_path / "wide.tiff")
    loaded = loading.load_images([str(tmp_path / n) for n in ("scan.png", "scan.tiff", "wide.tiff")], 3, keep_size=True,
                                 resize=None)
    expected = torch.from_numpy(ramp / 4095.0).float().expand(3, 4, 64)
    (_, twelve), (_, flt), (_, sixteen) = loaded
    assert torch.allclose(twelve, expected, atol=1e-6, rtol=0) and twelve.max() == 1
    assert torch.allclose(flt, expected, atol=1e-6, rtol=0)
    assert torch.allclose(sixteen, torch.from_numpy(ramp * 16 / 65535.0).float().expand(3, 4, 64), atol=1e-6, rtol=0)
    ((_, one),) = loading.load_images([str(tmp_path / "scan.png")], 1, keep_size=False, resize=(8, 4))
    assert one.shape == (1, 4, 4) and 0.3 < float(one.mean()) < 0.7      # not saturated at 255


def test_options_transforms_and_class_names(files, monkeypatch, capsys):
    """--option reaches the method, TRANSFORM:METHOD runs the smoothed method, 1000-class weights keep names."""
    monkeypatch.chdir(files)
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), files / "sq.pt")
    code = cli.main(["explain", "rgb.png", "--model", "squeezenet1_1", "--weights", "sq.pt", "--resize", "40", "32",
                     "--method", "integrated_gradients,smoothgrad_sq:gradient", "--option", "steps=3",
                     "--option", "samples=2", "--out", "o5"])
    out = capsys.readouterr().out
    assert code == 0
    from torchvision.models import SqueezeNet1_1_Weights
    names = SqueezeNet1_1_Weights.DEFAULT.meta["categories"]
    line = next(ln for ln in out.splitlines() if ln.startswith("rgb.png:"))
    assert any(f"{c} {names[c]}" in line for c in range(1000))
    model = torchvision.models.squeezenet1_1()
    model.load_state_dict(torch.load(files / "sq.pt"))
    model_fn, params = fxai.functional(model.eval())
    x = torch.load(files / "o5" / "rgb_integrated_gradients.pt")
    assert x.shape == (3, 32, 32)
    sq = torch.load(files / "o5" / "rgb_smoothgrad_sq-gradient.pt")
    assert sq.shape == (3, 32, 32) and (sq >= 0).all()
    with Image.open(files / "rgb.png") as img:
        tf = torchvision.transforms.functional
        raw = tf.to_tensor(tf.center_crop(tf.resize(img, 40), 32))
    mean, std = torch.tensor(loading.IMAGENET_MEAN)[:, None, None], torch.tensor(loading.IMAGENET_STD)[:, None, None]
    xin = ((raw - mean) / std)[None]
    target = int(model_fn(params, xin).argmax())
    ig = fxai.integrated_gradients(model_fn, params, xin, target, steps=3)[0]
    assert torch.allclose(x, ig, rtol=1e-4, atol=1e-6)
    sq_ref = fxai.smoothgrad_sq(fxai.gradient, samples=2)(model_fn, params, xin, target, key=0)[0]
    assert torch.allclose(sq, sq_ref, rtol=1e-4, atol=1e-8)

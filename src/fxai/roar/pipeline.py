"""The whole ROAR/KAR benchmark in a run folder: data, base model, maps, job grid, retrains, report.

Each stage is resumable and skipped when its output exists::

    OUT/config.json               the run's settings (a folder holding another run is refused)
    OUT/data/{train,test}.safetensors
    OUT/model/model.safetensors   the network every map explains (trained like the retrains, seed ``seed``)
    OUT/maps/<method>/{train,test}/   sharded maps with their manifests (see :mod:`fxai.roar.extract`)
    OUT/grid/                     the jobs, their claims and results (see :mod:`fxai.roar.jobs`)
    OUT/altered/                  noisy-linear altered data shared by the repeats of a point (removed when done)
    OUT/report/                   plots, table, JSON, summary (see :mod:`fxai.roar.report`)

Under ``torchrun`` the extraction is split by rank and every retrain is data-parallel; any number of
further workers (:func:`work`, ``fxai roar --only work``) can share the grid from other processes or machines.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable

import torch

from .._core.files import write_atomic, write_json
from .._core.functional import functional
from . import datasets, described, dist, extraction, jobs, methods, removal
from .nets import CAM_LAYERS
from .train import TrainConfig, accuracy, fit

METHODS = ("gradient", "smoothgrad_sq(gradient)", "vargrad(gradient)", "integrated_gradients", "grad_cam",
           "guided_backprop")
CONTROLS = ("random", "sobel", "ground_truth")
METHOD_OPTIONS = {"integrated_gradients": {"steps": 32}, "smoothgrad_sq(gradient)": {"samples": 15, "sigma": 0.15},
                  "vargrad(gradient)": {"samples": 15, "sigma": 0.15}}


@dataclasses.dataclass(frozen=True)
class RoarConfig:
    """A ROAR/KAR run. ``methods`` include controls (``random``, ``sobel``, ``ground_truth``); ``fills`` lists
    the fills used for every method, ``control_fills`` those used for the controls only in addition;
    ``fractions`` are the fractions of pixels replaced (0, the unaltered data, is always added)."""

    dataset: str = "shapes"
    root: str | None = None
    size: int = 24
    classes: int = 4
    train_count: int | None = 2000
    test_count: int | None = 500
    methods: tuple[str, ...] = METHODS + CONTROLS
    options: dict = dataclasses.field(default_factory=lambda: dict(METHOD_OPTIONS))
    reduce: str = "abs_sum"
    map_dtype: str = "float32"
    fractions: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    modes: tuple[str, ...] = ("roar", "kar")
    fills: tuple[str, ...] = ("mean",)
    control_fills: tuple[str, ...] = ("noisy_linear",)
    noise: float = 0.01
    repeats: int = 2
    seed: int = 0
    train: TrainConfig = TrainConfig()

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        return json.loads(json.dumps(d))


# The settings of ``fxai roar --quick``: the default run's code path on a smaller grid and smaller images,
# sized to learn (base accuracy well above chance, ground truth removed with noisy linear fill near chance)
# in about a minute on two CPU cores.
QUICK = dict(train_count=1500, test_count=300, size=16, fractions=(0.5,), repeats=2,
             methods=("gradient", "random", "ground_truth"), options={}, train=TrainConfig(epochs=12))


def slug(spec: str) -> str:
    """``spec`` as a file name: ``smoothgrad_sq(gradient)`` -> ``smoothgrad_sq-gradient``."""
    return spec.replace("(", "-").replace(")", "")


def job_list(config: RoarConfig) -> list[dict]:
    """Every retrain of the grid, repeat by repeat: the unaltered baseline, then method × fill × mode × fraction.

    Repeats of one point retrain on the same altered data; taking all first repeats before any second
    one lets the later repeats find the noisy-linear data that an earlier one cached (see :func:`run_job`)."""
    out = []
    for r in range(config.repeats):
        out.append({"id": f"baseline-r{r}", "method": None, "fill": None, "mode": None, "fraction": 0.0, "repeat": r})
        for spec in config.methods:
            fills = list(config.fills) + ([f for f in config.control_fills if f not in config.fills]
                                          if methods.parse(spec)[1] in CONTROLS else [])
            for fill in fills:
                for mode in config.modes:
                    for fraction in config.fractions:
                        out.append({"id": f"{mode}-{slug(spec)}-{fill}-{fraction:g}-r{r}", "method": spec,
                                    "fill": fill, "mode": mode, "fraction": float(fraction), "repeat": r})
    return out


def _check_config(out: str, config: RoarConfig) -> None:
    path = os.path.join(out, "config.json")
    wanted = config.to_json()
    if os.path.exists(path):
        with open(path) as fh:
            found = json.load(fh)
        if found != wanted:
            diff = sorted(k for k in wanted if found.get(k) != wanted[k])
            raise ValueError(f"{out} holds a run with other settings ({', '.join(diff)}); use another --out folder")
    elif dist.init()[0] == 0:
        write_json(path, wanted)


def _data(out: str, config: RoarConfig) -> dict:
    folder = os.path.join(out, "data")
    data = datasets.read(folder)
    if data is None:
        if dist.init()[0] == 0:
            data = datasets.load(config.dataset, root=config.root, size=config.size, classes=config.classes,
                                 train_count=config.train_count, test_count=config.test_count, seed=config.seed)
            datasets.save(data, folder)
        dist.barrier()
        data = datasets.read(folder)
    return data


def _base_model(out: str, config: RoarConfig, data: dict, device, log) -> torch.nn.Module:
    from safetensors.torch import load_file, save_file

    from .nets import build

    path = os.path.join(out, "model", "model.safetensors")
    if not os.path.exists(path):
        log("training the model to explain")
        model = fit(data["train"].images, data["train"].labels, classes=data["classes"], config=config.train,
                    seed=config.seed, device=device)
        if dist.init()[0] == 0:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
            images = data["train"].images
            desc = described.description(config.train.arch, classes=data["classes"], width=config.train.width,
                                         channels=images.shape[1], size=images.shape[-1],
                                         class_names=class_names(config, data["classes"]))
            write_atomic(path, lambda tmp: save_file(state, tmp, metadata=described.safetensors_metadata(desc)))
        dist.barrier()
    model = build(config.train.arch, data["classes"], channels=data["train"].images.shape[1],
                  width=config.train.width)
    model.load_state_dict(load_file(path))
    return model.to(device).eval()


def class_names(config: RoarConfig, classes: int) -> list[str] | None:
    """The names of the run's classes, where the dataset has them."""
    from ..data.synthetic import CLASS_NAMES

    if config.dataset == "shapes":
        return list(CLASS_NAMES[:classes])
    if config.dataset == "mnist":
        return [str(d) for d in range(10)][:classes]
    if config.dataset == "cifar10":
        return ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"][:classes]
    folder = os.path.join(os.path.expanduser(config.root or ""), "train")
    names = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))) if os.path.isdir(folder) \
        else []
    return names if len(names) == classes else None


def _extract_all(out: str, config: RoarConfig, data: dict, model, device, progress: bool, log,
                 part: tuple[int, int] | None = None) -> None:
    model_fn, params = functional(model)
    layer = CAM_LAYERS[config.train.arch]
    for spec in config.methods:
        opts = dict(config.options.get(spec, {}))
        info = methods.parse(spec)[1]
        if info not in CONTROLS and methods.registry.method(info).layered and "layer" not in opts:
            opts["layer"] = layer
        for split in ("train", "test"):
            folder = os.path.join(out, "maps", slug(spec), split)
            extraction.extract(model_fn, params, data[split], spec, folder, options=opts, reduce=config.reduce,
                            dtype=config.map_dtype, key=config.seed + (0 if split == "train" else 1),
                            dataset_name=data[split].name, device=device, part=part, progress=progress)


def prepare(out: str, config: RoarConfig = RoarConfig(), *, device="cpu", progress: bool = True,
            log: Callable[[str], None] = print, maps: bool = True) -> None:
    """The stages before the retrains: data, base model, maps and the job grid (each skipped when done).

    ``maps=False`` stops after the model (for local processes that then share the extraction by
    :func:`extract_part`)."""
    device = dist.local_device(torch.device(device))
    dist.init(device)
    os.makedirs(out, exist_ok=True)
    _check_config(out, config)
    data = _data(out, config)
    model = _base_model(out, config, data, device, log)
    if not maps:
        return
    _extract_all(out, config, data, model, device, progress, log)
    mean = data["train"].images.mean((0, 2, 3))
    settings = {"config": config.to_json(), "mean": mean.tolist(), "classes": data["classes"],
                "base_accuracy": accuracy(model, data["test"].images, data["test"].labels, device=device)}
    if dist.init()[0] == 0:
        jobs.write_grid(os.path.join(out, "grid"), job_list(config), settings)
    dist.barrier()


def extract_part(out: str, config: RoarConfig, part: tuple[int, int], *, device="cpu", progress: bool = True) -> None:
    """Shards ``k ≡ i (mod n)`` of every map folder of the run, for ``part = (i, n)`` (after ``prepare(maps=False)``)."""
    device = torch.device(device)
    data = _data_only(out)
    model = _base_model(out, config, data, device, print)
    _extract_all(out, config, data, model, device, progress, print, part=part)


def _noise_key(job: dict) -> int:
    """One altered dataset per (method, fill, mode, fraction): every repeat retrains on the same data."""
    text = f"{job['method']}|{job['fill']}|{job['mode']}|{job['fraction']}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:6], "little")


def run_job(out: str, job: dict, *, device="cpu", data: dict | None = None, heartbeat=None) -> dict:
    """Retrain one job of the grid from scratch and return its result (test accuracy and timings)."""
    grid = jobs.read_grid(os.path.join(out, "grid"))
    settings = grid["settings"]
    cfg = settings["config"]
    config = TrainConfig(**cfg["train"])
    data = _data_only(out) if data is None else data
    started = time.perf_counter()
    xs = {s: data[s].images for s in ("train", "test")}
    if job["method"] is not None:
        xs = _altered(out, job, xs, settings, device)
    altered = time.perf_counter()
    model = fit(xs["train"], data["train"].labels, classes=settings["classes"], config=config,
                seed=cfg["seed"] * 1000 + job["repeat"], device=device,
                on_epoch=(lambda e: heartbeat()) if heartbeat else None)
    acc = accuracy(model, xs["test"], data["test"].labels, device=device)
    return {**job, "accuracy": acc, "train_accuracy": accuracy(model, xs["train"], data["train"].labels,
                                                                device=device),
            "seconds_alter": altered - started, "seconds_train": time.perf_counter() - altered,
            "device": str(device), "world_size": dist.init()[1]}


def _altered(out: str, job: dict, xs: dict, settings: dict, device) -> dict:
    """The altered train and test images of ``job``. Noisy linear imputation costs many epochs' worth of
    compute, so its result is cached in ``out/altered/`` (atomically) for the job's other repeats, which
    retrain on the same data, and removed by :func:`_forget_altered` once they are all done."""
    cfg = settings["config"]
    path = _altered_path(out, job) if job["fill"] == "noisy_linear" and cfg["repeats"] > 1 else None
    if path is not None and os.path.exists(path):
        from safetensors.torch import load_file
        return {k: v.to(device) for k, v in load_file(path).items()}
    mean = torch.tensor(settings["mean"])
    for i, split in enumerate(("train", "test")):
        maps = extraction.load_maps(os.path.join(out, "maps", slug(job["method"]), split))
        xs[split] = removal.alter(xs[split], maps, fraction=job["fraction"], mode=job["mode"], fill=job["fill"],
                                  mean=mean, noise=cfg["noise"], key=_noise_key(job) + (i << 40), device=device)
    if path is not None and dist.init()[0] == 0:
        from safetensors.torch import save_file
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomic(path, lambda p: save_file({k: v.cpu().contiguous() for k, v in xs.items()}, p))
    return xs


def _altered_path(out: str, job: dict) -> str:
    return os.path.join(out, "altered", f"{job['mode']}-{slug(job['method'])}-{job['fill']}-{job['fraction']:g}"
                                        ".safetensors")


def _forget_altered(out: str, job: dict, grid_folder: str) -> None:
    """Remove the cached altered data of ``job`` once every repeat of its point has a result."""
    if job["method"] is None:
        return
    path = _altered_path(out, job)
    same = [j for j in jobs.read_grid(grid_folder)["jobs"]
            if j["method"] is not None and _altered_path(out, j) == path]
    if os.path.exists(path) and all(jobs.done(grid_folder, j["id"]) for j in same):
        try:
            os.remove(path)
        except FileNotFoundError:  # another worker removed it first
            pass


def _data_only(out: str) -> dict:
    data = datasets.read(os.path.join(out, "data"))
    if data is None:
        raise FileNotFoundError(f"no data in {out}/data: run the preparation first (fxai roar --only prepare)")
    return data


def work(out: str, *, device="cpu", stale_after: float = 600.0, poll: float = 2.0, max_jobs: int | None = None,
         progress: bool = True, log: Callable[[str], None] = print) -> int:
    """Take jobs from the grid in ``out/grid`` until none is left; returns how many this worker ran.

    In a ``torchrun`` group rank 0 takes each job and all ranks retrain it together (DDP); rank 0
    writes the result. ``stale_after``: seconds without a heartbeat after which another worker's job
    is taken over (a worker beats once per epoch; keep it well above an epoch's time).
    """
    device = dist.local_device(torch.device(device))
    rank, world = dist.init(device)
    folder = os.path.join(out, "grid")
    data = _data_only(out)
    name, ran = jobs.worker_name(), 0
    total = len(jobs.read_grid(folder)["jobs"])
    while max_jobs is None or ran < max_jobs:
        taken = jobs.next_job(folder, worker=name, stale_after=stale_after, poll=poll) if rank == 0 else None
        job = dist.broadcast(None if taken is None else taken[0])
        if job is None:
            break
        claim = taken[1] if rank == 0 else None
        try:
            result = run_job(out, job, device=device, data=data, heartbeat=claim.beat if claim else None)
        except Exception as err:  # noqa: BLE001 - a failed job is recorded, the grid goes on
            result = {**job, "error": f"{type(err).__name__}: {err}"}
        if rank == 0:
            jobs.write_result(folder, job["id"], {**result, "worker": name})
            claim.release()
            _forget_altered(out, job, folder)
            if progress:
                left = len(jobs.pending(folder))
                acc = f"accuracy {result['accuracy']:.3f}" if "accuracy" in result else result["error"]
                log(f"[{total - left}/{total}] {job['id']}: {acc}")
        ran += 1
    dist.barrier()
    return ran

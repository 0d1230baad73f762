"""Maps of a whole dataset, written as sharded safetensors files with a manifest; resumable, split by rank.

Layout of a map folder::

    manifest.json            what the maps are: method, options, reduction, dtype, target, key, the hash of the
                             model's parameters, the dataset, the versions
    shard-00000.safetensors  "maps" [n, H, W] (float16 or float32) and "index" [n] (int64, dataset indices)
    ...

Shard ``k`` holds samples ``k·shard_size ... (k+1)·shard_size - 1``. A shard is written to a temporary
file and renamed into place, so a file that exists is complete; an existing shard is never rewritten, and
a killed run recomputes at most the shards that were in flight. Under ``torchrun`` rank ``r`` of ``w``
computes the shards ``k ≡ r (mod w)``; the maps of a shard do not depend on which process computed it
(randomised methods draw from a key derived from ``(key, k)``), so the union equals a single-process run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import queue
import threading

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .._core.checks import check_positive_int
from .._core.files import write_atomic, write_json
from . import dist, methods
from .datasets import TensorData, collate

FORMAT = "fxai-maps/1"
DTYPES = {"float16": torch.float16, "float32": torch.float32}
TARGETS = ("label", "predicted")


def params_hash(params) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``params`` (a dict of tensors), in name order."""
    h = hashlib.sha256()
    for name in sorted(params):
        t = params[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def shard_key(key: int, shard: int) -> int:
    """The seed of shard ``shard`` for a run keyed ``key``: a hash, so shards draw independent numbers."""
    return int.from_bytes(hashlib.sha256(f"{key}:{shard}".encode()).digest()[:7], "little")


def _versions() -> dict:
    import safetensors

    from .. import __version__
    return {"fxai": __version__, "torch": torch.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def _json_safe(options: dict) -> dict:
    try:
        return json.loads(json.dumps(options, sort_keys=True))
    except TypeError as err:
        raise TypeError(f"options must be JSON values (numbers, strings, lists, dicts) to go in the manifest: {err}"
                        ) from None


def manifest_for(*, method: str, options: dict, reduce: str, dtype: str, target: str, key: int, params_sha256: str,
                 dataset: str, length: int, image_shape, shard_size: int) -> dict:
    """The manifest of a request; two requests write the same maps iff their manifests agree (versions aside)."""
    return {"format": FORMAT, "method": method, "options": options, "reduce": reduce, "dtype": dtype,
            "target": target, "key": key, "params_sha256": params_sha256,
            "dataset": {"name": dataset, "length": length, "image_shape": list(image_shape)},
            "shard_size": shard_size, "versions": _versions()}


def _check_manifest(path: str, wanted: dict) -> None:
    with open(path) as fh:
        found = json.load(fh)
    differ = [k for k in wanted if k != "versions" and found.get(k) != wanted[k]]
    if differ:
        details = "; ".join(f"{k}: folder has {found.get(k)!r}, asked {wanted[k]!r}" for k in differ)
        raise ValueError(f"{os.path.dirname(path) or '.'} holds other maps ({details}); "
                         "use another folder or delete this one")


def shard_path(folder: str, shard: int) -> str:
    """The file of shard number ``shard`` in ``folder``."""
    return os.path.join(folder, f"shard-{shard:05d}.safetensors")


def extract(model_fn, params, dataset: Dataset, method: str, out: str, *, options: dict | None = None,
            reduce: str = "abs_sum", dtype: str = "float32", target: str = "label", key: int = 0,
            shard_size: int = 1024, batch_size: int = 64, dataset_name: str | None = None, device=None,
            num_workers: int = 0, part: tuple[int, int] | None = None, progress: bool = True) -> dict:
    r"""Maps of every sample of ``dataset`` by ``method``, written to the folder ``out`` as sharded safetensors.

    Each map is :math:`R(M(f, x_i, y_i))`, ``[H, W]``: the method's map of the sample's ``target``
    (``"label"``: its label; ``"predicted"``: the model's top class), pixel maps reduced over channels by
    ``reduce`` (``"abs_sum"``: :math:`\sum_c |a_c|`), CAMs upsampled to the input size; stored in ``dtype``.
    For Hooker et al.'s ROAR/KAR ("A Benchmark for Interpretability Methods in Deep Neural Networks",
    NeurIPS 2019). Resumable at shard granularity; a folder holding maps of another request (method,
    options, weights, dataset, ...) is refused. Under ``torchrun`` each rank computes its share of the shards.

    Args:
        model_fn, params: the model, from :func:`fxai.functional` (in eval mode).
        dataset: a map-style dataset of ``(image, label)`` or ``(image, label, mask)``.
        method: a spec (see :mod:`fxai.roar.methods`): ``"gradient"``, ``"smoothgrad_sq(gradient)"``,
            ``"random"``, ``"sobel"``, ``"ground_truth"``.
        out: the map folder.
        options: keyword options of the method (JSON values), e.g. ``{"steps": 32}``.
        key: seed of randomised methods; shard ``k`` uses :func:`shard_key` ``(key, k)``.
        shard_size, batch_size: samples per file and per call of the method.
        dataset_name: recorded in the manifest (default: the dataset's ``repr``).
        part: ``(i, n)`` computes only the shards ``k ≡ i (mod n)`` (default: this process's torchrun rank
            and world size), for processes sharing the work without a process group.

    Returns:
        The manifest (also in ``out/manifest.json``).

    Example:
        >>> data = fxai.data.Shapes(8, size=32, classes=5)
        >>> manifest = fxai.roar.extract(model_fn, params, data, "gradient", "maps-gradient", shard_size=4)
        >>> fxai.roar.load_maps("maps-gradient").shape
        torch.Size([8, 32, 32])
    """
    check_positive_int(shard_size, name="shard_size")
    check_positive_int(batch_size, name="batch_size")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))} (maps are never quantised); got {dtype!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(map(repr, TARGETS))}; got {target!r}")
    if isinstance(key, bool) or not isinstance(key, int):
        raise TypeError(f"key must be an int seed, got {type(key).__name__}")
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"dataset must be a map-style torch.utils.data.Dataset, got {type(dataset).__name__}")
    spec = methods.canonical(method)
    options = _json_safe(dict(options or {}))
    make = methods.make(spec, options, reduce=reduce)
    length = len(dataset)
    if length == 0:
        raise ValueError("dataset is empty")
    image = torch.as_tensor(collate([dataset[0]])[0][0])
    manifest = manifest_for(method=spec, options=options, reduce=reduce, dtype=dtype, target=target, key=key,
                            params_sha256=params_hash(params), dataset=dataset_name or repr(dataset), length=length,
                            image_shape=image.shape, shard_size=shard_size)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "manifest.json")
    if os.path.exists(path):
        _check_manifest(path, manifest)
    else:
        write_json(path, manifest)
        _check_manifest(path, manifest)  # another process may have won the race with another request

    rank, world = dist.init(device) if part is None else _part(part)
    shards = -(-length // shard_size)
    todo = [k for k in range(rank, shards, world) if not os.path.exists(shard_path(out, k))]
    from .._core.progress import progress_bar

    def on_disk() -> int:
        return sum(min(shard_size, length - j * shard_size) for j in range(shards) if os.path.exists(shard_path(out, j)))

    # one bar per command: rank 0 counts every rank's shards as they land; none for work already done
    bar = progress_bar(total=length, initial=on_disk(), unit="map", desc=f"maps of {spec} ({dataset_name or 'data'})",
                       disable=not progress or rank != 0 or not todo)
    for k in todo:
        maps = _shard(model_fn, params, dataset, make, k, shard_size, batch_size, target=target,
                      key=shard_key(key, k), dtype=DTYPES[dtype], device=device, num_workers=num_workers, bar=bar)
        _save_shard(out, k, maps, k * shard_size, spec)
        if world > 1:
            bar.update(on_disk() - bar.n)
    bar.close()
    if part is None:
        dist.barrier()
    return manifest


def _part(part) -> tuple[int, int]:
    if (not isinstance(part, (tuple, list)) or len(part) != 2 or not all(isinstance(v, int) for v in part)
            or not 0 <= part[0] < part[1]):
        raise ValueError(f"part must be a pair (i, n) of ints with 0 <= i < n, got {part!r}")
    return int(part[0]), int(part[1])


def _shard(model_fn, params, dataset, make, k, shard_size, batch_size, *, target, key, dtype, device, num_workers,
           bar):
    start, stop = k * shard_size, min((k + 1) * shard_size, len(dataset))
    gen = torch.Generator().manual_seed(key)
    parts = []
    batches = _batches(dataset, start, stop, batch_size, num_workers)
    in_memory = isinstance(dataset, TensorData) and num_workers == 0  # nothing to overlap: no thread
    for images, labels, masks in batches if in_memory else _prefetched(batches):
        x = images.to(device) if device is not None else images
        if target == "label":
            tgt = labels.to(x.device)
        else:
            with torch.no_grad():
                tgt = model_fn(params, x).argmax(-1)
        amap = make(model_fn, params, x, tgt, masks=None if masks is None else masks.to(x.device), key=gen)
        if not torch.isfinite(torch.stack(torch.aminmax(amap))).all():  # one pass; NaN propagates
            raise ValueError(f"the maps of samples {start}..{stop - 1} hold NaN or infinite values")
        parts.append(amap.to("cpu", dtype))
        bar.update(x.shape[0])
    return torch.cat(parts)


def _batches(dataset, start: int, stop: int, batch_size: int, num_workers: int):
    """``(images, labels, masks or None)`` batches of samples ``start ... stop - 1``. Tensors in memory are
    sliced and the synthetic shapes rendered a batch at a time; other datasets go through a ``DataLoader``."""
    from ..data.synthetic import Shapes

    if isinstance(dataset, (Shapes, TensorData)) and num_workers == 0:
        for a in range(start, stop, batch_size):
            b = min(a + batch_size, stop)
            if isinstance(dataset, Shapes):
                yield tuple(dataset.batch(range(a, b)))
            else:
                yield dataset.images[a:b], dataset.labels[a:b], None if dataset.masks is None else dataset.masks[a:b]
        return
    yield from DataLoader(Subset(dataset, range(start, stop)), batch_size=batch_size, shuffle=False,
                          collate_fn=collate, num_workers=num_workers)


def _prefetched(iterable, depth: int = 2):
    """The items of ``iterable``, produced by a background thread up to ``depth`` ahead, so that reading and
    decoding the next batch overlaps the method's computation (torch releases the GIL in its kernels)."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        pass
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as err:  # noqa: BLE001 - re-raised in the consumer
            items.put(err)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _save_shard(out, k, maps, start, spec):
    from safetensors.torch import save_file

    index = torch.arange(start, start + maps.shape[0], dtype=torch.long)
    write_atomic(shard_path(out, k), lambda p: save_file({"maps": maps.contiguous(), "index": index}, p,
                                                          metadata={"method": spec}))


def read_manifest(folder: str) -> dict:
    """The extraction's manifest in ``folder`` (a clear error where there is none yet)."""
    path = os.path.join(folder, "manifest.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no maps in {folder}: {path} is missing (run fxai.roar.extract first)")
    with open(path) as fh:
        return json.load(fh)


def load_maps(folder: str, *, device=None) -> torch.Tensor:
    """All maps of a map folder, ``[N, H, W]`` in dataset order (shards read through safetensors' memory map).

    Example:
        >>> maps = fxai.roar.load_maps("maps-gradient")
    """
    from safetensors import safe_open

    manifest = read_manifest(folder)
    length, size = manifest["dataset"]["length"], manifest["shard_size"]
    shards = -(-length // size)
    missing = [k for k in range(shards) if not os.path.exists(shard_path(folder, k))]
    if missing:
        raise FileNotFoundError(f"{folder} is incomplete: {len(missing)} of {shards} shards missing "
                                f"(first: {os.path.basename(shard_path(folder, missing[0]))}); run the extraction again")
    h, w = manifest["dataset"]["image_shape"][-2:]
    out = torch.empty(length, h, w, dtype=DTYPES[manifest["dtype"]])
    for k in range(shards):
        with safe_open(shard_path(folder, k), framework="pt") as fh:
            out[k * size:k * size + size] = fh.get_tensor("maps")
    return out if device is None else out.to(device)

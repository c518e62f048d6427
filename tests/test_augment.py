"""Random-shift augmentation (``lipdeq train --augment-shift S``): the translation against a
per-pixel loop, its bad input, and that a training run honours it, stays resumable bit for bit,
and refuses it where there are no images."""
import json
import os

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lipdeq.cli import main as cli_main
from lipdeq.errors import OptionConflict
from lipdeq.training.data import random_shifts, shift_images
from lipdeq.training.checkpoint import build_model, read_checkpoint
from lipdeq.training.loop import TrainConfig, train
from lipdeq.training.rundir import check_resume_matches

TINY = dict(dataset="mnist-5k", holdout=4700, hidden=16, epochs=2, batch_size=100, tol=1e-3,
            max_iter=50, augment_shift=2)


def _shift_by_loop(x, shifts, c, H, W):
    """out[n, ch, y, x] = in[n, ch, y − dy, x − dx] inside the image, else 0 (pixel by pixel)."""
    img = x.view(-1, c, H, W)
    out = torch.zeros_like(img)
    for n, (dy, dx) in enumerate(shifts.tolist()):
        for y in range(H):
            for xx in range(W):
                if 0 <= y - dy < H and 0 <= xx - dx < W:
                    out[n, :, y, xx] = img[n, :, y - dy, xx - dx]
    return out.reshape(x.shape)


@pytest.mark.parametrize("c,H,W,max_shift", [(1, 28, 28, 2), (2, 5, 6, 3), (3, 4, 4, 6)])
def test_shift_images_matches_a_pixel_loop(c, H, W, max_shift):
    g = torch.Generator().manual_seed(c * 100 + H)
    x = torch.rand(9, c * H * W, generator=g)
    shifts = random_shifts(9, max_shift, g)
    assert shifts.min() >= -max_shift and shifts.max() <= max_shift
    got = shift_images(x, shifts, (H, W))
    assert torch.equal(got, _shift_by_loop(x, shifts, c, H, W))


def test_an_empty_batch_is_returned_empty():
    assert shift_images(torch.rand(0, 784), torch.zeros(0, 2, dtype=torch.int64)).shape == (0, 784)


def test_zero_shift_is_the_identity_and_values_stay_in_the_unit_box():
    x = torch.rand(4, 784)
    assert torch.equal(shift_images(x, torch.zeros(4, 2, dtype=torch.int64)), x)
    y = shift_images(x, torch.tensor([[27, -27], [-1, 1], [0, 5], [30, 0]]))
    assert y.min() >= 0 and y.max() <= 1
    assert torch.count_nonzero(y[3]) == 0  # shifted out of the image entirely
    z = shift_images(x[:1], torch.tensor([[-128, 0]], dtype=torch.int8))  # abs() overflows in int8
    assert torch.count_nonzero(z) == 0


def test_random_shifts_cover_every_value_and_are_reproducible():
    a = random_shifts(2000, 2, torch.Generator().manual_seed(0))
    b = random_shifts(2000, 2, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.int64
    assert set(a.flatten().tolist()) == {-2, -1, 0, 1, 2}


@pytest.mark.parametrize("inputs,shifts", [
    (torch.rand(2, 28, 28), torch.zeros(2, 2, dtype=torch.int64)),  # not flattened
    (torch.rand(2, 700), torch.zeros(2, 2, dtype=torch.int64)),      # not whole images
    (torch.rand(2, 784), torch.zeros(3, 2, dtype=torch.int64)),      # one shift per image
    (torch.rand(2, 784), torch.zeros(2, 2)),                         # float shifts
    (torch.rand(2, 784), torch.zeros(2, 2, dtype=torch.bool)),       # bool shifts
])
def test_bad_input_is_a_value_error(inputs, shifts):
    with pytest.raises(ValueError):
        shift_images(inputs, shifts)


def _files(out):
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        rows = [{k: v for k, v in json.loads(line).items()
                 if k not in ("epoch_s", "projection_s")} for line in fh]
    return rows, ckpt


class Interrupted(Exception):
    pass


def test_training_honours_the_shift_and_resumes_bit_for_bit(tmp_path, monkeypatch):
    plain, shifted, crashed = (str(tmp_path / n) for n in ("plain", "shifted", "crashed"))
    seen = []
    real = shift_images
    monkeypatch.setattr("lipdeq.training.loop.shift_images",
                        lambda u, s, *a: seen.append(s.abs().max()) or real(u, s, *a))
    train(TrainConfig(**dict(TINY, augment_shift=0)), plain, progress=False)
    assert seen == []  # no augmentation: nothing drawn, the runs of before are unchanged
    train(TrainConfig(**TINY), shifted, progress=False)
    assert len(seen) == 6 and 0 < max(seen) <= 2  # every step, within ±S
    rows_plain, _ = _files(plain)
    rows_shifted, ck_shifted = _files(shifted)
    assert rows_plain[0]["train_loss"] != rows_shifted[0]["train_loss"]

    _crash_in_epoch_2(TrainConfig(**TINY), crashed)
    torch.manual_seed(999)  # the global RNG meanwhile must not matter
    train(TrainConfig(**TINY), crashed, resume=True, progress=False)
    rows_crashed, ck_crashed = _files(crashed)
    assert rows_crashed == rows_shifted
    for k, v in ck_shifted["model"].items():
        assert torch.equal(v, ck_crashed["model"][k]), k
    assert torch.equal(ck_shifted["rng"]["order"], ck_crashed["rng"]["order"])


@pytest.mark.parametrize("value", [-1, 1.5, True, "2", 28, 100000])
def test_bad_shift_values_are_refused(value):
    # found by review: 100000 padded every batch by 10^5 pixels (a 15 TB allocation, traceback)
    with pytest.raises(ValueError, match=r"augment_shift .*\[0, 27\]"):
        TrainConfig(augment_shift=value).validate()


def _crash_in_epoch_2(config, out):
    steps = []

    def crash(opt, args, kwargs):  # 3 steps per epoch: the 5th is inside epoch 2
        steps.append(1)
        if len(steps) == 5:
            raise Interrupted()
    handle = register_optimizer_step_pre_hook(crash)
    try:
        with pytest.raises(Interrupted):
            train(config, out, progress=False)
    finally:
        handle.remove()


def test_resume_with_another_shift_is_refused(tmp_path):
    """Found by review: a run trained with shift 0 resumed with --augment-shift 2 trained epoch 2
    shifted while config.json still said 0."""
    out = str(tmp_path / "run")
    _crash_in_epoch_2(TrainConfig(**dict(TINY, augment_shift=0)), out)
    before = open(os.path.join(out, "metrics.jsonl")).read()
    with pytest.raises(ValueError, match="augment_shift=0 \\(now 2\\)"):
        train(TrainConfig(**TINY), out, resume=True, progress=False)
    assert open(os.path.join(out, "metrics.jsonl")).read() == before


def test_resume_of_a_run_from_before_the_option_reads_it_as_unshifted(tmp_path):
    out = str(tmp_path / "run")
    _crash_in_epoch_2(TrainConfig(**dict(TINY, augment_shift=0)), out)
    path = os.path.join(out, "config.json")
    config = json.load(open(path))
    del config["augment_shift"]
    json.dump(config, open(path, "w"))
    rows = train(TrainConfig(**dict(TINY, augment_shift=0)), out, resume=True, progress=False)
    assert [r["epoch"] for r in rows] == [1, 2]
    ckpt = read_checkpoint(os.path.join(out, "last.pt"))
    with pytest.raises(ValueError, match="augment_shift=0 \\(now 2\\)"):  # a shift still is not
        check_resume_matches(ckpt, build_model(ckpt["model_config"]), TrainConfig(**TINY), out)


def _idx_dir(tmp_path, H, W):
    import numpy as np
    from lipdeq.training.data import MNIST_FILES, write_idx
    rng = np.random.default_rng(0)
    d = tmp_path / f"idx{H}x{W}"
    d.mkdir()
    for split, n in (("train", 40), ("test", 10)):
        img, lab = MNIST_FILES[split]
        write_idx(str(d / img), rng.integers(0, 256, size=(n, H, W), dtype=np.uint8))
        write_idx(str(d / lab), rng.integers(0, 10, size=n, dtype=np.uint8))
    return str(d)


@pytest.mark.parametrize("H,W,extra,word", [
    (20, 20, ["--model", "conv", "--channels", "4"], "28x28"),
    (14, 56, ["--model", "conv", "--channels", "4"], "14x56"),  # 784 pixels, not 28x28
    (14, 56, ["--augment-shift", "14"], "--augment-shift 14"),
])
def test_images_that_do_not_fit_are_refused_before_anything_is_written(tmp_path, capsys, H, W,
                                                                       extra, word):
    """Found by review: these failed inside epoch 1 (config.json already written), or shifted
    14x56 images as if they were 28x28."""
    out = tmp_path / "run"
    rc = cli_main(["train", "--dataset", "mnist", "--data-dir", _idx_dir(tmp_path, H, W),
                   "--epochs", "1", "--out", str(out), "--quiet", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and word in err[0], err
    assert not out.exists()


def test_shifts_use_the_datasets_own_image_size(tmp_path, monkeypatch):
    sizes = []
    real = shift_images
    monkeypatch.setattr("lipdeq.training.loop.shift_images",
                        lambda u, s, size: sizes.append(size) or real(u, s, size))
    train(TrainConfig(dataset="mnist", data_dir=_idx_dir(tmp_path, 14, 56), hidden=8, epochs=1,
                      batch_size=20, augment_shift=3), str(tmp_path / "run"), progress=False)
    assert sizes and set(sizes) == {(14, 56)}


def test_shift_without_images_is_refused_by_library_and_cli(tmp_path, capsys):
    with pytest.raises(OptionConflict, match="--augment-shift"):
        TrainConfig(dataset="function", augment_shift=1).validate()
    out = tmp_path / "run"
    rc = cli_main(["train", "--dataset", "function", "--augment-shift", "1", "--out", str(out),
                   "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--augment-shift" in err[0]
    assert not out.exists()

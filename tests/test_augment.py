"""Random-shift augmentation (``lipdeq train --augment-shift S``): the translation against a
per-pixel loop, its bad input, and that a training run honours it, stays resumable bit for bit,
and refuses it where there are no images."""
import os

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lipdeq.cli import main as cli_main
from lipdeq.errors import OptionConflict
from lipdeq.training.data import random_shifts, shift_images
from lipdeq.training.loop import TrainConfig, train

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


def test_zero_shift_is_the_identity_and_values_stay_in_the_unit_box():
    x = torch.rand(4, 784)
    assert torch.equal(shift_images(x, torch.zeros(4, 2, dtype=torch.int64)), x)
    y = shift_images(x, torch.tensor([[27, -27], [-1, 1], [0, 5], [30, 0]]))
    assert y.min() >= 0 and y.max() <= 1
    assert torch.count_nonzero(y[3]) == 0  # shifted out of the image entirely


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
])
def test_bad_input_is_a_value_error(inputs, shifts):
    with pytest.raises(ValueError):
        shift_images(inputs, shifts)


def _files(out):
    ckpt = torch.load(os.path.join(out, "last.pt"), weights_only=True)
    with open(os.path.join(out, "metrics.jsonl")) as fh:
        rows = [{k: v for k, v in __import__("json").loads(line).items()
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

    steps = []

    def crash(opt, args, kwargs):  # inside epoch 2 (3 steps per epoch)
        steps.append(1)
        if len(steps) == 5:
            raise Interrupted()
    handle = register_optimizer_step_pre_hook(crash)
    try:
        with pytest.raises(Interrupted):
            train(TrainConfig(**TINY), crashed, progress=False)
    finally:
        handle.remove()
    torch.manual_seed(999)  # the global RNG meanwhile must not matter
    train(TrainConfig(**TINY), crashed, resume=True, progress=False)
    rows_crashed, ck_crashed = _files(crashed)
    assert rows_crashed == rows_shifted
    for k, v in ck_shifted["model"].items():
        assert torch.equal(v, ck_crashed["model"][k]), k
    assert torch.equal(ck_shifted["rng"]["order"], ck_crashed["rng"]["order"])


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_bad_shift_values_are_refused(value):
    with pytest.raises(ValueError, match="augment_shift"):
        TrainConfig(augment_shift=value).validate()


def test_shift_without_images_is_refused_by_library_and_cli(tmp_path, capsys):
    with pytest.raises(OptionConflict, match="--augment-shift"):
        TrainConfig(dataset="function", augment_shift=1).validate()
    out = tmp_path / "run"
    rc = cli_main(["train", "--dataset", "function", "--augment-shift", "1", "--out", str(out),
                   "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--augment-shift" in err[0]
    assert not out.exists()

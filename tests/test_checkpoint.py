"""Checkpoints (lipdeq.training.checkpoint): docs/design.md §6 format, atomic writes, validation on read."""
import io
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

import lipdeq
from lipdeq.training.checkpoint import (FORMAT, VERSION, build_model, load_checkpoint,
                                       read_checkpoint, save_checkpoint)
from lipdeq.errors import CheckpointError


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(in_features=5, hidden=6, out_features=3, gamma=0.5)
    cfg.update(kw)
    return lipdeq.ImplicitNetwork(**cfg)


def _payload(model, epoch):
    return {"format": FORMAT, "version": VERSION, "model": model.state_dict(),
            "model_config": model.config(), "weights": model.weights(),
            "optimizer": None, "scheduler": None,
            "rng": {"torch": torch.get_rng_state()}, "epoch": epoch}


def _leftovers(directory):
    return sorted(n for n in os.listdir(directory) if n.startswith(".tmp"))


def test_round_trip_and_rebuild(tmp_path):
    model = _model()
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, _payload(model, 3))
    ckpt = torch.load(path, weights_only=True)  # no pickled objects
    assert ckpt["format"] == FORMAT and ckpt["version"] == VERSION and ckpt["epoch"] == 3
    assert read_checkpoint(path)["epoch"] == 3
    u = torch.rand(4, 5)
    for rebuilt in (load_checkpoint(path), lipdeq.ImplicitNetwork.from_checkpoint(path)):
        assert not rebuilt.training
        assert rebuilt.config() == model.config()
        for k, v in model.state_dict().items():
            assert torch.equal(rebuilt.state_dict()[k], v), k
        with torch.no_grad():
            assert torch.allclose(rebuilt(u), model.eval()(u), atol=1e-6)
    assert _leftovers(tmp_path) == []


def test_one_entry_point_for_every_model_class(tmp_path):
    conv = lipdeq.ImplicitConvNetwork(in_shape=(1, 6, 6), channels=2, out_features=3,
                                      input_kernel_size=3, pool=3)
    path = str(tmp_path / "conv.pt")
    save_checkpoint(path, _payload(conv, 1))
    assert isinstance(lipdeq.load_checkpoint(path), lipdeq.ImplicitConvNetwork)
    with pytest.raises(TypeError, match="ImplicitConvNetwork.*lipdeq.load_checkpoint"):
        lipdeq.ImplicitNetwork.from_checkpoint(path)


def test_checkpoint_file_mode_follows_umask(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(str(path), _payload(_model(), 1))
    (tmp_path / "plain").write_text("x")  # what open() gives under the current umask
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_overwrite_replaces_atomically(tmp_path):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, _payload(_model(), 1))
    save_checkpoint(path, _payload(_model(), 2))
    assert read_checkpoint(path)["epoch"] == 2
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_old_checkpoint_and_leaves_no_temp_file(tmp_path, monkeypatch, exc):
    path = str(tmp_path / "last.pt")
    save_checkpoint(path, _payload(_model(), 1))
    before = open(path, "rb").read()
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        raise exc

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(type(exc)):
        save_checkpoint(path, _payload(_model(), 2))
    monkeypatch.undo()
    assert open(path, "rb").read() == before
    assert read_checkpoint(path)["epoch"] == 1
    assert load_checkpoint(path).hidden == 6
    assert _leftovers(tmp_path) == []
    assert os.listdir(tmp_path) == ["last.pt"]


def test_process_killed_while_writing_keeps_old_checkpoint(tmp_path):
    """A hard kill (os._exit, no cleanup) in the middle of the checkpoint write in a child process."""
    path = str(tmp_path / "last.pt")
    script = textwrap.dedent(f"""
        import io, os, torch, lipdeq
        from lipdeq.training.checkpoint import FORMAT, VERSION, save_checkpoint
        torch.manual_seed(0)
        m = lipdeq.ImplicitNetwork(5, 6, 3, gamma=0.5)
        def payload(epoch):
            return {{"format": FORMAT, "version": VERSION, "model": m.state_dict(),
                    "model_config": m.config(), "weights": m.weights(), "optimizer": None,
                    "scheduler": None, "rng": {{}}, "epoch": epoch}}
        save_checkpoint({path!r}, payload(1))
        def dying_replace(src, dst):  # the temp file is written, the rename never happens
            os._exit(17)
        os.replace = dying_replace
        save_checkpoint({path!r}, payload(2))
        os._exit(0)  # not reached
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 17, proc.stderr
    assert len(_leftovers(tmp_path)) == 1  # the killed writer's partial temp file ...
    assert read_checkpoint(path)["epoch"] == 1  # ... never replaced the old checkpoint
    assert load_checkpoint(path).hidden == 6
    save_checkpoint(path, _payload(_model(), 2))  # the next save is not disturbed by it
    assert read_checkpoint(path)["epoch"] == 2


def _valid_bytes(tmp_path):
    path = str(tmp_path / "valid.pt")
    save_checkpoint(path, _payload(_model(), 1))
    return open(path, "rb").read()


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "random bytes", "truncated",
                                  "text"])
def test_unreadable_checkpoint_raises_checkpoint_error(tmp_path, case):
    path = tmp_path / "bad.pt"
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif case == "truncated":
        good = _valid_bytes(tmp_path)
        path.write_bytes(good[: len(good) // 2])
    elif case == "text":
        path.write_text("not a checkpoint\n")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        load_checkpoint(str(path))


class _NotATensor:
    pass


@pytest.mark.parametrize("case", ["not a dict", "no format", "other format", "version 2",
                                  "no weights", "no epoch", "weights not tensors",
                                  "epoch not an int", "pickled object"])
def test_invalid_checkpoint_content(tmp_path, case):
    good = _payload(_model(), 1)
    path = str(tmp_path / "x.pt")
    obj = dict(good)
    if case == "not a dict":
        obj = [1, 2, 3]
    elif case == "no format":
        del obj["format"]
    elif case == "other format":
        obj["format"] = "something-else"
    elif case == "version 2":
        obj["version"] = 2
    elif case == "no weights":
        del obj["weights"]
    elif case == "no epoch":
        del obj["epoch"]
    elif case == "weights not tensors":
        obj["weights"] = {"A": [[1.0]]}
    elif case == "epoch not an int":
        obj["epoch"] = "3"
    elif case == "pickled object":  # refused by weights_only loading
        obj["optimizer"] = _NotATensor()
    torch.save(obj, path)
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    # a code-carrying pickle is named as such, not as a corrupt file (item 7)
    assert ("refused" in str(info.value)) == (case == "pickled object"), info.value
    assert "corrupt" not in str(info.value)


def test_state_dict_that_does_not_match_config(tmp_path):
    payload = _payload(_model(), 1)
    payload["model_config"] = dict(payload["model_config"], hidden=7)
    path = str(tmp_path / "x.pt")
    save_checkpoint(path, payload)
    assert read_checkpoint(path)["epoch"] == 1  # the container is fine ...
    with pytest.raises(CheckpointError, match="model config"):
        load_checkpoint(path)  # ... the model is not


def test_build_model():
    m = build_model(dict(_model().config(), model="dense"))
    assert isinstance(m, lipdeq.ImplicitNetwork) and m.hidden == 6
    with pytest.raises(ValueError, match="model"):
        build_model({"model": "transformer"})


def test_nemon_checkpoint_weights_are_the_built_matrix(tmp_path):
    model = _model(condition="nemon")
    with torch.no_grad():  # make the parameterization non-trivial
        model.A_raw["d"].copy_(torch.linspace(-0.5, 0.5, 6))
        model.A_raw["M"].add_(0.1)
    path = str(tmp_path / "n.pt")
    save_checkpoint(path, _payload(model, 1))
    ckpt = torch.load(path, weights_only=True)
    M, d = (ckpt["model"][f"parametrizations.A.original{i}"].double() for i in (0, 1))  # (M, d)
    built = (0.5 * torch.eye(6, dtype=torch.float64) + torch.diag(torch.exp(-d)) @ M
             @ torch.diag(torch.exp(d)) - torch.diag(M.abs().sum(1)))
    assert torch.allclose(ckpt["weights"]["A"].double(), built, atol=1e-6)
    rebuilt = load_checkpoint(path)
    assert torch.equal(rebuilt.effective_A(), ckpt["weights"]["A"])


def test_legacy_raw_keys_still_load(tmp_path):
    """Checkpoints from before A became a torch parametrization stored ``A_raw.M``/``A_raw.d``."""
    model = _model(condition="nemon")
    with torch.no_grad():
        model.A_raw["d"].copy_(torch.linspace(-0.5, 0.5, 6))
    legacy = {("A_raw." + k if k.startswith("parametrizations.A.original") else k): v
              for k, v in model.state_dict().items()}
    legacy = {k.replace("A_raw.parametrizations.A.original0", "A_raw.M")
              .replace("A_raw.parametrizations.A.original1", "A_raw.d"): v for k, v in legacy.items()}
    assert "A_raw.M" in legacy and "A_raw.d" in legacy
    fresh = _model(condition="nemon")
    fresh.load_state_dict(legacy)
    assert torch.equal(fresh.effective_A(), model.effective_A())


def test_parameterized_conditions_are_torch_parametrizations():
    from torch.nn.utils import parametrize
    for cond in ("nemon", "mu_inf_weighted", "pf", "monotone", "lben"):
        m = _model(condition=cond)
        assert parametrize.is_parametrized(m, "A"), cond
        raw = m.A_raw
        assert raw and all(p.requires_grad and p.is_leaf for p in raw.values())
        m.effective_A().sum().backward()
        assert all(p.grad is not None for p in raw.values()), cond
    plain = _model(condition="mu_inf")
    assert not parametrize.is_parametrized(plain, "A") and plain.A.is_leaf


def test_a_file_that_is_not_a_torch_archive_is_named_so(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"dataset": "mnist-5k"}\n')
    with pytest.raises(CheckpointError, match="not a lipdeq checkpoint") as info:
        read_checkpoint(str(path))
    assert "refused" not in str(info.value)  # not blamed on a code-carrying pickle


def _conv(**kw):
    torch.manual_seed(0)
    cfg = dict(in_shape=(1, 6, 6), channels=2, out_features=3, input_kernel_size=3, pool=3,
               gamma=0.5)
    return lipdeq.ImplicitConvNetwork(**dict(cfg, **kw))


@pytest.mark.parametrize("case", ["dense A = 5I", "dense norm_inf", "conv kernel", "NaN in B"])
def test_load_refuses_weights_outside_the_models_own_set(tmp_path, case):
    model = _conv() if case == "conv kernel" else _model(
        condition="norm_inf" if case == "dense norm_inf" else "mu_inf")
    state = model.state_dict()
    if case == "dense A = 5I":
        state["A"] = 5 * torch.eye(6)
    elif case == "dense norm_inf":  # μ∞ of -0.6I is -0.6 (fine), ‖-0.6I‖∞ = 0.6 > γ = 0.5
        state["A"] = -0.6 * torch.eye(6)
    elif case == "conv kernel":
        state["A"] = 3 * state["A"] + torch.ones_like(state["A"])
    else:
        state["B"] = state["B"].clone()
        state["B"][0, 0] = float("nan")
    payload = dict(_payload(model, 1), model=state)
    path = str(tmp_path / "x.pt")
    save_checkpoint(path, payload)
    with pytest.raises(CheckpointError, match="NaN" if case == "NaN in B" else "outside") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and path in str(info.value)


@pytest.mark.parametrize("make", [_model, _conv])
def test_projected_weights_at_the_boundary_load(tmp_path, make):
    model = make()
    with torch.no_grad():
        model.A.mul_(50.0)  # far outside, then exactly projected: μ∞ = γ up to float32 rounding
    model.project_()
    assert abs(float(model.mu_inf()) - 0.5) < 1e-6
    path = str(tmp_path / "x.pt")
    save_checkpoint(path, _payload(model, 1))
    assert torch.equal(load_checkpoint(path).A, model.A)


@pytest.mark.parametrize("case", ["no optimizer", "scheduler None", "rng not a dict",
                                  "rng order missing", "rng torch a list"])
def test_check_resumable_names_what_resuming_would_read(case):
    from lipdeq.training.checkpoint import check_resumable
    good = dict(_payload(_model(), 1), optimizer={"state": {}, "param_groups": []},
                scheduler={"last_epoch": 1},
                rng={"order": torch.Generator().get_state(), "torch": torch.get_rng_state()})
    assert check_resumable(good, "x.pt") is good
    bad = dict(good, rng=dict(good["rng"]))
    if case == "no optimizer":
        del bad["optimizer"]
    elif case == "scheduler None":
        bad["scheduler"] = None
    elif case == "rng not a dict":
        bad["rng"] = [1, 2]
    elif case == "rng order missing":
        del bad["rng"]["order"]
    else:
        bad["rng"]["torch"] = [1, 2, 3]
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        check_resumable(bad, "x.pt")

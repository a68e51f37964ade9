"""pycnn.train: losses, metrics, fit/evaluate, checkpoints and resume, the pycnn-vs-torch loss
curve, and DistributedDataParallel with 2 gloo processes."""
import copy
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

import pycnn.models as M
import pycnn.nn as pnn
import pycnn.train as T
from train_helpers import ddp_worker, small_cnn, toy_classification


def toy_segmentation(n=12, seed=0, size=16):
    """Bright squares on noise; mask [N, 1, H, W] float, as pycnn.data.galaxies gives."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.rand(n, 1, size, size, generator=g)
    m = torch.zeros(n, 1, size, size)
    for i in range(n):
        r, c = torch.randint(0, size - 6, (2,), generator=g).tolist()
        m[i, :, r:r + 6, c:c + 6] = 1
    return TensorDataset(x + 0.8 * m, m)


# ---- losses and metrics -------------------------------------------------------------------

def test_hinge_loss_matches_definition():
    scores = torch.tensor([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])
    target = torch.tensor([0, 1, 2])
    # cs231n's worked example: 2.9, 0, 12.9 -> mean 5.27
    torch.testing.assert_close(T.multiclass_hinge_loss(scores, target), torch.tensor((2.9 + 0 + 12.9) / 3))
    s = torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 5, (4, 3, 3))
    v = s.detach()
    manual = sum(max(0.0, float(v[n, j, a, b] - v[n, t[n, a, b], a, b] + 1))
                 for n in range(4) for a in range(3) for b in range(3) for j in range(5) if j != t[n, a, b]) / 36
    assert abs(T.multiclass_hinge_loss(s, t).item() - manual) < 1e-12
    T.multiclass_hinge_loss(s, t).backward()
    assert s.grad.abs().sum() > 0


def test_cross_entropy_and_get_loss():
    s, t = torch.randn(5, 3), torch.randint(0, 3, (5,))
    torch.testing.assert_close(T.get_loss("cross_entropy")(s, t), -torch.log_softmax(s, 1)[range(5), t].mean())
    assert T.get_loss("hinge") is T.multiclass_hinge_loss
    with pytest.raises(ValueError, match="unknown loss 'l2'"):
        T.get_loss("l2")


def test_confusion_matrix_accuracy_iou_dice():
    pred = torch.tensor([0, 1, 1, 2, 2, 2])
    target = torch.tensor([0, 1, 2, 2, 2, 0])
    cm = T.confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 0, 1], [0, 1, 0], [0, 1, 2]]
    assert T.accuracy(pred, target) == pytest.approx(4 / 6)
    assert T.accuracy(torch.nn.functional.one_hot(pred, 3).float(), target) == pytest.approx(4 / 6)
    # binary masks: TP 2, FP 1, FN 1 -> IoU 2/4, Dice 4/6
    p = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]])
    t = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0]])
    s = T.segmentation_scores(T.confusion_matrix(p, t, 2))
    assert s["iou"] == pytest.approx(0.5) and s["dice"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="targets must be in"):
        T.confusion_matrix(pred, target + 1, 3)


# ---- fit / evaluate -----------------------------------------------------------------------

def test_fit_learns_and_evaluate_restores_mode():
    torch.manual_seed(0)
    model = small_cnn()
    data = toy_classification()
    before = T.evaluate(model, data)
    hist = T.fit(model, data, data, epochs=4, batch_size=8, optimizer="sgd", lr=0.05, progress=False)
    assert len(hist.epochs) == 4 and len(hist.steps) == 4 * 6
    assert hist.epochs[-1]["val_accuracy"] > 0.9 > before["accuracy"]
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]
    model.train()
    after = T.evaluate(model, data)
    assert model.training
    assert after["accuracy"] > 0.9 and after["confusion"].sum() == len(data) and after["num_samples"] == 48


def test_fit_with_hinge_loss_and_adam_step_schedule():
    torch.manual_seed(0)
    model = M.get("linear_classifier", in_channels=1, num_classes=3, image_size=8)
    hist = T.fit(model, toy_classification(), epochs=3, batch_size=16, loss="hinge", optimizer="adam", lr=0.05,
                 schedule="step", progress=False)
    assert hist.epochs[-1]["train_accuracy"] > 0.9
    assert hist.epochs[-1]["lr"] == pytest.approx(0.05 * 0.01)  # both steps of the schedule passed


def test_fit_segmentation_reports_iou():
    torch.manual_seed(0)
    model = M.get("unet", in_channels=1, num_classes=2, depth=1, width=4)
    data = toy_segmentation(n=16)
    hist = T.fit(model, data, data, epochs=8, batch_size=4, lr=0.02, progress=False)
    r = hist.epochs[-1]
    assert {"train_iou", "val_iou", "val_dice"} <= set(r)
    metrics = T.evaluate(model, data)
    assert metrics["iou"] > 0.5 and 0 < metrics["dice"] <= 1
    assert metrics["confusion"].sum() == 16 * 16 * 16


def test_fit_applies_augmentation_to_images_and_masks():
    calls = []

    def flip(images, mask=None):
        calls.append((images.shape, None if mask is None else mask.shape))
        return (images.flip(-1), mask.flip(-1)) if mask is not None else images.flip(-1)

    T.fit(small_cnn(), toy_classification(n=16), epochs=1, batch_size=8, augment=flip, progress=False)
    assert calls == [((8, 1, 8, 8), None)] * 2
    calls.clear()
    T.fit(M.get("unet", depth=1, width=2), toy_segmentation(n=4), epochs=1, batch_size=4, augment=flip,
          progress=False)
    assert calls == [((4, 1, 16, 16), (4, 16, 16))]


def test_fit_shows_progress_bar(capsys):
    torch.manual_seed(0)
    T.fit(small_cnn(), toy_classification(n=16), epochs=1, batch_size=8, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss=" in err and "accuracy=" in err


@pytest.mark.parametrize("kw,match", [
    (dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"), (dict(optimizer="rmsprop"), "optimizer"),
    (dict(schedule="linear"), "schedule"), (dict(task="detect"), "task"),
])
def test_fit_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        T.fit(small_cnn(), toy_classification(n=8), progress=False, **kw)


# ---- checkpoints --------------------------------------------------------------------------

def test_resume_continues_exactly(tmp_path):
    data = toy_classification()
    kw = dict(epochs=3, batch_size=8, optimizer="sgd", lr=0.05, progress=False, seed=3)

    torch.manual_seed(0)
    straight = small_cnn()
    T.fit(straight, data, data, out=str(tmp_path / "a"), **kw)

    torch.manual_seed(0)
    first = small_cnn()
    T.fit(first, data, data, out=str(tmp_path / "b"), max_steps=6, **kw)  # one epoch, then "crash"
    state = T.load_checkpoint(str(tmp_path / "b" / "last.pt"))
    assert state["epoch"] == 1 and state["step"] == 6
    torch.manual_seed(123)
    resumed = small_cnn()  # fresh weights: everything must come from the checkpoint
    hist = T.fit(resumed, data, data, resume=str(tmp_path / "b"), **kw)
    assert [e["epoch"] for e in hist.epochs] == [1, 2, 3]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")
    assert sorted(os.listdir(tmp_path / "b")) == ["best.pt", "last.pt"]  # no temporary files left


def test_checkpoint_errors(tmp_path):
    with pytest.raises(T.CheckpointError, match="not found"):
        T.load_checkpoint(str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(T.CheckpointError, match="cannot read"):
        T.load_checkpoint(str(bad))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(T.CheckpointError, match="not a pycnn checkpoint"):
        T.load_checkpoint(str(other))
    good = tmp_path / "good.pt"
    T.save_checkpoint(str(good), {"model": {"w": torch.ones(2)}})
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:50])
    with pytest.raises(T.CheckpointError, match="cannot read"):
        T.load_checkpoint(str(truncated))
    assert torch.equal(T.load_checkpoint(str(good))["model"]["w"], torch.ones(2))


def test_failed_save_keeps_old_checkpoint(tmp_path):
    path = str(tmp_path / "last.pt")
    T.save_checkpoint(path, {"model": {"v": torch.tensor(1)}})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        T.save_checkpoint(path, {"model": {"v": Unpicklable()}})
    assert int(T.load_checkpoint(path)["model"]["v"]) == 1
    assert os.listdir(tmp_path) == ["last.pt"]


# ---- pycnn layers vs torch.nn layers: the same loss curve ------------------------------------

def test_loss_curve_matches_torch_layers_for_50_steps():
    import pycnn.data as D
    splits = D.get("digits")
    x, y = splits.train.tensors
    # Standardised inputs, as the CLI trains. (On raw [0, 1] pixels LeNet sits on a plateau and
    # then escapes it abruptly; float32 rounding differences of 1e-7 grow 100x per few steps
    # during the escape, whichever layers compute it.)
    train = TensorDataset((x - splits.mean.view(1, -1, 1, 1)) / splits.std.view(1, -1, 1, 1), y)
    torch.manual_seed(0)
    ours = M.get("lenet5", in_channels=1, num_classes=10, image_size=8)
    ref = pnn.to_torch(copy.deepcopy(ours))
    kw = dict(epochs=2, batch_size=32, optimizer="adam", lr=2e-3, schedule="constant", seed=0,
              max_steps=50, progress=False)
    h_ours = T.fit(ours, train, **kw)
    h_ref = T.fit(ref, train, **kw)
    assert len(h_ours.steps) == len(h_ref.steps) == 50
    diff = max(abs(a - b) for a, b in zip(h_ours.steps, h_ref.steps))
    assert diff < 1e-3, f"loss curves differ by {diff}"
    assert h_ours.steps[-1] < 0.6 * h_ours.steps[0]  # it did train


# ---- DistributedDataParallel ---------------------------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_hold_identical_weights(tmp_path):
    torch.manual_seed(0)
    initial = dict(small_cnn().named_parameters())
    mp.spawn(ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert len(r0["steps"]) == len(r1["steps"]) == 2 * 3  # 20 samples per rank, batches of 8
    assert r0["steps"] != r1["steps"]  # each rank saw its own shard
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), f"{name} differs between ranks"
    # (the conv bias before BatchNorm has no gradient: BN subtracts it again)
    for name in ("0.weight", "1.weight", "5.weight", "5.bias"):
        assert not torch.equal(r0["params"][name], initial[name]), f"{name} did not train"
    assert os.path.exists(tmp_path / "ckpt" / "last.pt")  # written once, by rank 0


# ---- any data: DataLoaders (with workers), lists of batches ---------------------------------

def test_fit_and_evaluate_take_a_dataloader_with_workers():
    from torch.utils.data import DataLoader
    data = toy_classification()
    torch.manual_seed(0)
    model = small_cnn()
    loader = DataLoader(data, batch_size=8, shuffle=True, num_workers=2)
    hist = T.fit(model, loader, DataLoader(data, batch_size=16), epochs=3, optimizer="sgd", lr=0.05,
                 progress=False)
    assert len(hist.steps) == 3 * 6 and "val_accuracy" in hist.epochs[-1]
    on_loader = T.evaluate(model, DataLoader(data, batch_size=7, num_workers=2))
    on_dataset = T.evaluate(model, data)
    assert on_loader["num_samples"] == 48 and torch.equal(on_loader["confusion"], on_dataset["confusion"])
    assert on_dataset["accuracy"] > 0.9
    batches = [(x, y) for x, y in DataLoader(data, batch_size=16)]  # a plain list of batches
    assert T.evaluate(model, batches)["accuracy"] == on_dataset["accuracy"]


def test_iterables_that_are_not_batches_are_clear_errors():
    data = toy_classification()
    with pytest.raises(ValueError, match="a list of single samples"):
        T.fit(small_cnn(), [data[i] for i in range(8)], epochs=1, progress=False)
    one_pass = ((x, y) for x, y in [data.tensors])
    with pytest.raises(ValueError, match="one-pass iterator"):
        T.fit(small_cnn(), one_pass, epochs=2, progress=False)


# ---- run folders, resume, self-describing and damage-checked checkpoints ---------------------

def _digits_model(splits, model_name="linear_classifier", **kw):
    torch.manual_seed(0)
    return pnn.normalized(M.get(model_name, in_channels=1, num_classes=10, image_size=8, **kw), splits.mean,
                          splits.std)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """One epoch of a normalised linear classifier on digits, written by fit; tests copy the folder."""
    import pycnn.data as D
    splits = D.digits()
    model = _digits_model(splits)
    folder = tmp_path_factory.mktemp("digits") / "run"
    T.fit(model, splits.train, splits.val, epochs=1, lr=0.05, progress=False, out=str(folder))
    return splits, model, folder


def _copy_run(digits_run, tmp_path):
    import shutil
    splits, _, folder = digits_run
    shutil.copytree(folder, tmp_path / "run")
    return splits, _digits_model(splits), tmp_path / "run"


def test_checkpoint_describes_itself_and_load_gives_a_ready_model(digits_run, tmp_path):
    import pycnn
    splits, model, folder = digits_run
    state = T.load_checkpoint(str(folder / "last.pt"))
    assert state["arch"] == {"name": "linear_classifier", "kwargs": {"in_channels": 1, "num_classes": 10,
                                                                     "image_size": 8},
                             "normalize": True, "class": "torch.nn.modules.container.Sequential"}
    assert state["data"]["name"] == "digits" and state["data"]["options"]["seed"] == 0
    assert state["classes"] == [str(d) for d in range(10)] and state["config"]["lr"] == 0.05
    loaded = pycnn.load(str(folder / "last.pt"))
    assert not loaded.training and loaded.classes == state["classes"]
    x = splits.test.tensors[0]  # raw [0, 1] pixels: the model standardises them itself
    model.eval()
    torch.testing.assert_close(loaded(x), model(x))
    assert T.evaluate(loaded, splits.test)["accuracy"] > 0.85
    # a model not from pycnn.models: load into the caller's module
    T.fit(small_cnn(), toy_classification(), epochs=1, progress=False, out=str(tmp_path / "custom"),
          classes=["a", "b", "c"])
    with pytest.raises(T.CheckpointError, match="not built by pycnn.models"):
        pycnn.load(str(tmp_path / "custom" / "last.pt"))
    assert pycnn.load(str(tmp_path / "custom" / "last.pt"), model=small_cnn()).classes == ["a", "b", "c"]


def test_fit_never_reuses_a_folder_and_resumes_only_what_matches(digits_run, tmp_path, capsys):
    import pycnn.data as D
    splits, model, _ = _copy_run(digits_run, tmp_path)
    with pytest.raises(FileExistsError, match="already holds a run"):
        T.fit(model, splits.train, epochs=2, lr=0.05, progress=False, out=str(tmp_path / "run"))
    other = _digits_model(splits, "mlp", hidden=8)
    with pytest.raises(T.CheckpointError, match="it holds model linear_classifier.*this run trains mlp"):
        T.fit(other, splits.train, epochs=2, lr=0.05, progress=False, resume=str(tmp_path / "run"))
    faces = D.faces(size=8)
    with pytest.raises(T.CheckpointError, match="trained on digits"):
        T.fit(model, faces.train, epochs=2, lr=0.05, progress=False, resume=str(tmp_path / "run"))
    with pytest.raises(T.CheckpointError, match="lr is 0.001 here, 0.05 in the checkpoint"):
        T.fit(model, splits.train, epochs=2, progress=False, resume=str(tmp_path / "run"))
    capsys.readouterr()
    hist = T.fit(model, splits.train, epochs=2, lr=0.05, progress=False, resume=str(tmp_path / "run"))
    assert "resuming" in capsys.readouterr().out and [e["epoch"] for e in hist.epochs] == [1, 2]


def _flip_64_bytes(path, where=0.5):
    raw = bytearray(open(path, "rb").read())
    start = int(len(raw) * where)
    raw[start:start + 64] = bytes(b ^ 0xFF for b in raw[start:start + 64])
    open(path, "wb").write(bytes(raw))


def test_damaged_checkpoint_is_refused(digits_run, tmp_path):
    import pycnn
    splits, model, _ = _copy_run(digits_run, tmp_path)
    path = str(tmp_path / "run" / "last.pt")
    _flip_64_bytes(path)  # mid-file: inside the Adam moments, which used to resume silently
    with pytest.raises(T.CheckpointError, match="checksum mismatch"):
        pycnn.load(path)
    with pytest.raises(T.CheckpointError, match="checksum mismatch"):
        T.fit(model, splits.train, epochs=2, lr=0.05, progress=False, resume=path)


@pytest.mark.parametrize("damage,match", [
    (lambda s: s.pop("scheduler"), "missing key 'scheduler'"),
    (lambda s: s.update(rng=torch.ones(3)), "bad RNG state"),
    (lambda s: s.update(model={k: torch.zeros(2, 2) for k in s["model"]}), "weights do not fit"),
    (lambda s: s["optimizer"]["state"][0].update(exp_avg=torch.zeros(3)), "optimizer state does not fit"),
])
def test_resume_checks_every_part_of_the_state(digits_run, tmp_path, damage, match):
    splits, model, _ = _copy_run(digits_run, tmp_path)
    state = T.load_checkpoint(str(tmp_path / "run" / "last.pt"))
    state.pop("format")
    damage(state)
    T.save_checkpoint(str(tmp_path / "bad" / "last.pt"), state)
    with pytest.raises(T.CheckpointError, match=match):
        T.fit(model, splits.train, epochs=2, lr=0.05, progress=False, resume=str(tmp_path / "bad"))


def test_version_1_checkpoints_still_load_but_do_not_resume(digits_run, tmp_path):
    """Checkpoints written before checksums (the standardisation in config["normalize"])."""
    import pycnn
    splits = digits_run[0]
    torch.manual_seed(1)
    bare = M.get("linear_classifier", in_channels=1, num_classes=10, image_size=8)
    mean, std = splits.mean.tolist(), splits.std.tolist()
    path = str(tmp_path / "last.pt")
    torch.save({"format": "pycnn-checkpoint-v1", "model": bare.state_dict(), "epoch": 1,
                "config": {"model": "linear_classifier", "data": "digits",
                           "model_kwargs": {"in_channels": 1, "num_classes": 10, "image_size": 8},
                           "normalize": {"mean": mean, "std": std}}}, path)
    loaded = pycnn.load(path)
    x = splits.test.tensors[0][:5]
    torch.testing.assert_close(loaded(x), bare((x - torch.tensor(mean).view(1, -1, 1, 1)) /
                                               torch.tensor(std).view(1, -1, 1, 1)))
    with pytest.raises(T.CheckpointError, match="version-1 checkpoint"):
        T.fit(_digits_model(splits), splits.train, epochs=2, progress=False, resume=path)


def test_normalize_layer_keeps_layer_names_and_checks_its_input():
    mean, std = torch.tensor([0.5, 0.2]), torch.tensor([0.25, 2.0])
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    norm = pnn.Normalize(mean, std)
    torch.testing.assert_close(norm(x), (x - mean.double().view(1, 2, 1, 1)) / std.double().view(1, 2, 1, 1))
    assert norm(x).dtype == torch.float64 and sorted(norm.state_dict()) == ["mean", "std"]
    lenet = M.get("lenet5", in_channels=1, num_classes=10, image_size=28)
    wrapped = pnn.normalized(lenet, [0.1], [0.3])
    assert wrapped.get_submodule("3") is lenet[3]  # Grad-CAM's "3" is still LeNet's second conv
    assert wrapped.pycnn_spec == dict(lenet.pycnn_spec, normalize=True)
    unet = pnn.normalized(M.get("unet", in_channels=1, num_classes=2, depth=2, width=4), [0.1], [0.3])
    assert list(dict(unet.named_children())) == ["normalize", "model"]
    with pytest.raises(ValueError, match="std must be positive"):
        pnn.Normalize([0.0], [0.0])
    with pytest.raises(ValueError, match=r"expected input \[N, 1, ...\]"):
        wrapped(torch.rand(1, 3, 28, 28))

"""The pycnn command: train/evaluate round trip, the demo's report, and one-line errors."""
import argparse
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import pycnn
import pycnn.train as T
from pycnn import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *fragments):
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny `pycnn train` run shared by the tests below."""
    out = tmp_path_factory.mktemp("run")
    rc = cli.main(["train", "--model", "linear_classifier", "--data", "digits", "--image-size", "8",
                   "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_train_writes_checkpoints_and_evaluate_reads_them(trained, capsys):
    assert sorted(os.listdir(trained)) == ["best.pt", "last.pt"]
    state = T.load_checkpoint(str(trained / "last.pt"))
    assert state["config"]["model"] == "linear_classifier" and state["epoch"] == 2
    # self-describing: model name and options, data name, class names, normalisation as a layer
    assert state["arch"]["name"] == "linear_classifier" and state["arch"]["normalize"] is True
    assert state["arch"]["kwargs"]["num_classes"] == 10 and state["data"]["name"] == "digits"
    assert state["classes"] == [str(d) for d in range(10)]
    assert "normalize.mean" in state["model"] and "normalize" not in state["config"]
    rc, out, err = run(["evaluate", "--checkpoint", str(trained / "last.pt"), "--confusion"], capsys)
    assert rc == 0, err
    assert "linear_classifier on digits/test" in out
    acc = float(out.split("accuracy ")[1].split()[0])
    assert acc > 0.85  # a linear softmax classifier on standardised 8x8 digits: ~0.95
    n = int(re.search(r"\((\d+) samples\)", out).group(1))
    # per-class precision, recall, F1: one row per class, named, then the averages
    lines = out.splitlines()
    head = next(i for i, l in enumerate(lines) if l.split()[:4] == ["class", "precision", "recall", "f1"])
    rows = [l.split() for l in lines[head + 1:head + 11]]
    assert [r[0] for r in rows] == [str(d) for d in range(10)]
    assert sum(int(r[4]) for r in rows) == n
    weighted = next(l for l in lines if l.startswith("weighted avg")).split()
    assert abs(float(weighted[3]) - acc) < 1e-3  # support-weighted recall is the accuracy
    # the confusion matrix: labelled rows and columns, not a raw tensor
    assert "tensor(" not in out
    top = lines.index("confusion matrix (rows: true class, columns: predicted class)")
    assert lines[top + 1].split()[-10:] == [str(d) for d in range(10)]
    matrix = [l.split() for l in lines[top + 2:top + 12]]
    assert [r[0] for r in matrix] == [str(d) for d in range(10)]
    counts = [[int(v) for v in r[1:]] for r in matrix]
    assert sum(map(sum, counts)) == n and abs(sum(counts[i][i] for i in range(10)) / n - acc) < 1e-3


def test_per_class_scores_match_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    import pycnn.train as T
    from pycnn import report
    g = torch.Generator().manual_seed(0)
    truth, pred = torch.randint(0, 4, (200,), generator=g), torch.randint(0, 4, (200,), generator=g)
    pred[:5] = 3  # uneven columns
    cm = T.confusion_matrix(pred, truth, 4)
    ours = T.per_class_scores(cm)
    p, r, f, support = sklearn_metrics.precision_recall_fscore_support(truth.numpy(), pred.numpy(), labels=range(4),
                                                                       zero_division=0)
    for name, ref in (("precision", p), ("recall", r), ("f1", f), ("support", support)):
        assert torch.allclose(ours[name].double(), torch.as_tensor(ref).double()), name
    text = report.per_class_text(cm, ["brick", "grass", "gravel", "moon"])
    moon = text.splitlines()[4].split()  # after the header line
    assert moon == ["moon", f"{p[3]:.4f}", f"{r[3]:.4f}", f"{f[3]:.4f}", str(support[3])]
    never = T.per_class_scores(torch.tensor([[3, 0], [2, 0]]))  # class 1 never predicted nor present
    assert never["precision"][1] == 0 and never["recall"][1] == 0 and never["f1"][1] == 0


def test_evaluate_refuses_data_the_model_does_not_fit(trained, capsys):
    import pycnn.train as T
    # a 10-class digits model on 2-class faces used to score 0.10 without a word
    rc, _, err = run(["evaluate", "--checkpoint", str(trained / "last.pt"), "--data", "faces"], capsys)
    assert_one_line_error(rc, err, "10 classes", "'faces' has 2", "non_face")
    # class names stored in a checkpoint must match the data's
    state = T.load_checkpoint(str(trained / "last.pt"))  # the payload (torch.load would give the envelope)
    state["classes"] = [f"digit {d}" for d in range(10)]
    renamed = trained.parent / "renamed.pt"
    T.save_checkpoint(str(renamed), {k: v for k, v in state.items() if k != "format"})
    rc, _, err = run(["evaluate", "--checkpoint", str(renamed)], capsys)
    assert_one_line_error(rc, err, "digit 0", "'digits' has")


def test_train_segmentation_with_augmentation(tmp_path, capsys):
    rc, out, err = run(["train", "--model", "unet", "--data", "galaxies", "--image-size", "32", "--epochs", "1",
                        "--data-option", "n=40", "--model-option", "width=4", "--model-option", "depth=2",
                        "--batch-size", "8", "--augment", "--out", str(tmp_path), "--quiet"], capsys)
    assert rc == 0, err
    assert "iou" in out
    config = T.load_checkpoint(str(tmp_path / "last.pt"))["config"]
    assert config["augment"] is True and config["model_kwargs"]["width"] == 4 and config["data_kwargs"]["n"] == 40
    rc, out, err = run(["evaluate", "--checkpoint", str(tmp_path / "last.pt")], capsys)
    assert rc == 0 and "iou" in out, err


def test_train_resumes_only_when_asked(trained, capsys):
    again = ["train", "--model", "linear_classifier", "--data", "digits", "--image-size", "8", "--epochs", "3",
             "--batch-size", "64", "--lr", "0.05", "--out", str(trained), "--quiet"]
    rc, _, err = run(again, capsys)  # the same folder without --resume: refused, nothing touched
    assert_one_line_error(rc, err, "already holds a run", "--resume")
    assert T.load_checkpoint(str(trained / "last.pt"))["epoch"] == 2
    rc, out, err = run(["train", "--resume", str(trained), "--epochs", "3", "--quiet"], capsys)
    assert rc == 0, err
    assert "resuming" in out and "epoch 2 of 3 done" in out and "linear_classifier" in out and "lr 0.05" in out
    assert "trained 3 epochs" in out
    state = T.load_checkpoint(str(trained / "last.pt"))
    assert state["epoch"] == 3 and state["history"]["epochs"][0]["epoch"] == 1


@pytest.mark.parametrize("argv,fragments", [
    (["train", "--model", "vgg", "--data", "digits"], ["unknown model 'vgg'", "lenet5"]),
    (["train", "--model", "lenet5", "--data", "cifar"], ["unknown data 'cifar'", "digits"]),
    (["train", "--model", "lenet5", "--data", "digits", "--device", "tpu"], ["device", "tpu"]),
    (["train", "--model", "lenet5", "--data", "digits", "--device", "banana"], ["device", "banana"]),
    (["train", "--model", "unet", "--data", "digits"], ["segmentation model", "classification dataset"]),
    (["train", "--model", "lenet5", "--data", "digits", "--epochs", "0"], ["--epochs"]),
    (["train", "--model", "lenet5", "--data", "digits", "--lr", "-1"], ["--lr"]),
    (["evaluate", "--checkpoint", "/nonexistent/last.pt"], ["checkpoint not found"]),
    (["train", "--model", "resnet", "--data", "digits", "--model-option", "depth=10"], ["6n + 2"]),
    (["train", "--model", "lenet5", "--data", "digits", "--model-option", "colour"], ["KEY=VALUE"]),
    (["train", "--model", "lenet5", "--data", "digits", "--data-option", "flavour=1"], ["digits", "flavour"]),
])
def test_bad_arguments_are_one_line_errors(argv, fragments, capsys):
    rc, _, err = run(argv, capsys)
    assert_one_line_error(rc, err, *fragments)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_cuda_without_gpu_is_a_one_line_error(capsys):
    rc, _, err = run(["train", "--model", "lenet5", "--data", "digits", "--device", "cuda"], capsys)
    assert_one_line_error(rc, err, "cuda")


def test_corrupt_and_foreign_checkpoints(tmp_path, trained, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(os.urandom(300))
    rc, _, err = run(["evaluate", "--checkpoint", str(bad)], capsys)
    assert_one_line_error(rc, err, "cannot read checkpoint")
    cut = tmp_path / "cut.pt"
    cut.write_bytes((trained / "last.pt").read_bytes()[:1000])
    rc, _, err = run(["evaluate", "--checkpoint", str(cut)], capsys)
    assert_one_line_error(rc, err, "cannot read checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    rc, _, err = run(["evaluate", "--checkpoint", str(foreign)], capsys)
    assert_one_line_error(rc, err, "not a pycnn checkpoint")


@pytest.mark.parametrize("argv,fragment", [
    (["train", "--model", "lenet5", "--data", "digits", "--epochs", "ten"], "--epochs"),
    (["viz", "--checkpoint", "x.pt", "--image", "y.png", "--method", "magic"], "--method"),
    (["nonsense"], "nonsense"),
])
def test_argparse_errors_are_one_line_exit_2(argv, fragment, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and fragment in err, err


def test_missing_data_is_one_line_exit_2(capsys):
    rc, _, err = run(["train", "--model", "lenet5"], capsys)  # --data missing (needed unless --resume)
    assert_one_line_error(rc, err, "--data")


def test_every_default_is_shown_in_help():
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {"train", "evaluate", "demo", "viz", "detect", "upscale", "inpaint", "predict"}
    for name, sub in commands.items():
        text = " ".join(sub.format_help().split())  # argparse wraps lines
        for action in sub._actions:
            # (not `in (None, False)`: 0 == False, and --seed 0 needs its default shown)
            if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                    or not action.option_strings:
                continue
            assert f"default: {action.default})" in text, (name, action.option_strings)


def test_pycnn_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("PYCNN_DEBUG", "1")  # the one-line errors raise: pytest (or Python) shows the traceback
    with pytest.raises(Exception, match="checkpoint not found"):
        cli.main(["evaluate", "--checkpoint", "/nonexistent/last.pt"])


@pytest.mark.parametrize("bug", [TypeError("unsupported operand"), RuntimeError("shape"), KeyError("x"),
                                 AttributeError("y")])
def test_bugs_are_not_turned_into_one_line_errors(bug, monkeypatch):
    def broken(args):
        raise bug
    monkeypatch.setattr(cli, "cmd_evaluate", broken)
    with pytest.raises(type(bug)):
        cli.main(["evaluate", "--checkpoint", "x.pt"])


def test_progress_is_one_line_per_epoch_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    import pycnn.train as T
    from torch.utils.data import TensorDataset
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(64, 1, 4, 4), torch.arange(64) % 2)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    T.fit(model, data, data, epochs=3, batch_size=8, progress=True)  # 8 steps per epoch
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert [l.split(":")[0] for l in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"], err
    assert "\r" not in err and all("val_accuracy" in l and l.endswith(" s)") for l in lines)
    # on a terminal: tqdm's bar, redrawn in place
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    T.fit(model, data, None, epochs=1, batch_size=8, progress=True)
    assert "\r" in capsys.readouterr().err


def test_python_dash_m_pycnn_runs_without_traceback(tmp_path):
    # Run from a neutral folder: `python -m` puts the working directory first on sys.path, and the
    # checkout's pycnn/ (without compiled modules) must not shadow the installed package.
    p = subprocess.run([sys.executable, "-m", "pycnn", "train", "--model", "nope", "--data", "digits"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["pycnn train: error: unknown model 'nope'; choose one of: espcn, fsrcnn, "
                                             "lenet5, linear_classifier, mask_rcnn, mlp, pconv_unet, resnet, separable_cnn, "
                                             "simple_cnn, srcnn, unet"]


def test_demo_writes_report(tmp_path, monkeypatch, capsys):
    """The demo pipeline end to end, shrunk to seconds: two trainings, index.html and its figures."""
    tiny = {
        "digits": dict(model="lenet5", data_kwargs={}, epochs=1, batch_size=64, optimizer="adam", lr=3e-3),
        "galaxies": dict(model="unet", data_kwargs={"n": 40, "size": 32}, model_kwargs={"depth": 2, "width": 4},
                         epochs=1, batch_size=8, optimizer="adam", lr=3e-3),
    }
    monkeypatch.setattr(cli, "DEMO_RUNS", {k: {"quick": v, "full": v} for k, v in tiny.items()})
    from pycnn.superres import report_section as superres_section
    sr = [dict(model="srcnn", scale=2, epochs=1, n_train=16, n_val=8, lr=1e-3, batch_size=16, crop=64,
               sources=("coins", "page"))]
    monkeypatch.setattr(superres_section, "DEMO_RUNS", {"quick": sr, "full": sr})
    seen = []
    from pycnn import report

    def extra_section(results, rep):  # the hook other parts of pycnn use
        seen.append(sorted(k for k in results if k in ("digits", "galaxies")))
        return report.Section("Extra", "<p>hello from a plug-in section</p>")

    monkeypatch.setattr(report, "DEMO_SECTIONS", list(report.DEMO_SECTIONS) + [extra_section])
    from pycnn.restoration import demo as inpainting_demo  # its own training, shrunk the same way
    monkeypatch.setattr(inpainting_demo, "QUICK_DATA", {"train_patches": 8, "test_per_image": 1, "mask_bank": 1,
                                                        "sources": ("moon",), "held_out": ("camera",)})
    rc, out, err = run(["demo", "--quick", "--out", str(tmp_path / "demo"), "--quiet"], capsys)
    assert rc == 0, err
    files = sorted(os.listdir(tmp_path / "demo"))
    for f in ("index.html", "digits_curves.png", "digits_confusion.png", "galaxies_curves.png",
              "galaxies_examples.png", "digits", "galaxies", "superres_crops.png"):
        assert f in files
    html = (tmp_path / "demo" / "index.html").read_text()
    for f in files:
        if f.endswith(".png"):
            assert f'src="{f}"' in html
            assert (tmp_path / "demo" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "hello from a plug-in section" in html and seen == [["digits", "galaxies"]]
    assert "<th>precision</th><th>recall</th><th>F1</th>" in html and "<tr><td>9</td>" in html
    assert "report:" in out and "index.html" in out
    # the demo's checkpoints work with `pycnn evaluate`
    rc, out, err = run(["evaluate", "--checkpoint", str(tmp_path / "demo" / "galaxies" / "last.pt")], capsys)
    assert rc == 0 and "iou" in out, err


# ---- your own images, runs that never collide, checkpoints that reject damage ----------------

@pytest.fixture(scope="module")
def png_folder(tmp_path_factory):
    """Two classes of tiny grey PNGs (a bright bar at the top or at the bottom), 12 each."""
    from PIL import Image
    root = tmp_path_factory.mktemp("myimgs")
    rng = np.random.default_rng(0)
    for label, name in enumerate(("bottom", "top")):
        (root / name).mkdir()
        for i in range(12):
            a = (rng.random((8, 8)) * 60).astype(np.uint8)
            a[(0 if name == "top" else 5):(3 if name == "top" else 8)] = 230
            Image.fromarray(a).save(root / name / f"{i}.png")
    return root


TINY = ["--model", "linear_classifier", "--epochs", "1", "--batch-size", "8", "--lr", "0.1", "--quiet"]


def test_train_on_a_folder_of_pngs_and_load_takes_raw_images(png_folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc, text, err = run(["train", "--data", str(png_folder), "--out", str(out)] + TINY, capsys)
    assert rc == 0, err
    assert "{'train': 16, 'val': 4, 'test': 4}" in text  # 15 % of 12 per class rounds to 2
    model = pycnn.load(str(out / "last.pt"))
    assert model.classes == ["bottom", "top"] and not model.training
    import pycnn.data as D
    splits = D.image_folder(png_folder)  # raw [0, 1] images, as a user has them
    x, y = splits.test.tensors
    assert T.evaluate(model, splits.test)["accuracy"] == pytest.approx(float(text.split("accuracy ")[1].split()[0]),
                                                                       abs=1e-4)
    assert model(x).shape == (4, 2)
    torch.testing.assert_close(model.normalize.mean, splits.mean)  # the standardisation is in the model
    rc, text, err = run(["evaluate", "--checkpoint", str(out / "last.pt")], capsys)
    assert rc == 0 and f"on {png_folder}/test" in text, err
    rc, again, err = run(["evaluate", "--checkpoint", str(out / "last.pt"), "--data",
                          os.path.relpath(png_folder)], capsys)  # the same folder, named another way
    assert rc == 0 and again.splitlines()[1] == text.splitlines()[1], err


def test_predict_prints_class_names_of_new_images(png_folder, tmp_path, capsys):
    out = tmp_path / "run"
    rc, _, err = run(["train", "--data", str(png_folder), "--out", str(out), "--image-size", "8"] + TINY, capsys)
    assert rc == 0, err
    images = [str(png_folder / "top" / "0.png"), str(png_folder / "bottom" / "0.png")]
    rc, text, err = run(["predict", "--checkpoint", str(out / "last.pt"), "--image", *images, "--top", "2"], capsys)
    assert rc == 0, err
    lines = text.strip().splitlines()
    model = pycnn.load(str(out / "last.pt"))
    import pycnn.data as D
    for line, path in zip(lines, images):  # the same answer as the Python recipe in README
        with torch.no_grad():
            p = torch.softmax(model(D.load_image(path, size=8, grayscale=True)), 1)[0]
        best = model.classes[int(p.argmax())]
        assert line.startswith(f"{path}: {best} {float(p.max()):.1%}, "), line
    rc, _, err = run(["predict", "--checkpoint", str(out / "last.pt"), "--image", str(tmp_path / "none.png")], capsys)
    assert_one_line_error(rc, err, "none.png")


def test_runs_without_out_get_their_own_folders(png_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = ["train", "--data", str(png_folder), "--epochs", "1", "--batch-size", "8", "--quiet"]
    for argv in (["--model", "linear_classifier"], ["--model", "mlp", "--model-option", "hidden=8"],
                 ["--model", "linear_classifier", "--lr", "0.5"]):
        rc, _, err = run(base + argv, capsys)
        assert rc == 0, err
    folders = sorted(os.listdir(tmp_path / "runs"))
    assert len(folders) == 3, folders
    assert sum(f.startswith("linear_classifier-myimgs") for f in folders) == 2 and \
        sum(f.startswith("mlp-myimgs") for f in folders) == 1
    lrs = sorted(T.load_checkpoint(str(tmp_path / "runs" / f / "last.pt"))["config"]["lr"] for f in folders)
    assert lrs == [0.003, 0.003, 0.5]  # the third run trained with its own --lr


def test_resume_refuses_another_model_data_or_setting(png_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", "--data", str(png_folder), "--out", str(out)] + TINY, capsys)[0] == 0
    for argv, fragments in [
        (["--model", "mlp"], ["cannot resume", "linear_classifier", "mlp"]),
        (["--data", "digits"], ["cannot resume", "digits"]),
        (["--lr", "0.9"], ["cannot resume", "lr is 0.9 here, 0.1 in the checkpoint"]),
    ]:
        rc, _, err = run(["train", "--resume", str(out), "--epochs", "2", "--quiet"] + argv, capsys)
        assert_one_line_error(rc, err, *fragments)
    assert T.load_checkpoint(str(out / "last.pt"))["epoch"] == 1


def _flip_64_bytes(src, dst, where=0.5):
    raw = bytearray(src.read_bytes())
    start = int(len(raw) * where)
    raw[start:start + 64] = bytes(b ^ 0xFF for b in raw[start:start + 64])
    dst.write_bytes(bytes(raw))


def test_damaged_checkpoints_are_one_line_errors(png_folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(["train", "--data", str(png_folder), "--out", str(out)] + TINY, capsys)[0] == 0
    good = out / "last.pt"
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    _flip_64_bytes(good, damaged / "last.pt")  # the middle of the file: inside the optimizer state
    rc, _, err = run(["evaluate", "--checkpoint", str(damaged / "last.pt")], capsys)
    assert_one_line_error(rc, err, f"cannot read checkpoint {damaged / 'last.pt'}: checksum mismatch")
    rc, _, err = run(["train", "--resume", str(damaged), "--epochs", "2", "--quiet"], capsys)
    assert_one_line_error(rc, err, "checksum mismatch")

    state = T.load_checkpoint(str(good))
    cases = {
        "missing key": ({k: v for k, v in state.items() if k != "optimizer"}, "missing key 'optimizer'"),
        "bad rng": (dict(state, rng=torch.zeros(7, dtype=torch.uint8)), "bad RNG state"),
        "wrong shapes": (dict(state, model={k: (v[:1] if v.dim() else v) for k, v in state["model"].items()}),
                         "weights do not fit"),
    }
    for name, (bad_state, fragment) in cases.items():
        folder = tmp_path / name.replace(" ", "_")
        T.save_checkpoint(str(folder / "last.pt"), {k: v for k, v in bad_state.items() if k != "format"})
        rc, _, err = run(["train", "--resume", str(folder), "--epochs", "2", "--quiet"], capsys)
        assert_one_line_error(rc, err, fragment)


def test_evaluate_reads_a_checkpoint_written_by_fit_from_python(tmp_path, capsys):
    import pycnn.data as D
    import pycnn.models as M
    import pycnn.nn as pnn
    splits = D.digits()
    model = pnn.normalized(M.get("linear_classifier", in_channels=1, num_classes=10, image_size=8),
                           splits.mean, splits.std)
    T.fit(model, splits.train, epochs=1, lr=0.05, progress=False, out=str(tmp_path))
    rc, out, err = run(["evaluate", "--checkpoint", str(tmp_path / "last.pt")], capsys)
    assert rc == 0, err
    assert "linear_classifier on digits/test" in out and float(out.split("accuracy ")[1].split()[0]) > 0.8

"""The pycnn command: train/evaluate round trip, the demo's report, and one-line errors."""
import os
import subprocess
import sys

import pytest
import torch

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
    state = torch.load(trained / "last.pt", weights_only=True)
    assert state["config"]["model"] == "linear_classifier" and state["epoch"] == 2
    rc, out, err = run(["evaluate", "--checkpoint", str(trained / "last.pt"), "--confusion"], capsys)
    assert rc == 0, err
    assert "linear_classifier on digits/test" in out
    acc = float(out.split("accuracy ")[1].split()[0])
    assert acc > 0.85  # a linear softmax classifier on standardised 8x8 digits: ~0.95
    assert "tensor(" in out  # the confusion matrix


def test_train_segmentation_with_augmentation(tmp_path, capsys):
    rc, out, err = run(["train", "--model", "unet", "--data", "galaxies", "--image-size", "32", "--epochs", "1",
                        "--data-option", "n=40", "--model-option", "width=4", "--model-option", "depth=2",
                        "--batch-size", "8", "--augment", "--out", str(tmp_path), "--quiet"], capsys)
    assert rc == 0, err
    assert "iou" in out
    config = torch.load(tmp_path / "last.pt", weights_only=True)["config"]
    assert config["augment"] is True and config["model_kwargs"]["width"] == 4 and config["data_kwargs"]["n"] == 40
    rc, out, err = run(["evaluate", "--checkpoint", str(tmp_path / "last.pt")], capsys)
    assert rc == 0 and "iou" in out, err


def test_train_resumes(trained, capsys):
    rc, out, err = run(["train", "--model", "linear_classifier", "--data", "digits", "--image-size", "8",
                        "--epochs", "3", "--batch-size", "64", "--lr", "0.05", "--out", str(trained), "--quiet"],
                       capsys)
    assert rc == 0, err
    assert "trained 3 epochs" in out
    assert torch.load(trained / "last.pt", weights_only=True)["history"]["epochs"][0]["epoch"] == 1


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


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--model", "lenet5"])  # --data missing
    assert e.value.code == 2
    assert "--data" in capsys.readouterr().err


def test_python_dash_m_pycnn_runs_without_traceback(tmp_path):
    # Run from a neutral folder: `python -m` puts the working directory first on sys.path, and the
    # checkout's pycnn/ (without compiled modules) must not shadow the installed package.
    p = subprocess.run([sys.executable, "-m", "pycnn", "train", "--model", "nope", "--data", "digits"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == ["pycnn train: error: unknown model 'nope'; choose one of: lenet5, "
                                             "linear_classifier, mlp, resnet, separable_cnn, simple_cnn, unet"]


def test_demo_writes_report(tmp_path, monkeypatch, capsys):
    """The demo pipeline end to end, shrunk to seconds: two trainings, index.html and its figures."""
    tiny = {
        "digits": dict(model="lenet5", data_kwargs={}, epochs=1, batch_size=64, optimizer="adam", lr=3e-3),
        "galaxies": dict(model="unet", data_kwargs={"n": 40, "size": 32}, model_kwargs={"depth": 2, "width": 4},
                         epochs=1, batch_size=8, optimizer="adam", lr=3e-3),
    }
    monkeypatch.setattr(cli, "DEMO_RUNS", {k: {"quick": v, "full": v} for k, v in tiny.items()})
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
              "galaxies_examples.png", "digits", "galaxies"):
        assert f in files
    html = (tmp_path / "demo" / "index.html").read_text()
    for f in files:
        if f.endswith(".png"):
            assert f'src="{f}"' in html
            assert (tmp_path / "demo" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "hello from a plug-in section" in html and seen == [["digits", "galaxies"]]
    assert "report:" in out and "index.html" in out
    # the demo's checkpoints work with `pycnn evaluate`
    rc, out, err = run(["evaluate", "--checkpoint", str(tmp_path / "demo" / "galaxies" / "last.pt")], capsys)
    assert rc == 0 and "iou" in out, err

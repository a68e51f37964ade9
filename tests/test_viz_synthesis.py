"""pycnn.viz synthesis: each method must raise its objective (lower its loss) and leave the
model as found."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pycnn.viz import class_model, deep_dream, gram_matrix, style_transfer
from pycnn.viz.synthesis import gaussian_blur


def cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))


def untouched(model, train_flags):
    assert [m.training for m in model.modules()] == train_flags
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_class_model_raises_the_class_score():
    model = cnn().train()
    flags = [m.training for m in model.modules()]
    # jitter of 1 pixel: on an 8x8 image the default 2 is a quarter of the picture
    img, history = class_model(model, 2, shape=(3, 8, 8), steps=30, jitter=1, return_history=True)
    assert img.shape == (1, 3, 8, 8) and len(history) == 30
    with torch.no_grad():
        start = model(0.01 * torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)))[0, 2]
        end = model(img)[0, 2]
        other = model(img)[0]
    assert end > start + 0.1 and sum(history[-5:]) > sum(history[:5])
    untouched(model, flags)


def test_class_model_batch_targets_and_channel_objective():
    model = cnn()
    imgs = class_model(model, [0, 3], init=torch.zeros(2, 3, 8, 8), steps=30, clamp=(-1, 1), jitter=0,
                       blur_every=0)
    with torch.no_grad():
        out = model(imgs)
    assert out.argmax(1).tolist() == [0, 3] and imgs.abs().max() <= 1  # each reads as its own class
    img, hist = class_model(model, 5, shape=(3, 8, 8), layer="3", steps=20, return_history=True)
    assert hist[-1] > hist[0]
    with pytest.raises(ValueError, match="out of range"):
        class_model(model, 9, shape=(3, 8, 8), layer="3", steps=1)
    with pytest.raises(ValueError, match="shape"):
        class_model(model, 1)


def test_deep_dream_amplifies_the_layer():
    model = cnn(1).eval()
    torch.manual_seed(0)
    image = torch.rand(3, 12, 12)
    dreamed, history = deep_dream(model, image, ["3"], octaves=2, octave_scale=1.4, steps=6, lr=0.05,
                                  return_history=True)
    assert dreamed.shape == image.shape and len(history) == 12

    def energy(x):  # the objective: mean squared activation of layer 3
        acts = {}
        h = model[3].register_forward_hook(lambda m, i, o: acts.setdefault("a", o))
        try:
            with torch.no_grad():
                model[:4](x.unsqueeze(0))
        finally:
            h.remove()
        return acts["a"].pow(2).mean()

    assert energy(dreamed) > 2 * energy(image)
    # 12x12 is not the 8x8 the classifier head accepts: the forward stopped at the layer.
    untouched(model, [False] * len(list(model.modules())))


def test_style_transfer_lowers_its_loss_and_matches_grams():
    model = cnn(2)
    torch.manual_seed(0)
    content = torch.rand(3, 8, 8)
    style = torch.rand(1, 3, 10, 10) * torch.linspace(0, 1, 10)  # a horizontal ramp, other size
    out, history = style_transfer(content, style, model, ["3"], ["0", "3"], steps=25, style_weight=1e3,
                                  return_history=True)
    assert out.shape == content.shape and history[-1] < 0.5 * history[0]
    with torch.no_grad():
        g_style = gram_matrix(model[0](style))
        assert F.mse_loss(gram_matrix(model[0](out[None])), g_style) < F.mse_loss(gram_matrix(model[0](content[None])), g_style)
    untouched(model, [True] * len(list(model.modules())))


def test_gram_matrix_and_blur():
    f = torch.randn(2, 3, 4, 5)
    flat = f.reshape(2, 3, 20)
    torch.testing.assert_close(gram_matrix(f), flat @ flat.transpose(1, 2) / 60)
    x = torch.randn(1, 2, 7, 7)
    blurred = gaussian_blur(x, 1.0)
    assert blurred.shape == x.shape and blurred.std() < x.std()
    torch.testing.assert_close(gaussian_blur(torch.ones(1, 1, 5, 5), 1.0), torch.ones(1, 1, 5, 5))


def test_hooks_removed_when_the_objective_fails():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            self.conv(x)
            raise RuntimeError("boom")

    model = Broken()
    for call in (lambda: class_model(model, 0, shape=(3, 6, 6), steps=2),
                 lambda: deep_dream(model, torch.rand(3, 6, 6), ["conv", ""], octaves=1, steps=1),
                 lambda: style_transfer(torch.rand(3, 6, 6), torch.rand(3, 6, 6), model, ["conv"], [""], steps=2)):
        with pytest.raises((RuntimeError, ValueError)):
            call()
        untouched(model, [True, True])


def test_pycnn_model_class_model_and_dream():
    # No skip when the model fails to run: a broken pycnn kernel must fail this test.
    import pycnn.models as models

    torch.manual_seed(0)
    model = models.get("simple_cnn", in_channels=1, num_classes=3, image_size=8, width=4)
    model(torch.zeros(1, 1, 8, 8))
    img, hist = class_model(model, 1, shape=(1, 8, 8), steps=15, jitter=0, return_history=True)
    assert hist[-1] > hist[0]
    conv = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][-1]
    _, dream_hist = deep_dream(model, torch.rand(1, 8, 8), conv, octaves=1, steps=5, return_history=True)
    assert dream_hist[-1] > dream_hist[0]

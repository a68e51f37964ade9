"""pycnn.viz attribution methods: agreement with Captum, the functional-relu interception, IG
completeness, and the promise to leave the model exactly as it was found (even on errors)."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pycnn.viz import (deconvnet, fgsm, grad_cam, guided_backprop, integrated_gradients, occlusion,
                       saliency)

torch.manual_seed(0)


def small_cnn(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(6 * 2 * 2, 5),
    ).to(dtype)


class FunctionalReluCNN(nn.Module):
    """Same layers as small_cnn, but every relu is a different functional spelling."""

    def __init__(self, twin: nn.Sequential):
        super().__init__()
        self.conv1, self.conv2, self.fc = twin[0], twin[3], twin[6]

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = self.conv2(x)
        x = F.relu_(x) if not self.training else x.relu()
        return self.fc(x.flatten(1))


class TensorMethodReluCNN(FunctionalReluCNN):
    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x), inplace=True), 2)
        return self.fc(self.conv2(x).relu_().flatten(1))


@pytest.fixture
def batch():
    torch.manual_seed(1)
    return torch.randn(3, 3, 8, 8, dtype=torch.float64), [0, 2, 4]


def captum():
    return pytest.importorskip("captum.attr")


# ---- agreement with Captum ------------------------------------------------------------------

@pytest.mark.parametrize("abs_", [True, False])
def test_saliency_matches_captum(batch, abs_):
    ca = captum()
    model, (x, t) = small_cnn(), batch
    ours = saliency(model, x, t, abs=abs_)
    ref = ca.Saliency(model).attribute(x, target=t, abs=abs_)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, ref)
    assert ours.abs().sum() > 0


@pytest.mark.parametrize("method,kwargs", [
    ("gausslegendre", {}),
    ("riemann_trapezoid", {"internal_batch_size": 7}),
    ("riemann_left", {"baselines": 0.25}),
    ("riemann_right", {}),
    ("riemann_middle", {"internal_batch_size": 5}),
])
def test_integrated_gradients_matches_captum(batch, method, kwargs):
    ca = captum()
    model, (x, t) = small_cnn(), batch
    ours, delta = integrated_gradients(model, x, t, n_steps=20, method=method, return_convergence_delta=True,
                                       **kwargs)
    ref, ref_delta = ca.IntegratedGradients(model).attribute(x, target=t, n_steps=20, method=method,
                                                             return_convergence_delta=True, **kwargs)
    if method == "riemann_trapezoid":
        # Captum weights the n trapezoid points by 1/n (ends halved), which sums to (n-1)/n, not 1;
        # we use the trapezoid rule's 1/(n-1), so completeness holds. Same points otherwise.
        ref = ref * 20 / 19
        with torch.no_grad():
            gap = (model(x) - model(x * 0 + kwargs.get("baselines", 0.0))).gather(1, torch.tensor(t)[:, None])[:, 0]
        torch.testing.assert_close(delta, ours.flatten(1).sum(1) - gap)
    else:
        torch.testing.assert_close(delta, ref_delta, rtol=1e-6, atol=1e-7)
    # Captum builds the Riemann nodes in float32 (torch.linspace): agreement to ~1e-7 relative.
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)


def test_integrated_gradients_tensor_baseline(batch):
    ca = captum()
    model, (x, t) = small_cnn(), batch
    base = torch.rand_like(x)
    ours = integrated_gradients(model, x, t, baselines=base, n_steps=10)
    ref = ca.IntegratedGradients(model).attribute(x, target=t, baselines=base, n_steps=10)
    torch.testing.assert_close(ours, ref)


def test_integrated_gradients_completeness():
    # A smooth model: the quadrature converges fast, so |delta| must be tiny relative to the gap.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double()
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    attr, delta = integrated_gradients(model, x, 1, n_steps=50, return_convergence_delta=True)
    with torch.no_grad():
        gap = model(x)[:, 1] - model(torch.zeros_like(x))[:, 1]
    torch.testing.assert_close(attr.flatten(1).sum(1), gap, atol=1e-8, rtol=1e-8)
    assert delta.abs().max() < 1e-8
    # ... and a ReLU network (kinks): still small with 50 Gauss-Legendre points.
    model, xb = small_cnn(), torch.randn(3, 3, 8, 8, dtype=torch.float64)
    _, delta = integrated_gradients(model, xb, 2, return_convergence_delta=True)
    assert delta.abs().max() < 1e-2


@pytest.mark.parametrize("kind", ["guided", "deconv"])
def test_guided_and_deconv_match_captum(batch, kind):
    ca = captum()
    model, (x, t) = small_cnn(), batch
    ours_fn, ref_cls = (guided_backprop, ca.GuidedBackprop) if kind == "guided" else (deconvnet, ca.Deconvolution)
    ours = ours_fn(model, x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ref_cls(model).attribute(x, target=t)
    torch.testing.assert_close(ours, ref)
    # The modified backward must really differ from plain backprop (or this test could not fail).
    assert not torch.allclose(ours, saliency(model, x, t, abs=False))


@pytest.mark.parametrize("cls", [FunctionalReluCNN, TensorMethodReluCNN])
@pytest.mark.parametrize("kind", ["guided", "deconv"])
def test_functional_relu_is_intercepted(batch, cls, kind):
    ca = captum()
    twin = small_cnn()
    model, (x, t) = cls(twin).eval(), batch
    ours_fn, ref_cls = (guided_backprop, ca.GuidedBackprop) if kind == "guided" else (deconvnet, ca.Deconvolution)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ref_cls(twin).attribute(x, target=t)  # Captum sees nn.ReLU modules only: use the twin
    torch.testing.assert_close(ours_fn(model, x, t), ref)
    # Outside the call, relu is ordinary again: plain gradients of the functional model equal
    # the twin's.
    torch.testing.assert_close(saliency(model, x, t, abs=False), saliency(twin, x, t, abs=False))


@pytest.mark.parametrize("relu", [True, False])
def test_grad_cam_matches_captum(batch, relu):
    ca = captum()
    model, (x, t) = small_cnn(), batch
    ours = grad_cam(model, model[3], x, t, relu=relu)
    ref = ca.LayerGradCam(model, model[3]).attribute(x, target=t, relu_attributions=relu).detach()
    assert ours.shape == (3, 1, 2, 2)
    torch.testing.assert_close(ours, ref)
    by_name = grad_cam(model, "3", x, t, relu=relu, size=(8, 8))
    assert by_name.shape == (3, 1, 8, 8)
    torch.testing.assert_close(by_name, ca.LayerAttribution.interpolate(ref, (8, 8), "bilinear"))


@pytest.mark.parametrize("window,stride,baseline", [((3, 3), 2, 0.0), ((2, 4), (1, 3), 0.5), ((8, 8), 1, -1.0)])
def test_occlusion_matches_captum(batch, window, stride, baseline):
    ca = captum()
    model, (x, t) = small_cnn(), batch
    ours = occlusion(model, x, t, window=window, stride=stride, baseline=baseline, batch_size=7)
    s = (stride, stride) if isinstance(stride, int) else stride
    ref = ca.Occlusion(model).attribute(x, target=t, sliding_window_shapes=(3,) + tuple(window),
                                        strides=(3,) + tuple(s), baselines=baseline)
    assert ours.shape == x.shape
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-5, atol=1e-7)  # Captum divides in float32


def test_occlusion_drop_is_local():
    # A model that only looks at the top-left 2x2 corner: occluding elsewhere changes nothing.
    class Corner(nn.Module):
        def forward(self, x):
            return x[:, :, :2, :2].sum((1, 2, 3)).unsqueeze(1).repeat(1, 2)

    x = torch.ones(1, 1, 6, 6)
    attr = occlusion(Corner(), x, 0, window=(2, 2), stride=2)
    assert attr[0, 0, :2, :2].eq(4).all() and attr[0, 0, 2:, :].eq(0).all() and attr[0, 0, :, 2:].eq(0).all()


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_matches_captum(batch, targeted):
    pytest.importorskip("captum")
    from captum.robust import FGSM

    model, (x, t) = small_cnn(), batch
    ref_attack = FGSM(model, loss_func=nn.CrossEntropyLoss(reduction="none"), lower_bound=-1.5, upper_bound=1.5)
    ref_attack.zero_thresh = 0.0  # Captum skips |grad| <= 1e-6 by default; we take every sign
    ref = ref_attack.perturb(x, 0.1, target=torch.tensor(t), targeted=targeted)
    ours = fgsm(model, x, t, 0.1, targeted=targeted, clamp=(-1.5, 1.5))
    torch.testing.assert_close(ours, ref)


def test_fgsm_increases_the_loss(batch):
    model, (x, t) = small_cnn(), batch
    target = torch.tensor(t)
    adv = fgsm(model, x, t, 0.05)
    with torch.no_grad():
        before = F.cross_entropy(model(x), target, reduction="none")
        after = F.cross_entropy(model(adv), target, reduction="none")
        assert (after > before).all()
        toward = fgsm(model, x, t, 0.05, targeted=True)
        assert (F.cross_entropy(model(toward), target, reduction="none") < before).all()
    assert (adv - x).abs().max() <= 0.05 + 1e-12
    custom = fgsm(model, x, t, 0.05, loss_fn=lambda out, tt: -out.gather(1, tt[:, None]).sum())
    torch.testing.assert_close(custom, x - 0.05 * saliency(model, x, t, abs=False).sign())


# ---- conventions ------------------------------------------------------------------------------

def test_targets_int_list_tensor_and_none(batch):
    model, (x, _) = small_cnn(), batch
    one = saliency(model, x, 2)
    torch.testing.assert_close(one, saliency(model, x, [2, 2, 2]))
    torch.testing.assert_close(one, saliency(model, x, torch.tensor([2, 2, 2])))
    top = model(x).argmax(1)
    torch.testing.assert_close(saliency(model, x, None), saliency(model, x, top))
    # Each example's attribution is its own: the batch result equals the per-example results.
    for i in range(3):
        torch.testing.assert_close(integrated_gradients(model, x[i:i + 1], int(top[i]), n_steps=8),
                                   integrated_gradients(model, x, top, n_steps=8)[i:i + 1])


def test_segmentation_output_scores_sum_over_pixels():
    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1))
    x = torch.randn(2, 1, 5, 5)
    g = saliency(seg, x, 1, abs=False)
    ref = torch.autograd.functional.jacobian(lambda inp: seg(inp)[:, 1].sum(), x)
    torch.testing.assert_close(g, ref)


def test_bad_inputs_raise_clear_errors(batch):
    model, (x, t) = small_cnn(), batch
    with pytest.raises(ValueError, match="target class 7 is out of range"):
        saliency(model, x, 7)
    with pytest.raises(ValueError, match="3 examples"):
        saliency(model, x, [0, 1])
    with pytest.raises(TypeError, match="integers"):
        saliency(model, x, torch.tensor([0.5, 1.0, 2.0]))
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        grad_cam(model, "nope", x, t)
    with pytest.raises(ValueError, match="method must be one of"):
        integrated_gradients(model, x, t, method="simpson")
    with pytest.raises(ValueError, match="window"):
        occlusion(model, x, t, window=(9, 9))
    with pytest.raises(TypeError, match="inputs must be a tensor"):
        saliency(model, x.numpy(), t)


# ---- the model is left as it was found --------------------------------------------------------

class BNNet(nn.Module):
    def __init__(self, fail_after_conv=False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)
        self.fail_after_conv = fail_after_conv

    def forward(self, x):
        h = F.relu(self.bn(self.conv(x)))
        if self.fail_after_conv:
            raise RuntimeError("boom")
        return self.head(h.mean((2, 3)))


def snapshot(model):
    return ({n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            {n: b.clone() for n, b in model.named_buffers()})


def assert_untouched(model, before):
    modes, flags, buffers = snapshot(model)
    assert modes == before[0] and flags == before[1]
    for n, b in buffers.items():
        assert torch.equal(b, before[2][n]), n
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
    assert all(p.grad is None for p in model.parameters())
    # no TorchFunctionMode left active: relu's gradient is the ordinary one again
    z = torch.tensor([-1.0, 2.0], requires_grad=True)
    (g,) = torch.autograd.grad((torch.relu(z) * torch.tensor([-3.0, -3.0])).sum(), z)
    assert g.tolist() == [0.0, -3.0]


METHODS = {
    "saliency": lambda m, x: saliency(m, x, 1),
    "deconvnet": lambda m, x: deconvnet(m, x, 1),
    "guided_backprop": lambda m, x: guided_backprop(m, x, 1),
    "integrated_gradients": lambda m, x: integrated_gradients(m, x, 1, n_steps=4, internal_batch_size=3),
    "grad_cam": lambda m, x: grad_cam(m, "conv", x, 1, size=(6, 6)),
    "occlusion": lambda m, x: occlusion(m, x, 1, window=(3, 3), stride=3),
    "fgsm": lambda m, x: fgsm(m, x, 1, 0.1),
}


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("train", [True, False])
def test_model_left_as_found(name, train):
    torch.manual_seed(0)
    model = BNNet().train(train)
    model.conv.bias.requires_grad_(False)  # a mixed set of flags must come back as it was
    before = snapshot(model)
    out = METHODS[name](model, torch.randn(2, 3, 6, 6))
    assert out.shape[0] == 2
    assert_untouched(model, before)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_state_restored_after_exception(name):
    model = BNNet(fail_after_conv=True).train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        METHODS[name](model, torch.randn(2, 3, 6, 6))
    assert_untouched(model, before)


def test_target_error_restores_state():
    model = BNNet().eval()
    before = snapshot(model)
    for fn in (saliency, guided_backprop, deconvnet):
        with pytest.raises(ValueError):
            fn(model, torch.randn(2, 3, 6, 6), 9)
    with pytest.raises(ValueError):
        grad_cam(model, "conv", torch.randn(2, 3, 6, 6), 9)
    assert_untouched(model, before)


def test_inputs_not_modified(batch):
    model, (x, t) = small_cnn(), batch
    copy = x.clone()
    for fn in (lambda: saliency(model, x, t), lambda: fgsm(model, x, t, 0.1), lambda: occlusion(model, x, t, (2, 2)),
               lambda: integrated_gradients(model, x, t, n_steps=3)):
        fn()
    assert torch.equal(x, copy) and not x.requires_grad


# ---- pycnn models and CUDA --------------------------------------------------------------------

def _pycnn_model(name, **kw):
    # No skip when the model fails to run: a broken pycnn kernel must fail the tests using it.
    import pycnn.models as models

    model = models.get(name, **kw).double().eval()
    with torch.no_grad():
        model(torch.zeros(1, kw.get("in_channels", 1), 12, 12, dtype=torch.float64))
    return model


@pytest.mark.parametrize("name", ["lenet5", "simple_cnn"])
def test_pycnn_models_match_captum(name):
    ca = captum()
    model = _pycnn_model(name, in_channels=1, num_classes=4, image_size=12)
    torch.manual_seed(0)
    x, t = torch.randn(2, 1, 12, 12, dtype=torch.float64), [1, 3]
    torch.testing.assert_close(saliency(model, x, t), ca.Saliency(model).attribute(x, target=t))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(guided_backprop(model, x, t), ca.GuidedBackprop(model).attribute(x, target=t))
        torch.testing.assert_close(deconvnet(model, x, t), ca.Deconvolution(model).attribute(x, target=t))
    torch.testing.assert_close(integrated_gradients(model, x, t, n_steps=8),
                               ca.IntegratedGradients(model).attribute(x, target=t, n_steps=8))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert any(type(m).__module__.startswith("pycnn") for m in convs)  # really pycnn's layers
    conv = convs[-1]
    torch.testing.assert_close(grad_cam(model, conv, x, t),
                               ca.LayerGradCam(model, conv).attribute(x, target=t, relu_attributions=True).detach())
    ours = occlusion(model, x, t, window=(4, 4), stride=4)
    ref = ca.Occlusion(model).attribute(x, target=t, sliding_window_shapes=(1, 4, 4), strides=(1, 4, 4))
    torch.testing.assert_close(ours, ref.to(ours.dtype), rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_results_on_input_device(batch):
    model, (x, t) = small_cnn().cuda(), batch
    xc = x.cuda()
    for fn in (lambda: saliency(model, xc, t), lambda: guided_backprop(model, xc, t),
               lambda: deconvnet(model, xc, t), lambda: integrated_gradients(model, xc, t, n_steps=5),
               lambda: occlusion(model, xc, t, (2, 2), 2), lambda: fgsm(model, xc, t, 0.1),
               lambda: grad_cam(model, "3", xc, t, size=(8, 8))):
        assert fn().device == xc.device
    cpu_model = small_cnn()
    torch.testing.assert_close(guided_backprop(model, xc, t).cpu(), guided_backprop(cpu_model, x, t))

"""The depthwise 3x3 convolution for training (mobilenetv2.model.dwconv, issue 14) against
torch's conv2d in float64: output, input and weight gradients; thread counts; and every case
it must leave to torch takes torch's path."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilenetv2.model import bnact, dwconv
from mobilenetv2.model.layers import ConvBNAct
from support.kernels import count_calls, digits_loss_curve, kernel_isa, kernel_isas

pytestmark = pytest.mark.skipif(not bnact.AVAILABLE, reason=bnact.UNAVAILABLE or "built")
CL = torch.channels_last


@pytest.fixture
def calls(monkeypatch):
    """How many times our depthwise kernel ran."""
    return count_calls(monkeypatch, dwconv, "depthwise_conv")


@pytest.fixture(params=kernel_isas())
def isa(request):
    with kernel_isa(request.param):
        yield request.param


def _run(conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor):
    x = x.clone().requires_grad_()
    conv.weight.grad = None
    y = dwconv.depthwise_conv(x, conv)
    y.backward(g.to(torch.float32))
    return y.detach(), x.grad, conv.weight.grad


# (batch, channels, height, width, stride, padding, dilation): odd sizes, channels that are
# not a multiple of 8 (the one-lane tail), stride 2, padding 0 (after SamePad2d), dilation
CASES = [(1, 13, 7, 9, 1, 1, 1), (3, 20, 9, 15, 2, 1, 1), (1, 16, 15, 7, 2, 0, 1),
         (3, 13, 15, 9, 1, 0, 1), (1, 8, 3, 3, 1, 1, 1), (1, 24, 9, 8, 2, 1, 1),
         (3, 9, 15, 15, 1, 2, 2), (1, 12, 15, 9, 2, 4, 4)]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_matches_torch_float64(isa, case):
    n, c, h, w, s, p, d = case
    torch.manual_seed(1)
    conv = nn.Conv2d(c, c, 3, s, p, d, groups=c, bias=False)
    x = torch.randn(n, c, h, w).to(memory_format=CL)
    assert dwconv.fusable(x, conv)
    x64 = x.double().requires_grad_()
    w64 = conv.weight.detach().double().requires_grad_()
    y64 = F.conv2d(x64, w64, None, s, p, d, c)
    g = torch.randn_like(y64)
    y64.backward(g)
    y, dx, dw = _run(conv, x, g)
    assert y.shape == y64.shape and y.is_contiguous(memory_format=CL)
    for got, want in ((y, y64), (dx, x64.grad), (dw, w64.grad)):
        torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", ["omp", "own"])
def test_threads_do_not_change_results(pool):
    """Chunks and the order their weight-gradient partials are added depend on the shape
    alone, on torch's OpenMP team and on the extension's own pool."""
    prev = bnact._bnact.pool()
    bnact._bnact.set_pool(pool)
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(2)
        conv = nn.Conv2d(24, 24, 3, 2, 1, groups=24, bias=False)
        x = torch.randn(4, 24, 96, 64).to(memory_format=CL)  # several chunks
        g = torch.randn(4, 24, 48, 32)
        outs = []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(_run(conv, x, g))
    finally:
        torch.set_num_threads(threads)
        bnact._bnact.set_pool(prev)
    for out in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(out, outs[0]))


def _dw_block(stride: int = 1, padding: str = "symmetric", dilation: int = 1) -> ConvBNAct:
    return ConvBNAct(16, 16, 3, stride=stride, groups=16, dilation=dilation,
                     padding=padding).train()


def test_conv_bn_act_takes_it(calls):
    """In ConvBNAct's training forward, a depthwise 3x3 runs on our kernel, with tf_same
    stride 2 too (SamePad2d pads, our kernel convolves without padding)."""
    torch.manual_seed(3)
    for m in (_dw_block(), _dw_block(2), _dw_block(2, "tf_same"), _dw_block(1, dilation=2)):
        ref = copy.deepcopy(m)
        x = torch.randn(2, 16, 11, 10).to(memory_format=CL)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1 = m(x1)
        y2 = x2
        for child in ref:
            y2 = child(y2)
        torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-4)
        y1.square().sum().backward()
        y2.square().sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(m.conv.weight.grad, ref.conv.weight.grad, rtol=1e-4,
                                   atol=1e-4)
    assert calls[0] == 4


def _fallbacks():
    """(name, make module, make input, context): each must take torch's path."""
    cl = lambda: torch.randn(2, 16, 7, 7).to(memory_format=CL)  # noqa: E731

    def hooked(m):
        m.conv.register_forward_hook(lambda *a: None)
        return m

    def biased(m):
        m.conv = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=True)
        return m

    def other_padding(m):
        m.conv = nn.Conv2d(16, 16, 3, padding=2, groups=16, bias=False)
        return m

    return [
        ("eval", lambda: _dw_block().eval(), cl, None),
        ("nchw", _dw_block, lambda: torch.randn(2, 16, 7, 7), None),
        ("hook on conv", lambda: hooked(_dw_block()), cl, None),
        ("bias", lambda: biased(_dw_block()), cl, None),
        ("padding 2 at dilation 1", lambda: other_padding(_dw_block()), cl, None),
        ("not depthwise", lambda: ConvBNAct(16, 16, 3, groups=4).train(), cl, None),
        ("5x5", lambda: ConvBNAct(16, 16, 5, groups=16).train(), cl, None),
        ("float64", lambda: _dw_block().double(), lambda: cl().double(), None),
        ("no_grad", _dw_block, cl, torch.no_grad),
        ("autocast bf16", _dw_block, cl, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
        ("env DW off", _dw_block, cl, "MOBILENETV2_FUSED_DW"),
        ("env BN off", _dw_block, cl, "MOBILENETV2_FUSED_BN"),
    ]


@pytest.mark.parametrize("name,make,inp,ctx", _fallbacks(), ids=[f[0] for f in _fallbacks()])
def test_fallbacks_take_torch_path(calls, monkeypatch, name, make, inp, ctx):
    torch.manual_seed(4)
    m = make()
    ref = copy.deepcopy(m)
    x = inp()
    if isinstance(ctx, str):
        monkeypatch.setenv(ctx, "0")
        ctx = None
    with ctx() if ctx else torch.enable_grad():
        y1 = m(x)
        y2 = x
        for child in ref:
            y2 = child(y2)
    assert calls[0] == 0
    torch.testing.assert_close(y1, y2)


def test_describe_names_it(monkeypatch):
    monkeypatch.delenv("MOBILENETV2_FUSED_BN", raising=False)
    monkeypatch.delenv("MOBILENETV2_FUSED_DW", raising=False)
    assert "depthwise 3x3: ours" in bnact.describe()
    monkeypatch.setenv("MOBILENETV2_FUSED_DW", "0")
    assert "depthwise 3x3: torch" in bnact.describe()


def test_digits_network_loss_curve_matches(calls, monkeypatch):
    """A few SGD steps of a digits-style network (width 0.35, small_input, 32x32), channels_last,
    fused BN on in both runs: with our depthwise kernel the loss curve is as close to a float64
    run of torch's path as the float32 run with torch's depthwise conv is."""
    def curve(on: bool, dtype: torch.dtype) -> torch.Tensor:
        return digits_loss_curve(monkeypatch, "MOBILENETV2_FUSED_DW", on, dtype)

    exact = curve(False, torch.float64)
    plain = curve(False, torch.float32)
    assert calls[0] == 0
    ours = curve(True, torch.float32)
    assert calls[0] > 0
    assert ours[-1] < ours[0]  # it trains
    assert (ours - exact).abs().max() <= 2 * (plain - exact).abs().max() + 1e-4


def test_second_derivative_raises(calls):
    m = _dw_block()
    x = torch.randn(2, 16, 5, 5).to(memory_format=CL).requires_grad_()
    (g,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()
    assert calls[0] == 1

"""Winograd convolutions (export.winograd) against float64 direct convolutions, the rule that picks
them, and their ONNX export through ONNX Runtime."""

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from idm_rt.export import winograd
from idm_rt.export.winograd import WinogradConv2d, matrices, tile_size, use_winograd

pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


@pytest.mark.parametrize("m", [2, 4])
def test_matrices_compute_a_1d_correlation_exactly(m):
    bt, g, at = matrices(m)
    gen = torch.Generator().manual_seed(m)
    d, k = torch.randn(m + 2, generator=gen, dtype=torch.float64), torch.randn(3, generator=gen, dtype=torch.float64)
    direct = torch.stack([(d[i : i + 3] * k).sum() for i in range(m)])
    torch.testing.assert_close(at @ ((g @ k) * (bt @ d)), direct, rtol=0, atol=1e-12)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("size", [(16, 16), (13, 10)])  # a multiple of m, and sizes whose last tiles overhang
@pytest.mark.parametrize("bias", [True, False])
def test_winograd_conv_matches_float64_direct_conv(m, size, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 3, padding=1, bias=bias)
    x = torch.randn(2, 24, *size)
    with torch.no_grad():
        got = WinogradConv2d(conv, m)(x)
        want = F.conv2d(x.double(), conv.weight.double(), None if conv.bias is None else conv.bias.double(), padding=1)
    assert got.shape == want.shape and got.dtype == torch.float32
    err = (got.double() - want).abs().max().item()
    assert err < (2e-6 if m == 2 else 5e-5) * want.abs().max().item(), err


def test_tile_size_rule():
    def pick(c_in, c_out, side, **kw):
        return tile_size(nn.Conv2d(c_in, c_out, 3, padding=kw.pop("padding", 1), **kw), side, side)

    # the measured wins: reduced channel count c_in*c_out/(c_in+c_out) large enough for the side
    assert pick(128, 128, 64) == 4 and pick(384, 128, 64) == 4 and pick(256, 256, 32) == 4
    assert pick(512, 512, 16) == 4 and pick(512, 512, 8) == 2 and pick(1024, 512, 8) == 2
    assert tile_size(nn.Conv2d(512, 512, 3, padding=1), 8, 40) == 2  # the smaller side decides
    # the measured losses
    assert pick(64, 64, 128) is None and pick(128, 64, 128) is None and pick(256, 128, 16) is None
    assert pick(256, 256, 8) is None and pick(512, 512, 4) is None
    for kw in (
        {"stride": 2},
        {"groups": 2},
        {"dilation": 2, "padding": 2},
        {"padding": 0},
        {"padding_mode": "reflect"},
    ):
        assert pick(512, 512, 32, **kw) is None, kw
    assert tile_size(nn.Conv2d(512, 512, 1), 32, 32) is None


class _Net(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.wide = nn.Conv2d(c, c, 3, padding=1)
        self.down = nn.Conv2d(c, c, 3, stride=2, padding=1)
        self.small = nn.Conv2d(c, 4, 3, padding=1)  # reduced channel count 8 * 4 / 12 = 2.7: replaced
        self.proj = nn.Conv2d(4, 2, 3, padding=1)  # reduced channel count 4 * 2 / 6 = 1.3: kept

    def forward(self, x):
        return self.proj(self.small(self.down(self.wide(x))))


def test_use_winograd_replaces_only_the_selected_convolutions(monkeypatch):
    monkeypatch.setattr(winograd, "MIN_REDUCED_CHANNELS", 2)
    monkeypatch.setattr(winograd, "REDUCED_CHANNELS_TIMES_SIDE", 32)  # 2 from 16x16 up
    torch.manual_seed(0)
    net, x = _Net(8).eval(), torch.randn(1, 8, 32, 32)
    with torch.no_grad():
        want = net(x)
    assert use_winograd(net, (x,)) == ["wide", "small"]
    assert isinstance(net.wide, WinogradConv2d) and net.wide.m == 4 and net.small.m == 4
    assert isinstance(net.down, nn.Conv2d) and isinstance(net.proj, nn.Conv2d)
    with torch.no_grad():
        torch.testing.assert_close(net(x), want, rtol=0, atol=1e-4)


def test_use_winograd_replaces_every_name_of_a_shared_convolution():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1))
    net.add_module("again", net[0])
    x = torch.randn(1, 512, 16, 16)
    with torch.no_grad():
        want = net(x)
    assert use_winograd(net, (x,)) == ["0", "again"]
    assert isinstance(net[0], WinogradConv2d) and net[0] is net.again
    with torch.no_grad():
        torch.testing.assert_close(net(x), want, rtol=0, atol=1e-3)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("size", [(12, 12), (13, 10), (9, 9)])
def test_onnx_export_runs_in_onnxruntime_with_a_dynamic_batch(m, size):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    module = WinogradConv2d(conv, m).eval()
    buf = io.BytesIO()
    torch.onnx.export(
        module,
        (torch.randn(1, 16, *size),),
        buf,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 16, *size)
    with torch.no_grad():
        want = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    got = torch.from_numpy(session.run(None, {"x": x.numpy()})[0])
    assert got.shape == (3, 16, *size)
    assert (got.double() - want).abs().max().item() < 1e-4

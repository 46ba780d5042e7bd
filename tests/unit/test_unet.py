"""UNet: shapes, text conditioning and padding mask, gradients, artifacts, bf16, channels_last."""

from __future__ import annotations

import pytest
import torch

from shared.io.artifact import load_component, save_component
from shared.nets import UNET_PRESETS, UNet, build_unet


def inputs(dims: int, size, b: int = 2, c: int = 3, gen_seed: int = 0):
    g = torch.Generator().manual_seed(gen_seed)
    x = torch.randn(b, c, *size, generator=g)
    t = torch.tensor([3, 17])[:b]
    ctx = torch.randn(b, 6, 16, generator=g)
    mask = torch.ones(b, 6, dtype=torch.bool)
    mask[:, 4:] = False
    return x, t, ctx, mask


CASES = [("tiny2d", (8, 8)), ("tiny2d", (7, 5)), ("tiny3d", (8, 8, 4)), ("tiny3d", (8, 8, 5))]


@pytest.mark.parametrize(("preset", "size"), CASES)
def test_output_shape_any_size(preset, size):
    net, _ = build_unet(preset, out_channels=5)
    x, t, ctx, mask = inputs(len(size), size)
    cv = torch.rand(2, 1) if UNET_PRESETS[preset].get("extra_embed_dim") else None
    assert net(x, t, ctx, mask, cond_vector=cv).shape == (2, 5, *size)


@pytest.mark.parametrize("preset", ["tiny2d", "tiny3d"])
def test_context_and_padding_mask(preset):
    torch.manual_seed(0)
    net = build_unet(preset)[0].eval()
    size = (8, 8) if preset == "tiny2d" else (8, 8, 4)
    x, t, ctx, mask = inputs(len(size), size)
    cv = torch.rand(2, 1) if preset == "tiny2d" else None
    with torch.no_grad():
        ref = net(x, t, ctx, mask, cond_vector=cv)
        pad_changed = ctx.clone()
        pad_changed[:, 4:] = torch.randn(2, 2, 16) * 10
        torch.testing.assert_close(net(x, t, pad_changed, mask, cond_vector=cv), ref, rtol=1e-5, atol=1e-6)
        real_changed = ctx.clone()
        real_changed[:, 1] += 1.0
        assert (net(x, t, real_changed, mask, cond_vector=cv) - ref).abs().max() > 1e-4
        # a row without any real token is well defined (no NaN) and equals "no cross-attention"
        empty = torch.zeros_like(mask)
        torch.testing.assert_close(net(x, t, ctx, empty, cond_vector=cv), net(x, t, None, cond_vector=cv))
        if cv is not None:
            assert (net(x, t, ctx, mask, cond_vector=cv + 0.5) - ref).abs().max() > 1e-5


@pytest.mark.parametrize("preset", ["tiny2d", "tiny3d"])
def test_gradients_reach_every_parameter(preset):
    torch.manual_seed(0)
    net = build_unet(preset)[0]
    size = (8, 8) if preset == "tiny2d" else (8, 8, 4)
    x, t, ctx, mask = inputs(len(size), size)
    cv = torch.rand(2, 1) if preset == "tiny2d" else None
    net(x, t, ctx, mask, cond_vector=cv).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().max() > 0, name


def test_save_load_exact(tmp_path):
    torch.manual_seed(0)
    net, init_args = build_unet("tiny3d")
    stem = save_component(net, tmp_path / "unet", init_args, {"role": "test"})
    loaded = load_component(stem)
    assert isinstance(loaded, UNet) and loaded.artifact_metadata == {"role": "test"}
    x, t, ctx, mask = inputs(3, (8, 8, 4))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x, t, ctx, mask), net.eval()(x, t, ctx, mask), rtol=0, atol=0)


@pytest.mark.parametrize("preset", ["tiny2d", "tiny3d"])
def test_bf16_autocast_and_channels_last(preset):
    torch.manual_seed(0)
    net = build_unet(preset)[0].eval()
    size = (8, 8) if preset == "tiny2d" else (8, 8, 4)
    x, t, ctx, mask = inputs(len(size), size)
    cv = torch.rand(2, 1) if preset == "tiny2d" else None
    fmt = torch.channels_last if len(size) == 2 else torch.channels_last_3d
    with torch.no_grad():
        ref = net(x, t, ctx, mask, cond_vector=cv)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x, t, ctx, mask, cond_vector=cv)
        net_cl = net.to(memory_format=fmt)
        cl = net_cl(x.contiguous(memory_format=fmt), t, ctx, mask, cond_vector=cv)
    assert low.dtype == torch.bfloat16
    rel = (low.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel
    torch.testing.assert_close(cl, ref, rtol=1e-4, atol=1e-5)


def test_clear_errors():
    net = build_unet("tiny2d")[0]
    with pytest.raises(ValueError, match="spatial dims"):
        net(torch.randn(1, 3, 8, 8, 8), 0)
    with pytest.raises(ValueError, match="cond_vector"):
        net(torch.randn(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(channels=[8, 16], attention_levels=[False])
    with pytest.raises(KeyError, match="unknown UNet preset"):
        build_unet("huge")


def test_downsample_early_levels_and_presets():
    """Level 0 without ResBlocks (the stage-1 layout) works and trains; presets build in budget."""
    net = UNet(spatial_dims=3, in_channels=3, out_channels=3, channels=[8, 16, 16],
               num_res_blocks=[0, 1, 1], attention_levels=[False, False, True], context_dim=16,
               head_dim=8, norm_groups=4)
    x, t, ctx, mask = inputs(3, (8, 8, 5))
    out = net(x, t, ctx, mask)
    assert out.shape == x.shape
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in net.parameters())
    n_params = sum(p.numel() for p in build_unet("stage2_phantom")[0].parameters())
    assert n_params <= 8_000_000
    assert UNet(**UNET_PRESETS["stage1_phantom"]).multiple == 8

"""The slice LDM's text-painted class map and the denoiser input it feeds (stage2_ct.conditioning)."""

from __future__ import annotations

import pytest
import torch

from stage2_ct.conditioning import ClassTextEmbedding, SliceDenoiser, mask_to_latent_grid


def test_class_map_paints_each_class_vector_on_its_own_pixels() -> None:
    """A pixel of class k gets v_k(text); a half-half pixel the mean of the two vectors."""
    torch.manual_seed(0)
    emb = ClassTextEmbedding(text_dim=6, num_classes=3, dim=4).double()
    pooled = torch.randn(2, 6, dtype=torch.float64)
    labels = torch.tensor([[0, 1], [2, 2]]).repeat(2, 1, 1)  # (B, 2, 2)
    seg = mask_to_latent_grid(labels, (2, 2), 3).double()  # exact one-hot (same grid)
    v = emb.proj(pooled).reshape(2, 3, 4)  # (B, K, d)
    out = emb(pooled, seg)  # (B, d, h, w)
    assert out.shape == (2, 4, 2, 2)
    torch.testing.assert_close(out[:, :, 0, 0], v[:, 0], atol=1e-12, rtol=0)
    torch.testing.assert_close(out[:, :, 0, 1], v[:, 1], atol=1e-12, rtol=0)
    torch.testing.assert_close(out[:, :, 1, 1], v[:, 2], atol=1e-12, rtol=0)
    half = torch.zeros(1, 3, 1, 1, dtype=torch.float64)
    half[0, 0], half[0, 2] = 0.5, 0.5
    torch.testing.assert_close(emb(pooled[:1], half)[0, :, 0, 0], 0.5 * (v[0, 0] + v[0, 2]), atol=1e-12, rtol=0)


def test_text_changes_the_class_map_only_where_the_class_is() -> None:
    """Editing one class's text vector moves the map on that class's pixels and nowhere else."""
    torch.manual_seed(0)
    emb = ClassTextEmbedding(text_dim=5, num_classes=3, dim=2)
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, 1:3, 1:3] = 2  # "organ" 2 in the middle
    seg = mask_to_latent_grid(labels, (4, 4), 3)
    pooled = torch.randn(1, 5)
    a = emb(pooled, seg)
    with torch.no_grad():
        emb.proj[-1].bias[2 * 2 : 3 * 2] += 1.0  # class 2's vector only
    b = emb(pooled, seg)
    moved = (a - b).abs().sum(1)[0] > 1e-6  # (h, w)
    assert torch.equal(moved, labels[0] == 2)


def test_denoiser_with_class_map_needs_pooled_text() -> None:
    class Echo(torch.nn.Module):
        def forward(self, x, t, context=None, context_mask=None, cond_vector=None):
            return x

    den = SliceDenoiser(Echo(), 1000, ClassTextEmbedding(text_dim=4, num_classes=3, dim=2))
    x, prev, seg = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4)
    args = (x, torch.tensor([5]), prev, seg, torch.tensor([[0.5]]), torch.tensor([10]))
    assert den(*args, pooled=torch.zeros(1, 4)).shape == (1, 2 + 2 + 3 + 2, 4, 4)  # x | prev | seg | map
    with pytest.raises(ValueError, match="pooled text"):
        den(*args)

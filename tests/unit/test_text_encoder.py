"""TextEncoder: shapes, mask, freezing, cache, artifacts, null context."""

from __future__ import annotations

import pytest
import torch

from shared.findings import Findings, Tumor
from shared.io.artifact import load_component, save_component
from shared.text.encoder import TextEncoder, text_for

TINY = {"context_length": 32, "width": 32, "heads": 2, "layers": 2}


@pytest.fixture(scope="module")
def enc() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(text_cfg=TINY, embed_dim=24).eval()


def test_shapes_and_mask(enc):
    tokens, mask, pooled = enc.encode(["tumor: none.", "sigmoid colon carcinoma 40 mm with fatty liver"])
    assert tokens.shape == (2, 32, 32) and mask.shape == (2, 32) and pooled.shape == (2, 24)
    assert mask.dtype == torch.bool
    ids = enc.tokenizer(["tumor: none.", "sigmoid colon carcinoma 40 mm with fatty liver"])
    for row, m in zip(ids, mask, strict=True):
        n_real = int((row != 0).sum())  # SOT .. EOT, then zero padding
        assert m[:n_real].all() and not m[n_real:].any()
        assert row[0] == enc.tokenizer.sot_token_id and row[n_real - 1] == enc.tokenizer.eot_token_id


def test_padding_does_not_change_pooled(enc):
    text = "spleen: enlarged."
    short = TextEncoder(text_cfg={**TINY, "context_length": 16}, embed_dim=24)
    short.load_state_dict({k: v[:16] if k.endswith("positional_embedding") or k == "null_tokens" else v
                           for k, v in enc.state_dict().items()})
    with torch.no_grad():
        a = enc.encode([text])[2]
        b = short.eval().encode([text])[2]
        c = enc.encode([text, text + " " + "word " * 20])[2][:1]  # batched with a longer text
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)


def test_different_texts_differ(enc):
    with torch.no_grad():
        _, _, pooled = enc.encode(["tumor: sigmoid colon 40 mm.", "tumor: rectum 20 mm."])
    assert not torch.allclose(pooled[0], pooled[1])


def test_frozen_flags_and_no_grad():
    e = TextEncoder(text_cfg=TINY, embed_dim=24, frozen=True).train()
    trainable = {n for n, p in e.named_parameters() if p.requires_grad}
    assert trainable == {"null_tokens", "null_pooled"}
    assert not e.tower.training  # a frozen tower stays in eval mode
    tokens, _, pooled = e.encode(["liver: fatty."])
    assert not tokens.requires_grad and not pooled.requires_grad
    e.set_frozen(False)
    assert all(p.requires_grad for p in e.parameters())
    assert e.encode(["liver: fatty."])[2].requires_grad


def test_cache_hits_skip_the_transformer():
    e = TextEncoder(text_cfg=TINY, embed_dim=24, frozen=True)
    first = e.encode(["a", "b", "a"])
    assert e.tower_calls == 1
    second = e.encode(["b", "a"])
    assert e.tower_calls == 1  # served from the cache
    torch.testing.assert_close(second[2], first[2][[1, 0]])
    e.load_state_dict(e.state_dict())  # weights changed -> cache invalidated
    e.encode(["a"])
    assert e.tower_calls == 2
    e.set_frozen(False)
    e.encode(["a"]), e.encode(["a"])
    assert e.tower_calls == 4  # no cache while trainable


def test_save_load_identical(tmp_path, enc):
    stem = save_component(enc, tmp_path / "text_encoder", enc.init_args)
    back = load_component(stem).eval()
    texts = ["tumor: none. spleen: normal.", "rectal carcinoma"]
    with torch.no_grad():
        for x, y in zip(enc.encode(texts), back.encode(texts), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)
        for x, y in zip(enc.null_context(2), back.null_context(2), strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_null_context(enc):
    tokens, mask, pooled = enc.null_context(3)
    assert tokens.shape == (3, 32, 32) and mask.shape == (3, 32) and pooled.shape == (3, 24)
    assert mask[:, :2].all() and not mask[:, 2:].any()  # like the empty string: SOT, EOT
    assert tokens.requires_grad and pooled.requires_grad
    with torch.no_grad():
        real = enc.encode(["tumor: none."])
    assert not torch.allclose(real[0][0], tokens[0]) and not torch.allclose(real[2][0], pooled[0])


def test_text_for_modes():
    f = Findings(tumors=(Tumor("sigmoid", 40.0),))
    assert text_for(f) == f.summary()
    assert text_for(f, " Sigmoid  mass. ", "report") == "Sigmoid mass."
    assert text_for(f, "Sigmoid mass.", "both") == f.summary() + " Sigmoid mass."
    with pytest.raises(ValueError, match="input_mode"):
        text_for(f, None, "bogus")
    with pytest.raises(ValueError, match="report"):
        text_for(f, None, "report")


def test_named_open_clip_config_builds_offline():
    e = TextEncoder(model_name="RN50")  # text tower of a named config, random init, no download
    assert e.width == 512 and e.embed_dim == 1024
    with pytest.raises(ValueError, match="unknown"):
        TextEncoder(model_name="no-such-model")


def test_load_pretrained_from_local_file(tmp_path, enc):
    from safetensors.torch import save_file
    path = tmp_path / "tower.safetensors"
    save_file({k: v.contiguous() for k, v in enc.tower.state_dict().items()}, str(path))
    other = TextEncoder(text_cfg=TINY, embed_dim=24, weights=str(path)).load_pretrained().eval()
    with torch.no_grad():
        torch.testing.assert_close(other.encode(["x"])[2], enc.encode(["x"])[2])
    torch.save({"state_dict": {"module." + k: v for k, v in enc.tower.state_dict().items()}},
               tmp_path / "ckpt.pt")
    TextEncoder(text_cfg=TINY, embed_dim=24).load_pretrained(str(tmp_path / "ckpt.pt"))


def test_trim_context_is_exact_for_cross_attention(enc):
    """trim_context cuts the padding shared by every context (the CFG pair keeps one length), and a
    cross-attending UNet gives the same output with the trimmed tokens."""
    from shared.nets.unet import UNet
    from shared.text.encoder import trim_context

    texts = ["tumor: none.", "sigmoid colon carcinoma 40 mm with fatty liver"]
    with torch.no_grad():
        cond, null = enc.encode(texts), enc.null_context(2)
    (tok, mask, pooled), (n_tok, n_mask, _) = trim_context(cond, null)
    longest = int(cond[1].sum(1).max())
    assert tok.shape == (2, longest, 32) and n_tok.shape == (2, longest, 32) and pooled is cond[2]
    assert torch.equal(mask, cond[1][:, :longest]) and torch.equal(n_mask, null[1][:, :longest])
    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=2, out_channels=2, channels=(8, 16), num_res_blocks=1,
               attention_levels=(False, True), context_dim=32, head_dim=8).eval()
    x = torch.randn(2, 2, 8, 8)
    with torch.no_grad():
        full = net(x, torch.tensor([3, 700]), cond[0], cond[1])
        cut = net(x, torch.tensor([3, 700]), tok, mask)
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=0)
    assert not torch.allclose(full, net(x, torch.tensor([3, 700]), cond[0], None), atol=1e-3)  # padding would matter

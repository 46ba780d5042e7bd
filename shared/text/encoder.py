"""Text encoder: an open_clip text tower -> token embeddings, attention mask, pooled embedding.

`TextEncoder(...).encode(texts) -> (tokens (B, L, W), mask (B, L) bool, pooled (B, E))` where
W is the tower width, E its projection (embed) dim, and `mask` is True exactly on the real tokens
SOT..EOT (open_clip pads with 0 after EOT). The tower is causal, so padding never reaches the
EOT token that `pooled` is taken from (open_clip's argmax/EOT pooling + text projection).

Built either from an open_clip model name (its text config only, random init: no download)
or from a small custom text config (the default, fast on CPU). Weights (`weights=`) are loaded
only by `load_pretrained()` — never in `__init__`, so component artifacts and LightningModules
stay in control: a local safetensors / open_clip checkpoint (torch.load(weights_only=True)), or
"hub:<tag>" for open_clip's pretrained tags (downloads; only when explicitly configured).

`frozen=True`: the tower is `.eval().requires_grad_(False)`, runs under no_grad and its outputs
are cached per distinct string (LRU). The learned null condition for classifier-free guidance
(`null_context`) stays trainable even when the tower is frozen.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.model import CLIPTextCfg, _build_text_tower
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

from shared.findings import Findings

log = logging.getLogger(__name__)

INPUT_MODES = ("summary", "report", "both")
DEFAULT_TEXT_CFG: dict[str, Any] = {
    "context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 4,
}
DEFAULT_EMBED_DIM = 256

Context = tuple[torch.Tensor, torch.Tensor, Any]  # tokens (B, L, W), mask (B, L) bool, extra (pooled / None)


def trim_context(*contexts: Context) -> list[Context]:
    """Cut token sequences (and masks) to the longest real (unmasked) length over all contexts.

    Exact (up to floating-point rounding) for attention that masks padded keys (they get zero
    weight: shared.nets.unet), and every context keeps
    the same length, so the CFG pair still concatenates; the third entry passes through.
    """
    length = max(int(c[1].any(0).nonzero().max()) + 1 for c in contexts)
    return [(c[0][:, :length], c[1][:, :length], c[2]) for c in contexts]


def text_for(findings: Findings | None, report: str | None = None, mode: str = "summary") -> str:
    """The string the encoder sees: `summary()`, the report, or both (summary first, so
    truncation at the context length cuts the report, never the summary)."""
    if mode not in INPUT_MODES:
        raise ValueError(f"input_mode: {mode!r} not in {INPUT_MODES}")
    if mode in ("summary", "both") and findings is None:
        raise ValueError(f"input_mode {mode!r} needs findings")
    if mode in ("report", "both") and report is None:
        raise ValueError(f"input_mode {mode!r} needs the report text")
    if mode == "summary":
        return findings.summary()
    if mode == "report":
        return " ".join(report.split())
    return findings.summary() + " " + " ".join(report.split())


class TextEncoder(nn.Module):
    """open_clip text tower with a learned null embedding and a per-string cache when frozen."""

    def __init__(
        self,
        model_name: str | None = None,
        text_cfg: dict[str, Any] | None = None,
        embed_dim: int | None = None,
        weights: str | None = None,
        frozen: bool = False,
        input_mode: str = "summary",
        cache_size: int = 4096,
    ) -> None:
        super().__init__()
        if model_name is not None and text_cfg is not None:
            raise ValueError("give model_name or text_cfg, not both")
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode: {input_mode!r} not in {INPUT_MODES}")
        quick_gelu = False
        if model_name is not None:
            if ":" in model_name:
                raise ValueError(f"model_name {model_name!r}: only built-in open_clip names "
                                 "(e.g. 'ViT-B-32'); weights come from `weights`")
            cfg = open_clip.get_model_config(model_name)
            if cfg is None:
                raise ValueError(f"model_name {model_name!r}: unknown to open_clip "
                                 f"(see open_clip.list_models())")
            text_cfg, embed_dim = dict(cfg["text_cfg"]), embed_dim or cfg["embed_dim"]
            quick_gelu = bool(cfg.get("quick_gelu", False))
        text_cfg = {**DEFAULT_TEXT_CFG, **(text_cfg or {})}
        if text_cfg.get("hf_model_name"):
            raise ValueError("HF text towers are not supported (they download); use an open_clip "
                             "transformer text config")
        self.embed_dim = int(embed_dim or DEFAULT_EMBED_DIM)
        self.config = {"model_name": model_name, "text_cfg": text_cfg, "embed_dim": self.embed_dim,
                       "weights": weights, "frozen": frozen, "input_mode": input_mode,
                       "cache_size": cache_size}
        self.tower = _build_text_tower(self.embed_dim, CLIPTextCfg(**text_cfg), quick_gelu=quick_gelu)
        self.tokenizer = SimpleTokenizer(context_length=text_cfg["context_length"])
        if self.tower.vocab_size < self.tokenizer.vocab_size:
            raise ValueError(f"text_cfg.vocab_size {self.tower.vocab_size} < tokenizer vocabulary "
                             f"{self.tokenizer.vocab_size}")
        self.context_length = int(text_cfg["context_length"])
        self.width = int(text_cfg["width"])
        self.input_mode = input_mode
        self.cache_size = int(cache_size)
        self.tower_calls = 0  # forward passes of the transformer (tests / profiling)
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        # Learned null condition (classifier-free guidance): one token sequence + pooled vector.
        null_ids = self.tokenizer([""])
        self.register_buffer("null_mask", self._mask(null_ids)[0], persistent=False)
        self.null_tokens = nn.Parameter(torch.randn(self.context_length, self.width) * 0.02)
        self.null_pooled = nn.Parameter(torch.randn(self.embed_dim) * 0.02)
        self.frozen = False
        self.set_frozen(frozen)

    # -- configuration ------------------------------------------------------------------------
    @property
    def init_args(self) -> dict[str, Any]:
        """Plain yaml-able constructor arguments (for shared.io.artifact.save_component)."""
        return dict(self.config)

    def set_frozen(self, frozen: bool) -> TextEncoder:
        """Freeze (eval, no grad, cached) or unfreeze the tower; the null embedding stays trainable."""
        self.frozen = bool(frozen)
        self.config["frozen"] = self.frozen
        self.tower.requires_grad_(not self.frozen)
        self.tower.train(self.training and not self.frozen)
        self.clear_cache()
        return self

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            self.tower.eval()  # a frozen tower never switches to train mode
        return self

    def clear_cache(self) -> None:
        self._cache.clear()

    def _apply(self, fn, *args, **kwargs):  # .to() / .cuda() / .half(): cached tensors are stale
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self.clear_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def load_pretrained(self, weights: str | None = None) -> TextEncoder:
        """Load tower weights: a local .safetensors / open_clip .pt checkpoint, or 'hub:<tag>'."""
        weights = weights or self.config["weights"]
        if weights is None:
            raise ValueError("no weights configured")
        if weights.startswith("hub:"):
            if self.config["model_name"] is None:
                raise ValueError("'hub:' weights need model_name")
            clip = open_clip.create_model(self.config["model_name"], pretrained=weights[4:])
            state = clip.state_dict()
        elif Path(weights).suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(weights)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
        state = {k.removeprefix("module.").removeprefix("tower.").removeprefix("text."): v
                 for k, v in state.items()}
        own = self.tower.state_dict()
        picked = {k: v for k, v in state.items() if k in own}
        missing = sorted(set(own) - set(picked))
        if missing:
            raise ValueError(f"{weights}: text-tower weights missing: {missing[:5]}...")
        self.tower.load_state_dict(picked)
        self.clear_cache()
        log.info("loaded text tower weights from %s", weights)
        return self

    # -- encoding -----------------------------------------------------------------------------
    def _mask(self, ids: torch.Tensor) -> torch.Tensor:
        eot = (ids == self.tokenizer.eot_token_id).int().argmax(dim=1)  # (B,)
        return torch.arange(ids.shape[1], device=ids.device)[None] <= eot[:, None]  # (B, L)

    def _run(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        device = self.null_tokens.device
        ids = self.tokenizer(texts).to(device)  # (B, L)
        self.tower.output_tokens = True
        self.tower_calls += 1
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            pooled, tokens = self.tower(ids)  # (B, E), (B, L, W)
        return tokens, self._mask(ids), pooled

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode strings -> tokens (B, L, W), mask (B, L) bool, pooled (B, E)."""
        if isinstance(texts, str):
            texts = [texts]
        if not self.frozen:
            return self._run(list(texts))
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            tokens, mask, pooled = self._run(missing)
            for i, t in enumerate(missing):
                self._cache[t] = (tokens[i], mask[i], pooled[i])
        for t in texts:
            self._cache.move_to_end(t)
        rows = [self._cache[t] for t in texts]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return tuple(torch.stack(parts) for parts in zip(*rows, strict=True))  # type: ignore[return-value]

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode(texts)

    def encode_findings(self, findings: list[Findings], reports: list[str] | None = None):
        """Encode Findings (and reports) with this encoder's `input_mode`."""
        reports = reports if reports is not None else [None] * len(findings)
        return self.encode([text_for(f, r, self.input_mode) for f, r in zip(findings, reports, strict=True)])

    def null_context(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Learned unconditional context: tokens (B, L, W), mask (B, L), pooled (B, E)."""
        tokens = self.null_tokens[None].expand(batch, -1, -1)
        mask = self.null_mask[None].expand(batch, -1).to(self.null_tokens.device)
        return tokens, mask, self.null_pooled[None].expand(batch, -1)

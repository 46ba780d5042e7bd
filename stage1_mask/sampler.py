"""The stage-1 mask sampler as an inference component: text encoder + UNet + categorical scheduler.

`MaskSampler` is what the LightningModule trains (and keeps an EMA copy of) and what the
component artifact stores; `sample_masks` is the one sampling entry point (validation, the
evaluation script, the future pipeline); `export_stage1` / `load_stage1` write and read the
artifact (shared.io.artifact: safetensors + yaml, no pickle).

Conditioning: the text tokens (B, L, W) go to the UNet's cross-attention, the pooled text
embedding (B, E) is added to the time embedding (`cond_vector`). Classifier-free guidance
combines the x0 logits of the text and the learned null condition, both in ONE batched forward.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.diffusion import CategoricalScheduler, Generators, random_draw, sample_loop
from shared.findings import Findings
from shared.io.artifact import (
    InferenceDefaults,
    load_component,
    read_component_spec,
    save_component,
)
from shared.labels import default_labels
from shared.nets import build_unet
from shared.runtime import bf16_is_fast
from shared.text.encoder import TextEncoder, trim_context
from stage1_mask.size import match_class_volume, target_tumor_voxels

log = logging.getLogger(__name__)

Context = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # tokens (B, L, W), mask (B, L), pooled (B, E)


@dataclass(frozen=True)
class MaskSampling(InferenceDefaults):
    """`sample_masks` defaults: the artifact's `inference:` block (these class values where it has none).

    steps: categorical sampling steps; guidance: CFG weight on the x0 logits (1 = conditional only);
    prior_correction: strength of the logit adjustment that undoes the training class weights;
    size_control: tumour volume control mode of stage1_mask.size ("per_tumour", "argmax",
    "expected") or False (off).
    """

    steps: int = 25
    guidance: float = 3.0
    prior_correction: float = 1.0
    size_control: bool | str = False


class MaskSampler(nn.Module):
    """Text encoder + 3D UNet predicting x0 logits of a K-class label volume.

    Args:
        num_classes: K (from labels.yaml).
        unet_preset: name in shared.nets.UNET_PRESETS; `unet_overrides` change single fields.
        text_encoder: TextEncoder keyword arguments, or None when the encoder comes from a
            separate (frozen) artifact attached with `attach_text_encoder`.
        text_dims: (width W, pooled dim E) of the encoder; needed only when `text_encoder` is None.
        scheduler: CategoricalScheduler keyword arguments (num_classes is added).
        likelihood_skip: add log q(x_t | x_0 = k) (the voxel's own evidence, closed form) to the
            UNet's x0 logits, so the UNet learns only the context part. Without it the
            patch-stem UNet failed to copy small structures even from a clean input (a
            31-voxel tumour came back with recall 0.19 at t = 0 after 1,000 steps).
    """

    def __init__(
        self,
        num_classes: int,
        unet_preset: str = "stage1_phantom",
        unet_overrides: dict[str, Any] | None = None,
        text_encoder: dict[str, Any] | None = None,
        text_dims: Sequence[int] | None = None,
        scheduler: dict[str, Any] | None = None,
        likelihood_skip: bool = True,
    ) -> None:
        super().__init__()
        self.text_encoder: TextEncoder | None = TextEncoder(**text_encoder) if text_encoder else None
        if self.text_encoder is not None:
            width, pooled = self.text_encoder.width, self.text_encoder.embed_dim
        elif text_dims is not None:
            width, pooled = (int(d) for d in text_dims)
        else:
            raise ValueError("give text_encoder (kwargs) or text_dims (width, pooled dim)")
        overrides = {"in_channels": num_classes, "out_channels": num_classes, "context_dim": width,
                     "extra_embed_dim": pooled, **(unet_overrides or {})}
        self.unet, self.unet_args = build_unet(unet_preset, **overrides)
        self.scheduler = CategoricalScheduler(num_classes, **(scheduler or {}))
        self.num_classes = num_classes
        self.likelihood_skip = bool(likelihood_skip)
        # -log(class loss weight) (K,): the logit adjustment applied when sampling (set in training)
        self.register_buffer("logit_bias", torch.zeros(num_classes))
        self.sampling = MaskSampling()  # the artifact's inference block once loaded (load_stage1)
        self.config = {"num_classes": num_classes, "unet_preset": unet_preset,
                       "unet_overrides": dict(unet_overrides or {}), "text_encoder": text_encoder,
                       "text_dims": [width, pooled], "scheduler": dict(scheduler or {}),
                       "likelihood_skip": self.likelihood_skip}

    def attach_text_encoder(self, encoder: TextEncoder) -> None:
        """Use a separately loaded (frozen) text encoder, e.g. the shared CLIP artifact."""
        if [encoder.width, encoder.embed_dim] != self.config["text_dims"]:
            raise ValueError(f"text encoder dims {[encoder.width, encoder.embed_dim]} != the UNet's "
                             f"{self.config['text_dims']}")
        self.text_encoder = encoder

    # ---------------------------------------------------------------- conditioning
    def encode(self, texts: Sequence[str | Findings]) -> Context:
        if self.text_encoder is None:
            raise RuntimeError("no text encoder attached")
        strings = [t.summary() if isinstance(t, Findings) else str(t) for t in texts]
        return self.text_encoder.encode(strings)

    def null_context(self, batch: int) -> Context:
        return self.text_encoder.null_context(batch)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
        context_mask: torch.Tensor, cond_vector: torch.Tensor,
    ) -> torch.Tensor:
        """x (B, K, *S) one-hot x_t, t (B,) -> x0 logits (B, K, *S) in float32."""
        logits = self.unet(x, t, context, context_mask, cond_vector).float()
        if self.likelihood_skip:
            logits = logits + self.scheduler.log_likelihood(x.float(), t)
        return logits


def drop_condition(cond: Context, null: Context, p: float, generator: Generators = None) -> Context:
    """Replace each sample's condition by the null one with probability p (CFG training)."""
    if p <= 0:
        return cond
    b = cond[0].shape[0]
    drop = random_draw("uniform", (b,), generator, cond[0].device) < p  # (B,)
    return tuple(torch.where(drop.view(-1, *([1] * (c.ndim - 1))), n.to(c.dtype), c)
                 for c, n in zip(cond, null, strict=True))  # type: ignore[return-value]


def _sampler_of(module: nn.Module) -> MaskSampler:
    """A MaskSampler itself, or the EMA sampler of a MaskDiffusionModule."""
    if isinstance(module, MaskSampler):
        return module
    for name in ("ema_model", "model"):
        sampler = getattr(module, name, None)
        if isinstance(sampler, MaskSampler):
            return sampler
    raise TypeError(f"{type(module).__name__} holds no MaskSampler")


@torch.no_grad()
def sample_masks(
    module: nn.Module,
    summaries: Sequence[str | Findings],
    generator: Generators = None,
    steps: int | None = None,
    guidance: float | None = None,
    grid: Sequence[int] | None = None,
    bf16: bool | None = None,
    prior_correction: float | None = None,
    size_control: bool | str | None = None,
) -> torch.Tensor:
    """Sample label volumes for `summaries` (strings or Findings) -> probs (B, K, X, Y, Z).

    Labels are `probs.argmax(1)`. Every setting left None is the sampler's `sampling` default
    (`MaskSampling`: the artifact's `inference:` block). CFG pair in one batched forward (guidance
    w: 1 = conditional only, 0 = unconditional); bf16 autocast on the module's device when `bf16`
    (None = where bf16 is fast there: shared.runtime.bf16_is_fast).
    `prior_correction` scales the logit adjustment -log w_k that undoes the class weights of the
    training loss (1 = full correction, 0 = the raw, weight-inflated logits). `size_control`: at
    every step, shift the tumour logit of each sample so that its tumour volume equals the sizes
    its text reports (`stage1_mask.size`: "per_tumour" (= True), "argmax", "expected"; False =
    off). `grid` defaults to the artifact / module grid. `generator`: one generator drives every
    random draw, or one generator per sample makes each sample independent of its batch.
    """
    sampler = _sampler_of(module)
    defaults = getattr(sampler, "sampling", MaskSampling())
    steps, guidance = defaults.steps if steps is None else steps, defaults.guidance if guidance is None else guidance
    grid = list(grid or getattr(module, "grid", None) or getattr(sampler, "artifact_metadata", {}).get("grid"))
    device = next(sampler.parameters()).device
    bf16 = bf16_is_fast(device) if bf16 is None else bf16
    was_training = sampler.training
    sampler.eval()
    b, k = len(summaries), sampler.num_classes
    cond, null = trim_context(sampler.encode(summaries), sampler.null_context(b))
    keys = ("context", "context_mask", "cond_vector")
    x_T = sampler.scheduler.init_noise((b, k, *grid), generator=generator, device=device)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    if prior_correction is None:
        prior_correction = defaults.prior_correction
    bias = (prior_correction * sampler.logit_bias).view(1, k, *([1] * len(grid)))

    def model_fn(x: torch.Tensor, t: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        return sampler(x, t, **cond).float() + bias  # (B, K, *S) adjusted x0 logits, float32

    output_fn = None
    if size_control is None:
        size_control = defaults.size_control
    if size_control:
        mode = size_control if isinstance(size_control, str) else "per_tumour"
        target = target_tumor_voxels(summaries, _spacing_of(module, sampler))  # (B, M) voxels, NaN = free
        tumor = _tumor_class(module, sampler)

        def output_fn(logits: torch.Tensor) -> torch.Tensor:
            return match_class_volume(logits, tumor, target, mode)

    with autocast:
        _, probs = sample_loop(
            model_fn, sampler.scheduler, x_T, generator=generator, guidance=guidance,
            cond=dict(zip(keys, cond, strict=True)), uncond=dict(zip(keys, null, strict=True)),
            num_inference_steps=steps, batch_cfg=True, output_fn=output_fn,
        )
    sampler.train(was_training)
    return probs.float()


def _spacing_of(module: nn.Module, sampler: MaskSampler) -> list[float]:
    spacing = getattr(module, "spacing", None) or getattr(sampler, "artifact_metadata", {}).get("spacing")
    if not spacing:
        raise ValueError("size_control needs the grid spacing (artifact metadata 'spacing' or module.spacing)")
    return [float(v) for v in spacing]


def _tumor_class(module: nn.Module, sampler: MaskSampler) -> int:
    """Class id of the (first) tumour label, by name where the class names are known."""
    table = default_labels()
    names = getattr(sampler, "artifact_metadata", {}).get("class_names")
    if not names and hasattr(module, "hparams"):
        names = module.hparams.get("class_names")
    tumor_names = [table.names[i] for i in table.tumor_ids]
    for i, name in enumerate(names or []):
        if name in tumor_names:
            return i
    return table.tumor_ids[0]


# -------------------------------------------------------------------- artifact
def export_stage1(
    sampler: MaskSampler,
    path: str | Path,
    metadata: dict[str, Any],
    text_encoder_artifact: str | None = None,
    half: bool = True,
    inference: MaskSampling | None = None,
) -> Path:
    """Write the sampler as a component artifact (UNet + text encoder unless it is an external
    artifact, named in the metadata) with `inference` (default: the sampler's `sampling`) as its
    `inference:` block. `half`: store weights as float16 (load converts back)."""
    import copy

    sampler = copy.deepcopy(sampler).cpu()
    config = dict(sampler.config)
    # the resolved UNet arguments, so a later change of the named preset cannot break the artifact
    config["unet_overrides"] = dict(sampler.unet_args)
    if text_encoder_artifact is not None:
        sampler.text_encoder = None
        config["text_encoder"] = None
    if half:
        sampler.half()
    meta = {**metadata, "text_encoder_artifact": text_encoder_artifact}
    inference = inference or sampler.sampling
    return save_component(sampler, path, init_args=config, metadata=meta, inference=inference.to_dict())


def load_stage1(path: str | Path, map_location: str | torch.device = "cpu") -> MaskSampler:
    """`sampler = load_stage1("weights/stage1_phantom")`: the float32, eval-mode MaskSampler with
    `artifact_metadata` (grid, spacing, class_names, ...) and `sampling` (its inference block)."""
    spec = read_component_spec(path)
    # float16-stored weights are copied into the float32 parameters by load_state_dict
    sampler: MaskSampler = load_component(path, map_location=map_location).eval()  # type: ignore[assignment]
    text_artifact = spec["metadata"].get("text_encoder_artifact")
    if text_artifact:
        text_path = Path(text_artifact)
        if not text_path.is_absolute():
            text_path = Path(path).parent / text_path
        encoder = load_component(text_path, map_location=map_location).eval()
        sampler.attach_text_encoder(encoder.set_frozen(True))
    sampler.text_encoder.set_frozen(True)
    sampler.grid = list(sampler.artifact_metadata["grid"])
    sampler.sampling = MaskSampling.from_block(spec["inference"], f"{Path(path).with_suffix('.yaml')}: inference")
    return sampler

"""`GuideGenPipeline`: report text (or Findings) -> CT volume (int16 HU) + label volume (uint8) on
one RAS geometry. Inference only; it orchestrates, the stages sample (diffusers style):

    report --abstraction (lexicon; the LLM backend when configured)--> Findings
      --stage 1 (MaskSampler, stage-1 grid)--> class probabilities (B, K, x, y, z)
      --island clean-up at the stage-1 grid (cheap there)--> probabilities of the kept labels
      --trilinear upsampling of the probabilities, argmax--> labels on the CT grid (B, X, Y, Z)
      --stage 2 (SliceGenerator, slice after slice)--> CT in HU

Every case has its own torch.Generator (seeded by the caller, e.g. from (seed, case id)), used by
both samplers in turn, so a case's output does not depend on the batch it runs in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shared.data.downsample import upsample_probs
from shared.findings import Findings
from shared.labels import LabelTable
from shared.runtime import bf16_is_fast
from shared.text import abstract_report
from shared.text.volume import findings_from_volume
from stage1_mask.postprocess import remove_islands
from stage1_mask.sampler import MaskSampler, load_stage1, sample_masks
from stage2_ct.generator import SliceGenerator, load_slice_ldm

log = logging.getLogger(__name__)

Prompt = str | Findings


@dataclass
class GeneratedCase:
    """One generated case: arrays (X, Y, Z) in RAS with their (4, 4) voxel -> world affine (mm)."""

    ct: np.ndarray  # int16 HU
    labels: np.ndarray  # uint8 class ids of the bundle's label table
    affine: np.ndarray
    asked: Findings  # what the prompt says
    readback: Findings  # what the generated volumes read back as (findings_from_volume)

    @property
    def agreement(self) -> dict[str, bool]:
        """Per-field agreement of readback with asked; a phase the prompt leaves unknown agrees."""
        agree = self.asked.agreement(self.readback)
        if self.asked.phase == "unknown":
            agree["phase"] = True
        return agree

    @property
    def reads_as_asked(self) -> bool:
        return all(self.agreement.values())


@dataclass
class StageTimes:
    """Seconds spent in each part of the last call (sampling calls vs what the pipeline adds)."""

    stage1: float = 0.0
    stage2: float = 0.0
    other: dict[str, float] = field(default_factory=dict)

    @property
    def pipeline(self) -> float:
        return sum(self.other.values())


class GuideGenPipeline:
    """Args:
        mask_sampler: the stage-1 MaskSampler (its `sampling` defaults apply).
        slice_generator: the stage-2 SliceGenerator (its `sampling` defaults apply).
        labels: the label table both use.
        ct_grid / ct_affine: the CT grid (X, Y, Z) and its RAS affine; the stage-1 grid must divide it.
        abstractor: report -> Findings (default: the lexicon, shared.text.abstract_report).
        clean_min_voxels: islands smaller than this (stage-1 voxels) take their neighbours' class
            (the largest component of every class always stays; 0 = off).
        default_phase: the contrast phase both stages are told when a report leaves it unknown
            (the phantom training data always has one; the case's `asked` findings keep "unknown").
        stage1_batch: most masks per stage-1 sampling call (a larger batch is split; every case
            has its own generator, so the split changes no output); larger stage-1 batches were
            slower per mask on 2 CPU cores (docs/benchmarks.md, "Pipeline").
    """

    def __init__(self, mask_sampler: MaskSampler, slice_generator: SliceGenerator, labels: LabelTable,
                 ct_grid: Sequence[int], ct_affine: np.ndarray,
                 abstractor: Callable[[str], Findings] | None = None, clean_min_voxels: int = 8,
                 default_phase: str = "portal_venous", stage1_batch: int = 4) -> None:
        self.mask_sampler, self.slice_generator, self.labels = mask_sampler, slice_generator, labels
        self.ct_grid, self.ct_affine = tuple(int(v) for v in ct_grid), np.asarray(ct_affine, dtype=np.float64)
        self.abstractor = abstractor or abstract_report
        self.clean_min_voxels = int(clean_min_voxels)
        self.default_phase = default_phase
        if stage1_batch < 1:
            raise ValueError(f"stage1_batch must be >= 1, got {stage1_batch}")
        self.stage1_batch = int(stage1_batch)
        self.times = StageTimes()
        for name, k in (("stage 1", mask_sampler.num_classes), ("stage 2", slice_generator.num_classes)):
            if k != labels.num_classes:
                raise ValueError(f"{name} has {k} classes, the label table {labels.name!r} {labels.num_classes}")

    @classmethod
    def from_bundle(cls, bundle: str | Path | None = None, device: str | torch.device = "cpu",
                    abstractor: Callable[[str], Findings] | None = None, **kw) -> GuideGenPipeline:
        """Load a bundle (pipelines.bundle: --bundle, $GUIDEGEN_BUNDLE or the checkout's), hashes checked."""
        from pipelines.bundle import load_bundle

        b = load_bundle(bundle)
        sampler = load_stage1(b.component("stage1"), map_location=device)
        generator = load_slice_ldm(b.component("stage2"), map_location=device)
        if tuple(sampler.grid) != b.mask_grid:
            raise ValueError(f"{b.path}: mask_grid {b.mask_grid} != the stage-1 artifact's grid {sampler.grid}")
        return cls(sampler, generator, b.labels, b.ct_grid, b.ct_affine(), abstractor, **kw)

    @property
    def device(self) -> torch.device:
        return self.slice_generator.device

    # ---------------------------------------------------------------- steps
    def findings_of(self, prompts: Sequence[Prompt]) -> list[Findings]:
        """Report text -> Findings (the abstraction step); Findings pass through."""
        return [p if isinstance(p, Findings) else self.abstractor(p) for p in prompts]

    def conditioning(self, findings: Findings) -> Findings:
        """The findings the samplers are told: an unknown phase becomes `default_phase`."""
        return findings.replace(phase=self.default_phase) if findings.phase == "unknown" else findings

    def sample_masks(self, findings: Sequence[Findings], generators: Sequence[torch.Generator],
                     steps: int | None = None, guidance: float | None = None,
                     bf16: bool | None = None) -> torch.Tensor:
        """Labels on the CT grid (B, X, Y, Z) uint8 (on the CPU) for the findings."""
        t0 = time.perf_counter()
        told, gens, n = [self.conditioning(f) for f in findings], list(generators), self.stage1_batch
        probs = torch.cat([sample_masks(self.mask_sampler, told[i : i + n], gens[i : i + n], steps=steps,
                                        guidance=guidance, bf16=bf16)
                           for i in range(0, len(told), n)])  # (B, K, x, y, z)
        self.times.stage1 += time.perf_counter() - t0
        t0 = time.perf_counter()
        probs = self._clean(probs.float().cpu())
        labels = upsample_probs(probs, self.ct_grid).argmax(1).to(torch.uint8)  # (B, X, Y, Z)
        self.times.other["masks"] = self.times.other.get("masks", 0.0) + time.perf_counter() - t0
        return labels

    def _clean(self, probs: torch.Tensor) -> torch.Tensor:
        """Island clean-up at the stage-1 grid: voxels whose label the clean-up changes get the
        one-hot probabilities of their new class (so upsampling keeps the decision)."""
        if self.clean_min_voxels <= 0:
            return probs
        raw = probs.argmax(1).to(torch.uint8).numpy()  # (B, x, y, z)
        out = probs.clone()
        for i, lab in enumerate(raw):
            clean = remove_islands(lab, self.clean_min_voxels)
            changed = torch.from_numpy(clean != lab)
            if changed.any():
                onehot = torch.nn.functional.one_hot(torch.from_numpy(clean).long(), probs.shape[1])
                out[i] = torch.where(changed[None], onehot.movedim(-1, 0).float(), probs[i])
        return out

    def generate_ct(self, labels: torch.Tensor, findings: Sequence[Findings],
                    generators: Sequence[torch.Generator], steps: int | None = None,
                    guidance: float | None = None, bf16: bool | None = None) -> torch.Tensor:
        """CT in HU (B, X, Y, Z) float32 for labels on the CT grid."""
        t0 = time.perf_counter()
        hu = self.slice_generator.generate(labels, [self.conditioning(f).summary() for f in findings], list(generators),
                                           autocast=bf16, steps=steps, guidance=guidance)
        self.times.stage2 += time.perf_counter() - t0
        return hu.cpu()

    # ---------------------------------------------------------------- all of it
    def __call__(
        self,
        prompts: Sequence[Prompt],
        generators: Sequence[torch.Generator],
        stage1_steps: int | None = None,
        stage1_guidance: float | None = None,
        stage2_steps: int | None = None,
        stage2_guidance: float | None = None,
        bf16: bool | None = None,
        readback: bool = True,
    ) -> list[GeneratedCase]:
        """Generate one case per prompt, prompt i driven by generators[i]. None settings = the
        components' defaults (their artifacts' inference blocks); bf16 None = where it is fast."""
        if len(generators) != len(prompts):
            raise ValueError(f"{len(generators)} generators for {len(prompts)} prompts")
        self.times = StageTimes()
        t0 = time.perf_counter()
        findings = self.findings_of(prompts)
        self.times.other["abstraction"] = time.perf_counter() - t0
        bf16 = bf16_is_fast(self.device) if bf16 is None else bf16
        labels = self.sample_masks(findings, generators, stage1_steps, stage1_guidance, bf16)
        hu = self.generate_ct(labels, findings, generators, stage2_steps, stage2_guidance, bf16)
        return self._cases(hu, labels, findings, readback)

    def ct_from_masks(
        self,
        labels: torch.Tensor,
        prompts: Sequence[Prompt],
        generators: Sequence[torch.Generator],
        stage2_steps: int | None = None,
        stage2_guidance: float | None = None,
        bf16: bool | None = None,
        readback: bool = True,
    ) -> list[GeneratedCase]:
        """CT for given label volumes on the CT grid (B, X, Y, Z) (stage 2 only; the prompts give
        the text: phase, fatty liver, ...); cases on the pipeline's CT affine."""
        if tuple(labels.shape[1:]) != self.ct_grid:
            raise ValueError(f"labels must be on the CT grid {self.ct_grid}, got {tuple(labels.shape[1:])}")
        if len(generators) != len(prompts) or len(prompts) != len(labels):
            raise ValueError(f"{len(labels)} label volumes, {len(prompts)} prompts, {len(generators)} generators")
        self.times = StageTimes()
        findings = self.findings_of(prompts)
        bf16 = bf16_is_fast(self.device) if bf16 is None else bf16
        labels = labels.to(torch.uint8).cpu()
        hu = self.generate_ct(labels, findings, generators, stage2_steps, stage2_guidance, bf16)
        return self._cases(hu, labels, findings, readback)

    def _cases(self, hu: torch.Tensor, labels: torch.Tensor, findings: Sequence[Findings],
               readback: bool) -> list[GeneratedCase]:
        t0 = time.perf_counter()
        ct = np.clip(np.rint(hu.numpy()), -32768, 32767).astype(np.int16)
        lab = labels.numpy()
        self.times.other["to_arrays"] = time.perf_counter() - t0
        cases = []
        for i, f in enumerate(findings):
            t0 = time.perf_counter()
            got = findings_from_volume(lab[i], self.ct_affine, ct[i], self.labels) if readback else f
            self.times.other["readback"] = self.times.other.get("readback", 0.0) + time.perf_counter() - t0
            cases.append(GeneratedCase(ct=ct[i], labels=lab[i], affine=self.ct_affine.copy(), asked=f, readback=got))
        return cases

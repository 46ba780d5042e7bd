"""Stage 1: volumetric CCDM mask sampler conditioned on the report (and the report<->anatomy CLIP)."""

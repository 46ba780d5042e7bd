"""Session-wide fixtures: one tiny phantom dataset shared by the tests (DESIGN.md section 12)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None)
settings.load_profile("ci")


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """Manifest of 10 phantom cases on the small test grid (32 x 32 x 16 at 12 x 12 x 25 mm)."""
    from shared.data.build import build_dataset

    logging.getLogger("shared").setLevel(logging.WARNING)
    root = tmp_path_factory.mktemp("phantom_small")
    return build_dataset(root, n_cases=10, jobs=1, seed=0, grid="small")

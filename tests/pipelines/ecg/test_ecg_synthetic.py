"""Synthetic PTB-XL: any dataset seed finishes quickly (the beat bank uses a checked seed) and seeds differ."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import wfdb

from pipelines.ecg.synthetic import write_synthetic_ptbxl


@pytest.mark.timeout(180)
def test_other_seeds_finish_and_differ(tmp_path: Path) -> None:
    a = write_synthetic_ptbxl(tmp_path / "a", n=3, seed=123)
    b = write_synthetic_ptbxl(tmp_path / "b", n=3, seed=0)
    again = write_synthetic_ptbxl(tmp_path / "c", n=3, seed=123)
    rec = "records100/00000/00001_lr"
    sa, sb, sc = (wfdb.rdrecord(str(root / rec)).p_signal for root in (a, b, again))
    assert sa.shape == (1000, 12)
    assert np.array_equal(sa, sc), "same seed, same record"
    assert not np.allclose(sa, sb), "another seed, another record"

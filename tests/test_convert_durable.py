"""What `g4 convert` fsyncs: every file it leaves behind, never the intermediate it deletes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from g4cli import fsutil
from quantize.converter import convert


def _fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    names: list[str] = []
    real = fsutil.fsync_file
    monkeypatch.setattr(fsutil, "fsync_file", lambda p: (names.append(Path(p).name), real(p)))
    return names


@pytest.mark.parametrize("quant", ["Q8_0", "BF16"])  # Q8_0 goes through an unquantized intermediate
def test_outputs_are_fsynced_and_the_intermediate_is_not(
    tiny: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quant: str
) -> None:
    checkpoint = tiny("e2b")
    fsynced = _fsynced(monkeypatch)
    out = tmp_path / f"e2b-{quant}.gguf"
    result = convert(checkpoint, out, quant=quant)
    assert result.text == out and result.n_tensors > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, f"mmproj-{out.stem}.gguf"])
    # each output is written under a temporary name (``partial_path``), fsynced, then renamed
    text = [name for name in fsynced if "mmproj" not in name]
    assert text == [fsutil.partial_path(out).name]
    assert len(fsynced) == 2

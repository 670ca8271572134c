"""Bad drafter input is one clear error before any generation: wrong arch, another model's drafter."""

from __future__ import annotations

import pytest

from g4cli.errors import DraftError


def test_wrong_arch_and_width(gguf, drafter_gguf) -> None:
    from g4cli.chat.runtime.draft import check_drafter

    with pytest.raises(DraftError, match="not a drafter"):
        check_drafter(gguf("e4b", "F32"), 256)  # a target GGUF (arch gemma4)
    with pytest.raises(DraftError, match="hidden size 256, this model's is 1536"):
        check_drafter(drafter_gguf("e4b", "F32"), 1536)  # a tiny drafter against E2B's width
    check_drafter(drafter_gguf("e4b", "F32"), 256)

"""``g4 chat --draft auto|on|off``, ``--draft-max``, ``--drafter``: stats, bad input, the fallback."""

from __future__ import annotations

import json
import shutil

ARGS = ("--local", "--temp", "0", "-n", "24")


def test_drafter_beside_the_model_is_used(run_g4, gguf, drafter_gguf, tmp_path) -> None:
    model = tmp_path / "m.gguf"
    shutil.copy(gguf("e4b", "Q8_0"), model)
    shutil.copy(drafter_gguf("e4b", "Q8_0"), tmp_path / "drafter-m.gguf")
    drafted = run_g4("chat", model, "hello", *ARGS, "--json")
    plain = run_g4("chat", model, "hello", *ARGS, "--json", "--draft", "off")
    assert drafted.returncode == plain.returncode == 0, drafted.err
    a, b = json.loads(drafted.out), json.loads(plain.out)
    assert a["response"] == b["response"] and a["thinking"] == b["thinking"]
    assert a["timings"]["draft_tokens"] > 0 and "draft_tokens" not in b["timings"]
    verbose = run_g4("chat", model, "hello", *ARGS, "--verbose", "--draft-max", "2")
    assert verbose.returncode == 0 and "drafted" in verbose.err and "accepted" in verbose.err


def test_bad_drafters_are_one_line(run_g4, gguf, drafter_gguf) -> None:
    target = gguf("e4b", "Q8_0")
    wrong_arch = run_g4("chat", target, "hi", *ARGS, "--drafter", target)
    assert wrong_arch.returncode == 1 and wrong_arch.err_lines == [
        f"Error: {target}: a gemma4 model, not a drafter (arch gemma4-assistant)"
    ]
    none = run_g4("chat", target, "hi", *ARGS, "--draft", "on")
    assert none.returncode == 1 and len(none.err_lines) == 1 and "has no drafter" in none.err
    usage = run_g4("chat", target, "hi", *ARGS, "--draft", "maybe")
    assert usage.returncode == 2


def test_other_models_drafter_is_refused(gguf, drafter_gguf) -> None:
    """Hidden size mismatch: the tiny drafter (backbone 256) for a model of width 1536 (E2B's)."""
    import pytest

    from g4cli.chat.runtime.draft import check_drafter
    from g4cli.errors import DraftError

    with pytest.raises(DraftError, match="hidden size 256, this model's is 1536"):
        check_drafter(drafter_gguf("e4b", "F32"), 1536)


def test_unloadable_drafter_falls_back_with_one_notice(gguf, drafter_gguf, monkeypatch, capsys) -> None:
    from g4cli.chat import drafting
    from g4cli.chat.runtime import draft
    from g4cli.chat.runtime.model import Model
    from g4cli.chat.select import Choice
    from g4cli.chat.settings import LoadOptions

    monkeypatch.setattr(draft, "TESTED_VERSIONS", ("9.9.9",))  # as with another llama-cpp-python
    target = gguf("e4b", "Q8_0")
    with Model(target, n_ctx=256) as model:
        drafting.attach_for(model, Choice("m", target, None), LoadOptions(drafter=drafter_gguf("e4b", "Q8_0")))
        assert getattr(model, "drafter", None) is None
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("drafting off: llama-cpp-python")

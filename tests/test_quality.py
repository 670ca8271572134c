"""``g4 quality`` / ``g4 pull --report`` on the QAT-grid tiny model: KLD(q4_0_qat) < KLD(naive q4_0),
both computed by llama.cpp on the two GGUFs; a model against itself scores zero."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from g4cli.models import quality
from quantize.converter import convert


@pytest.fixture(scope="module")
def ggufs(tiny, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ckpt = tiny("e2b", dtype="BF16", qat=True, vision=False, audio=False)
    d = tmp_path_factory.mktemp("quality")
    out = {q: d / f"{q}.gguf" for q in ("BF16", "Q4_0_QAT", "Q4_0")}
    for q, path in out.items():
        convert(ckpt, path, quant=q, mmproj_type=None)
    text = d / "text.txt"
    text.write_text(quality.calibration_text()[:1200], encoding="utf-8")  # 2-3 windows: the tiny tokenizer is bytes
    out["text"] = text
    return out


def report(run_g4, model: Path, ggufs: dict[str, Path]) -> dict:
    r = run_g4("quality", model, "--against", ggufs["BF16"], "--text", ggufs["text"], "--json")
    assert r.returncode == 0, r.err
    return json.loads(r.out)


def test_qat_aware_is_closer_to_bf16_than_naive_q4_0(run_g4, ggufs) -> None:
    qat, naive = report(run_g4, ggufs["Q4_0_QAT"], ggufs), report(run_g4, ggufs["Q4_0"], ggufs)
    print(f"\nKLD q4_0_qat {qat['kld_mean']:.6f} (same top-1 {qat['same_top1']:.1%}, ppl {qat['ppl_model']:.2f})")
    print(f"KLD q4_0     {naive['kld_mean']:.6f} (same top-1 {naive['same_top1']:.1%}, ppl {naive['ppl_model']:.2f})")
    print(f"BF16 ppl {qat['ppl_reference']:.2f}")
    assert qat["tokens"] == naive["tokens"] > 100
    assert qat["kld_mean"] < naive["kld_mean"] / 5
    assert qat["same_top1"] > naive["same_top1"]
    assert qat["ppl_reference"] == naive["ppl_reference"]


def test_a_model_against_itself_scores_zero_and_the_text_report_reads(run_g4, ggufs) -> None:
    r = run_g4("quality", ggufs["Q4_0"], "--against", ggufs["Q4_0"], "--text", ggufs["text"])
    assert r.returncode == 0, r.err
    rows = dict(line.split(None, 1) for line in r.out.splitlines() if not line.startswith("same"))
    assert rows["KLD"].startswith("0.000000 mean")
    assert "same top-1  100.00 %" in r.out
    ppl = rows["perplexity"].split()
    assert ppl[0] == ppl[3]


def test_windows_score_every_token_once_with_context() -> None:
    for n, window in ((10, 4), (1000, 256), (255, 256), (256, 256), (2, 8)):
        scored = []
        for start, stop, first in quality._windows(n, window):
            assert stop - start <= window - 1
            assert first >= (window - 1) // 2 or start == 0
            scored += range(start + first, stop)
        assert scored == list(range(1, n)), (n, window)


def test_pull_report_compares_with_the_kept_source(tiny, run_g4) -> None:
    from hub_server import HubServer

    server = HubServer()
    server.add_repo(
        "google/gemma-4-E2B-it-qat-q4_0-unquantized", tiny("e2b", dtype="BF16", qat=True, vision=False, audio=False)
    )
    try:
        r = run_g4("pull", "e2b-qat", "--report", env={"HF_ENDPOINT": server.url})
    finally:
        server.close()
    assert r.returncode == 0, r.err
    assert Path(r.out.strip()).parent.name == "Q4_0_QAT"
    assert "source-BF16.gguf" in r.err and "KLD" in r.err and "same top-1" in r.err and "perplexity" in r.err

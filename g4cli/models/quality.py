"""How close a quantized model is to its unquantized one: KL divergence, same top-1, perplexity.

Both GGUFs are evaluated by llama.cpp (llama-cpp-python with every position's logits kept) on
the same tokens of a calibration text: the opening of Lewis Carroll's *Alice's Adventures in
Wonderland* (1865, public domain), shipped as ``g4cli/data/calibration.txt``. The text is cut
into windows of ``window`` tokens, each starting with BOS, overlapping by half; every text token
is predicted once, from at least half a window of context (the first window's tokens from
whatever precedes them), as llama.cpp's ``llama-perplexity --kl-divergence`` scores the second
half of each chunk. Per predicted position:

- KL(P_ref || P_model) of the two next-token distributions (softmax of the logits, which
  llama.cpp has already soft-capped for Gemma 4), in nats;
- whether both put the same token first ("same top-1"; unsloth's "flips" are the rest);
- each model's negative log-likelihood of the actual next token (perplexity = exp of its mean).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from g4cli.errors import UsageError

WINDOW = 256  # tokens per evaluation window: 256 x 262k logits (F32) = 256 MiB per model
ROWS = 16  # positions whose log-softmax is computed at once (float64, bounded memory)


@dataclass
class Report:
    model: str
    reference: str
    tokens: int  # positions scored
    kld_mean: float
    kld_median: float
    kld_p99: float
    same_top1: float  # fraction
    ppl_model: float
    ppl_reference: float

    def as_dict(self) -> dict:
        return asdict(self)


def calibration_text() -> str:
    return (resources.files("g4cli") / "data" / "calibration.txt").read_text(encoding="utf-8")


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _load(path: Path, window: int, threads: int | None):
    import llama_cpp

    from g4cli.chat.runtime.ggml_api import backend_init
    from g4cli.chat.runtime.hardware import physical_cores

    backend_init()  # as g4 chat: without the CPU buffer types that crash
    threads = threads or physical_cores()  # as g4 chat: oversubscribed ggml threads spin

    return llama_cpp.Llama(
        str(path), n_ctx=window, n_batch=window, n_ubatch=window, logits_all=True, n_threads=threads, verbose=False
    )


def _windows(n_tokens: int, window: int) -> list[tuple[int, int, int]]:
    """(start, stop, first scored index within the window) over the text's tokens: windows of
    ``window - 1`` text tokens after BOS, every text token after the first scored exactly once."""
    span, step = window - 1, (window - 1) // 2
    out, start, scored = [], 0, 1  # the first text token has no text before it: never predicted
    while scored < n_tokens:
        stop = min(start + span, n_tokens)
        out.append((start, stop, scored - start))
        scored = stop
        start = max(stop - step, 0) if stop < n_tokens else stop
    return out


def compare(model: Path, reference: Path, *, text: str | None = None, window: int = WINDOW,
            threads: int | None = None) -> Report:  # fmt: skip
    """The report for ``model`` against ``reference`` (both GGUF paths) over ``text``."""
    text = calibration_text() if text is None else text
    q, ref = _load(model, window, threads), _load(reference, window, threads)
    try:
        return _score(q, ref, text, window, model, reference)
    finally:
        q.close()
        ref.close()


def _score(q, ref, text: str, window: int, model: Path, reference: Path) -> Report:
    tokens = ref.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    if q.n_vocab() != ref.n_vocab() or q.tokenize(text.encode("utf-8"), add_bos=False, special=False) != tokens:
        raise UsageError(f"{model.name} and {reference.name} have different vocabularies: not the same model")
    if len(tokens) < 2:
        raise UsageError("the calibration text is too short")
    bos = ref.token_bos()
    kld, same, nll_q, nll_ref = [], [], [], []
    for start, stop, first in _windows(len(tokens), window):
        seq = [bos, *tokens[start:stop]]
        logits = []
        for llm in (q, ref):
            llm.reset()
            llm.eval(seq)
            logits.append(llm.scores[: len(seq)])
        # the logits at window position i predict seq[i + 1]; text token start + j is seq[j + 1]
        for row in range(first, len(seq) - 1, ROWS):
            rows = slice(row, min(row + ROWS, len(seq) - 1))
            lq, lr = _log_softmax(logits[0][rows]), _log_softmax(logits[1][rows])
            target = np.array(seq[rows.start + 1 : rows.stop + 1])
            kld.append((np.exp(lr) * (lr - lq)).sum(axis=-1))
            same.append(lq.argmax(axis=-1) == lr.argmax(axis=-1))
            nll_q.append(-lq[np.arange(len(target)), target])
            nll_ref.append(-lr[np.arange(len(target)), target])
    k = np.maximum(np.concatenate(kld), 0.0)  # rounding can give -1e-17
    return Report(
        model=str(model),
        reference=str(reference),
        tokens=int(k.size),
        kld_mean=float(k.mean()),
        kld_median=float(np.median(k)),
        kld_p99=float(np.percentile(k, 99)),
        same_top1=float(np.concatenate(same).mean()),
        ppl_model=float(np.exp(np.concatenate(nll_q).mean())),
        ppl_reference=float(np.exp(np.concatenate(nll_ref).mean())),
    )


def lines(r: Report, model_tag: str, reference_tag: str) -> list[tuple[str, str]]:
    """(label, text) rows of the report, as ``g4 quality`` prints it."""
    return [
        ("model", model_tag),
        ("against", reference_tag),
        ("text", f"calibration text, {r.tokens} tokens scored"),
        ("KLD", f"{r.kld_mean:.6f} mean, {r.kld_median:.6f} median, {r.kld_p99:.6f} 99th percentile (nats)"),
        ("same top-1", f"{100 * r.same_top1:.2f} %"),
        ("perplexity", f"{r.ppl_model:.4f} (model) vs {r.ppl_reference:.4f} (reference)"),
    ]

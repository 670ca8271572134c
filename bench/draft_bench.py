"""What drafting can buy on CPU (issue 13): measured costs, and the speedup they imply.

Random-weight drafters agree with their targets only by chance, so the speedup of a real pair
cannot be measured here. What is measured, on the chat benchmark model (``chat_bench.build_mid``:
E2B widths, 262k vocabulary, 8 layers, Q4_K_M) and the drafter with the real E2B assistant's
shapes (``make_drafter(..., "e2b-real")``: 4 layers, width 256, Q4_K_M), in one process, after a
``--prompt``-token prompt, interleaved, ``--repeat`` rounds, medians:

  single     one single-token decode on the target (the plain loop's step)
  verify     one target batch of k+1 tokens with logits on every row (a drafting round's check)
  draft      one drafter step (a round drafts k of them)

and, on every tiny target + drafter pair, the acceptance rate of ``--tokens`` greedy tokens. From
the measured costs, the PROJECTED decode speedup at acceptance rates 0.5 / 0.7 / 0.9 (each draft
accepted independently with probability a: a round yields (1 - a^(k+1)) / (1 - a) tokens for
k draft steps and one verify; the plain loop pays one single decode a token). Finally one greedy
answer with the drafter on the mid model checks g4's own timing (``Stats``) against the wall clock.

    python bench/draft_bench.py [--repeat 5] [--k 3] [--prompt 256] [--tokens 64]
    python bench/draft_bench.py --repeat 1 --prompt 32 --tokens 16      # the smallest setting
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = Path("/work/bench-data/draft")
MID_DATA = Path("/work/bench-data/knobs")  # chat_bench's mid model, shared with knobs_bench
STORY = "Tell me a story."
TINY = ["e2b", "e4b", "26b-a4b", "31b", "12b"]


def build_drafter(d: Path) -> Path:
    from quantize.converter import convert
    from quantize.tiny import make_drafter

    out = d / "drafter-e2b-real-Q4_K_M.gguf"
    if not out.is_file():
        convert(make_drafter(d / "drafter-e2b-real", "e2b-real", dtype="BF16"), out, quant="Q4_K_M", mmproj_type=None)
    return out


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def costs(model_path: Path, drafter_path: Path, k: int, n_prompt: int, repeat: int) -> dict[str, float]:
    """Median seconds of a single decode, a k+1 verify batch and a draft step, interleaved."""
    from g4cli.chat.runtime.batch import StepBatch
    from g4cli.chat.runtime.draft import attach
    from g4cli.chat.runtime.model import Model

    with Model(model_path, n_ctx=max(1024, 2 * n_prompt)) as model:
        drafter = attach(model, drafter_path, k)
        seq = model.sequences[0]
        ids = [(i * 7919) % 200000 + 1000 for i in range(n_prompt)]
        model.decode(seq, ids, logits_last=True)
        drafter.take_hidden(len(ids) - 1)
        n_units, tok = len(seq.units), 4242
        samples: dict[str, list[float]] = {"single": [], "verify": [], "draft": []}
        with StepBatch(k + 1) as verify:
            for _ in range(repeat * 8):  # each sample leaves the cache as it found it
                samples["single"].append(timed(lambda: model.decode(seq, [tok], logits_last=True)))
                seq.keep(n_units)
                samples["verify"].append(timed(lambda: verify.decode(model, [(seq, [tok] * (k + 1))])))
                seq.keep(n_units)
                samples["draft"].append(timed(lambda: drafter.step(tok, seq.n_past)))
    return {name: statistics.median(v) for name, v in samples.items()}


def acceptance(families: list[str], tokens: int, k: int) -> dict[str, float]:
    """Acceptance rate of greedy drafting on the tiny pairs (random weights: chance agreement)."""
    import tempfile

    from g4cli.chat.conversation import Stats, Turn
    from g4cli.chat.runtime.draft import attach
    from g4cli.chat.runtime.model import Model
    from g4cli.chat.settings import Sampling
    from quantize.converter import convert
    from quantize.tiny import make_checkpoint, make_drafter

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fam in families:
            d = Path(tmp) / fam
            target = convert(make_checkpoint(d / "t", fam, endless=True), d / "t.gguf", quant="q8_0", mmproj_type=None)
            drafter = convert(make_drafter(d / "a", fam), d / "a.gguf", quant="q8_0", mmproj_type=None)
            with Model(target.text, n_ctx=512) as model:
                attach(model, drafter.text, k)
                stats = Stats()
                list(
                    model.generate(
                        [Turn("user", "Tell me a story.")], Sampling(temperature=0, max_tokens=tokens), stats
                    )
                )
            out[fam] = stats.acceptance
    return out


def wall_check(model_path: Path, drafter_path: Path, k: int, tokens: int) -> tuple[float, float]:
    """(g4's own decode tok/s, the same from the wall clock around the event stream) with drafting."""
    from g4cli.chat.conversation import Stats, Turn
    from g4cli.chat.runtime.draft import attach
    from g4cli.chat.runtime.model import Model
    from g4cli.chat.settings import Sampling

    with Model(model_path, n_ctx=1024) as model:
        attach(model, drafter_path, k)
        stats, first, last = Stats(), None, None
        for _ev in model.generate(
            [Turn("user", "Tell me a story.")], Sampling(temperature=0, max_tokens=tokens), stats
        ):
            now = time.perf_counter()
            first = first or now
            last = now
    # decode time runs from the first token to the last event ("done" included)
    return stats.gen_tps, (stats.gen_tokens - 1) / (last - first) if last and first and last > first else 0.0


def projected(c: dict[str, float], k: int, a: float) -> float:
    """Decode speedup over the plain loop at acceptance ``a`` (labelled a projection)."""
    tokens_per_round = (1 - a ** (k + 1)) / (1 - a)
    return tokens_per_round * c["single"] / (k * c["draft"] + c["verify"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--k", type=int, default=3, help="draft tokens a round (--draft-max)")
    ap.add_argument("--prompt", type=int, default=256, help="prompt tokens before the measured steps")
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens per tiny pair and for the wall check")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()

    from chat_bench import build_mid
    from knobs_bench import bench_lock

    args.data.mkdir(parents=True, exist_ok=True)
    MID_DATA.mkdir(parents=True, exist_ok=True)
    model, drafter = build_mid(MID_DATA), build_drafter(args.data)
    with bench_lock():
        c = costs(model, drafter, args.k, args.prompt, args.repeat)
        acc = acceptance(TINY, args.tokens, args.k)
        own, wall = wall_check(model, drafter, args.k, args.tokens)
    k = args.k
    print(f"mid model (E2B widths, 8 layers, Q4_K_M) + E2B-shaped drafter, CPU, prompt {args.prompt}, k = {k}")
    print(f"  single-token decode     {c['single'] * 1e3:8.2f} ms   1.00x")
    print(f"  verify batch of {k + 1:<2}      {c['verify'] * 1e3:8.2f} ms   {c['verify'] / c['single']:.2f}x single")
    print(f"  draft step              {c['draft'] * 1e3:8.2f} ms   {c['draft'] / c['single']:.2f}x single")
    print("acceptance on the tiny pairs (random weights: agreement by chance)")
    for fam, a in acc.items():
        print(f"  {fam:<8} {a:6.1%}")
    print(f"PROJECTED decode speedup (from the measured costs, k = {k}; not measured end to end)")
    for a in (0.5, 0.7, 0.9):
        print(f"  acceptance {a:.1f}: {projected(c, k, a):.2f}x")
    print(f"wall-clock check (one drafted answer): g4 says {own:.1f} tok/s, the wall clock {wall:.1f} tok/s")


if __name__ == "__main__":
    main()

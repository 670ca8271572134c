"""The model names g4 knows, as data: alias -> official instruction-tuned Hugging Face repo.

``parse(text)`` turns what a user types (``e4b``, ``26b:q8_0``, ``google/gemma-4-E4B-it``,
``./gemma-4-E2B-it``) into a ``Ref``: a store name, a source (Hub repo or local directory) and an
optional quantization tag. Unknown names fail with a suggestion. No heavy imports here: ``g4
--help`` and name parsing stay fast.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

from g4cli.errors import ModelNotFound, UsageError

DEFAULT_CTX = 8192  # the default chat context (also what the fit estimate assumes)
# Flash attention on CPU-only loads with --flash-attn auto: on (bench/knobs_bench.py: prefill +16-22 %,
# decode +5-15 % at 512 and 4096 context on 2 cores); the fit estimate assumes it too.
CPU_FLASH_ATTN = True
DEFAULT_QUANT = "Q4_K_M"  # as llama.cpp and the HF Ollama bridge


@dataclass(frozen=True)
class Model:
    name: str
    repo: str
    aliases: tuple[str, ...]
    capabilities: tuple[str, ...]  # of "vision", "audio", "experts" (MoE), "ple" (per-layer embeddings)
    about: str


QAT = "-qat-q4_0-unquantized"  # Google's QAT checkpoints' repo suffix: their default is QAT-aware Q4_0

#      name       repo                          aliases        capabilities                  about
MODELS: tuple[Model, ...] = (
    Model("e2b",     "google/gemma-4-E2B-it",     (),             ("vision", "audio", "ple"), "2B effective"),
    Model("e4b",     "google/gemma-4-E4B-it",     (),             ("vision", "audio", "ple"), "4B effective"),
    Model("12b",     "google/gemma-4-12B-it",     (),             ("vision", "audio"),        "dense 12B, no encoders"),
    Model("26b-a4b", "google/gemma-4-26B-A4B-it", ("26b", "a4b"), ("vision", "experts"),      "MoE, 4B active"),
    Model("31b",     "google/gemma-4-31B-it",     (),             ("vision",),                "dense 31B"),
    # quantization-aware-trained for Q4_0 (BF16 weights on the Q4_0 grid): pulled as Q4_0_QAT
    Model("e2b-qat",     f"google/gemma-4-E2B-it{QAT}",     (),           ("vision", "audio", "ple"), "E2B QAT"),
    Model("e4b-qat",     f"google/gemma-4-E4B-it{QAT}",     (),           ("vision", "audio", "ple"), "E4B QAT"),
    Model("12b-qat",     f"google/gemma-4-12B-it{QAT}",     (),           ("vision", "audio"),        "12B QAT"),
    Model("26b-a4b-qat", f"google/gemma-4-26B-A4B-it{QAT}", ("26b-qat",), ("vision", "experts"),      "26B-A4B QAT"),
    Model("31b-qat",     f"google/gemma-4-31B-it{QAT}",     (),           ("vision",),                "31B QAT"),
)  # fmt: skip

# One path component of a store name: what Hugging Face allows in a repo id, minus "--" and
# ".." (both reserved: "--" joins org and repo in directory names, ".." would leave the store).
COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Ref:
    """What a user named: a store ``name`` plus where its weights come from."""

    name: str  # "e4b", "org/repo" or a local directory's name
    quant: str | None = None  # from a ":q8_0" tag, normalised ("Q8_0")
    repo: str | None = None  # Hugging Face repo id
    path: Path | None = None  # local checkpoint directory
    gguf: bool = False  # a repo of ready GGUF files (quant: the file's tag, e.g. "UD-Q4_K_XL")


def default_quant(ref: Ref) -> str:
    """The quantization a pull makes without a tag: QAT-aware Q4_0 for a QAT checkpoint, else Q4_K_M."""
    if ref.repo and ref.repo.lower().endswith(QAT):
        return "Q4_0_QAT"
    return DEFAULT_QUANT


def lookup(name: str) -> Model | None:
    """A catalog model by name, alias or repo id (case-insensitive)."""
    key = name.strip().lower()
    for m in MODELS:
        if key in (m.name, *m.aliases, m.repo.lower()):
            return m
    return None


def known_names() -> list[str]:
    return [n for m in MODELS for n in (m.name, *m.aliases)]


def suggest(name: str, candidates: list[str] | None = None) -> str | None:
    """The closest known name (or repo id) to a mistyped one, if any is close."""
    pool = candidates if candidates is not None else [*known_names(), *(m.repo for m in MODELS)]
    lowered = {c.lower(): c for c in pool}
    close = difflib.get_close_matches(name.strip().lower(), list(lowered), n=1, cutoff=0.6)
    return lowered[close[0]] if close else None


def check_name(name: str) -> str:
    """A store name must stay inside the store: one or two safe components, nothing else."""
    parts = name.split("/")
    if len(parts) > 2 or not all(COMPONENT.match(p) and ".." not in p and "--" not in p for p in parts):
        raise UsageError(
            f"invalid model name {name!r}",
            hint="use letters, digits, '.', '_' and '-' (an 'org/repo' id at most), no '..' or '--'",
        )
    return name


def local_name(path: Path) -> str:
    """A store name for a local checkpoint directory: its base name, made safe."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", path.resolve().name).strip("._-").lower()
    base = re.sub(r"-{2,}", "-", base).replace("..", ".")
    return base[:96] or "model"


# GGUF repos as llama.cpp's -hf and Ollama name them: hf.co/ORG/REPO[:TAG] (or a repo named *GGUF*)
HF_HOST = re.compile(r"^(?:https?://)?(?:hf\.co|huggingface\.co)/", re.IGNORECASE)
GGUF_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def is_gguf_name(text: str) -> bool:
    """``hf.co/ORG/REPO[:TAG]``, or an ``ORG/REPO[:TAG]`` whose repo name says GGUF."""
    base = text.rsplit(":", 1)[0] if not HF_HOST.match(text) else text
    return bool(HF_HOST.match(text)) or (base.count("/") == 1 and "gguf" in base.lower())


def gguf_tag(tag: str) -> str:
    """A GGUF file's quantization tag as typed (``ud-q4_k_xl``) -> its store form (``UD-Q4_K_XL``)."""
    if not GGUF_TAG.match(tag.strip()):
        raise UsageError(f"invalid quantization tag {tag!r}", hint="e.g. Q4_K_M, UD-Q4_K_XL")
    return tag.strip().upper()


def split_tag(text: str) -> tuple[str, str | None]:
    """``e4b:q8_0`` -> ("e4b", "Q8_0"); a tag that is not a quantization type is an error.

    A GGUF repo's name (``hf.co/ORG/REPO:TAG``) loses its host and keeps its tag as it is."""
    gguf = is_gguf_name(text)
    text = HF_HOST.sub("", text)
    if ":" not in text:
        return text, None
    base, tag = text.rsplit(":", 1)
    if gguf:
        return base, gguf_tag(tag)
    from quantize.llama_quant import parse_type

    try:
        return base, parse_type(tag)
    except UsageError:
        if base.count("/") == 1 and GGUF_TAG.match(tag):  # ORG/REPO:UD-Q4_K_XL: a GGUF repo's file tag
            return base, gguf_tag(tag)
        raise


def _is_path(text: str) -> bool:
    """Path-looking text, or an existing checkpoint directory (it wins over a same-named repo id)."""
    explicit = text.startswith(("/", "./", "../", "~")) or text in (".", "..")
    return explicit or (Path(text) / "config.json").is_file()


def parse(text: str, *, name: str | None = None) -> Ref:
    """Turn a model reference into a ``Ref`` (``name`` overrides the store name of a local dir)."""
    text = text.strip()
    if not text:
        raise UsageError("empty model name", hint=f"try one of: {', '.join(m.name for m in MODELS)}")
    if _is_path(text) and (":" not in text or Path(text).expanduser().is_dir()):
        path = Path(text).expanduser()
        return Ref(check_name(name) if name else local_name(path), path=path)
    gguf = is_gguf_name(text)
    base, quant = split_tag(text)
    if not gguf and quant is not None and base.count("/") == 1:
        from quantize.llama_quant import all_types

        gguf = quant not in all_types()  # a tag no conversion makes: a GGUF repo's file
    if gguf:
        if base.count("/") != 1:
            raise UsageError(f"{text}: a GGUF repo is hf.co/ORG/REPO[:QUANT]")
        return Ref(check_name(base), quant=quant, repo=base, gguf=True)
    if _is_path(base):
        path = Path(base).expanduser()
        return Ref(check_name(name) if name else local_name(path), quant=quant, path=path)
    if name:
        raise UsageError("--name applies to local checkpoint directories only")
    model = lookup(base)
    if model is not None:
        return Ref(model.name, quant=quant, repo=model.repo)
    if "/" in base:
        return Ref(check_name(base), quant=quant, repo=base)
    close = suggest(base)
    raise ModelNotFound(
        f"unknown model {base!r}: not one of {', '.join(known_names())}, an org/repo id or a directory",
        hint=f"did you mean {close}?" if close else "g4 pull e4b",
    )

"""Checks of a downloaded GGUF before g4 stores it, and what its header says (for the manifest).

A GGUF from a repo is taken only when its header holds together, checked against the file
itself before llama.cpp ever sees it (llama.cpp maps whatever offsets a header claims), and
before the download against the size the Hub lists (the header alone: ``gguf_remote``):

- the text model is ``general.architecture == gemma4``; a projector is ``clip`` with Gemma 4
  projector types (``gemma4v``/``gemma4a``, the 12B's ``gemma4uv``/``gemma4ua``) whose projection
  width is the text model's;
- every tensor has a known ggml type, rows of whole blocks, an aligned offset, and its bytes
  (from its shape and type) inside the file's data section, overlapping no other tensor; no
  name twice; the layers the tensors name are the ``block_count`` the header says;
- split files (``-00001-of-0000N``): ``split.no`` in order, ``split.count`` = the files, and
  ``split.tensors.count`` = the tensors they hold together.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from g4cli.errors import CheckpointError
from g4cli.models import ggufmeta

GEMMA4 = "gemma4"
PROJECTOR_KEYS = ("clip.projector_type", "clip.vision.projector_type", "clip.audio.projector_type")
ARCH_KEYS = {
    "block_count", "context_length", "embedding_length", "feed_forward_length", "attention.head_count",
    "attention.head_count_kv", "attention.key_length", "attention.key_length_swa", "attention.sliding_window",
    "attention.sliding_window_pattern", "attention.shared_kv_layers", "attention.layer_norm_rms_epsilon",
    "embedding_length_per_layer_input", "expert_count", "expert_used_count", "expert_feed_forward_length",
    "final_logit_softcapping", "rope.freq_base", "rope.freq_base_swa",
}  # fmt: skip


@dataclass
class Header:
    path: Path
    values: dict[str, Any]
    tensors: list[ggufmeta.TensorInfo]
    sizes: dict[str, int] = field(default_factory=dict)  # tensor name -> bytes
    types: dict[str, str] = field(default_factory=dict)  # tensor name -> ggml type name


def _refuse(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path.name}: {what}; not stored", hint="the repo's file is broken or not what it says: try another tag"
    )


def read_checked(path: Path) -> Header:
    """The header of one GGUF file, its tensors checked against the file's size."""
    try:
        parsed = ggufmeta.read_header(path)
    except (ValueError, OSError) as e:
        raise _refuse(path, f"unreadable GGUF header ({e})") from None
    return checked(path, *parsed, path.stat().st_size)


def checked(path: Path, values: dict[str, Any], tensors: list[ggufmeta.TensorInfo], end: int, size: int) -> Header:
    """A parsed header (``end``: where it ends), its tensors checked against a file of ``size`` bytes
    (the file on disk, or the size the Hub lists before the download: ``gguf_remote``)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    align = int(values.get("general.alignment", 32) or 32)
    start = -(-end // align) * align
    h = Header(path, values, tensors)
    spans = []
    for t in tensors:
        try:
            qtype = GGMLQuantizationType(t.ggml_type)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError):
            raise _refuse(path, f"tensor {t.name!r} has unknown ggml type {t.ggml_type}") from None
        if not t.shape or min(t.shape) < 1 or t.shape[0] % block:
            raise _refuse(path, f"tensor {t.name!r} has shape {list(t.shape)}, not rows of {qtype.name} blocks")
        if t.name in h.sizes:
            raise _refuse(path, f"tensor {t.name!r} appears twice")
        nbytes = math.prod(t.shape) // block * type_size
        if t.offset % align or start + t.offset + nbytes > size:
            raise _refuse(path, f"tensor {t.name!r} ({qtype.name} {list(t.shape)}) lies outside the file's data")
        h.sizes[t.name], h.types[t.name] = nbytes, qtype.name
        spans.append((t.offset, t.offset + nbytes, t.name))
    spans.sort()
    for (_, stop, a), (begin, _, b) in itertools.pairwise(spans):
        if begin < stop:
            raise _refuse(path, f"tensors {a!r} and {b!r} overlap (the header's shapes are wrong)")
    return h


def check_model(parts: list[Path]) -> list[Header]:
    """The text model's files (one, or its splits in order): Gemma 4, consistent, whole."""
    return check_parts([read_checked(p) for p in parts])


def check_parts(headers: list[Header]) -> list[Header]:
    """``check_model`` of headers already read (and each checked)."""
    parts = [h.path for h in headers]
    first = headers[0]
    arch = first.values.get("general.architecture")
    if arch != GEMMA4:
        raise CheckpointError(
            f"{parts[0].name} is a GGUF of architecture {arch!r}, not Gemma 4 ({GEMMA4}); g4 runs Gemma 4 only",
            hint="pull a Gemma 4 GGUF repo, e.g. g4 pull hf.co/ggml-org/gemma-4-E4B-it-GGUF",
        )
    n = len(parts)
    if n > 1 or "split.count" in first.values:
        for i, h in enumerate(headers):
            if h.values.get("split.no") != i or h.values.get("split.count") != n:
                raise _refuse(
                    h.path, f"split {h.values.get('split.no')} of {h.values.get('split.count')}, expected {i} of {n}"
                )
        total = sum(len(h.tensors) for h in headers)
        if first.values.get("split.tensors.count") != total:
            raise _refuse(parts[0], f"says {first.values.get('split.tensors.count')} tensors, the splits hold {total}")
        names = [t.name for h in headers for t in h.tensors]
        if len(set(names)) != len(names):
            raise _refuse(parts[0], "a tensor appears in two splits")
    layers = {int(m.group(1)) for h in headers for t in h.tensors if (m := re.match(r"blk\.(\d+)\.", t.name))}
    expected = first.values.get(f"{GEMMA4}.block_count")
    if not isinstance(expected, int) or layers != set(range(expected)):
        raise _refuse(parts[0], f"block_count {expected} but tensors for {len(layers)} layers")
    if not any("token_embd.weight" in h.sizes for h in headers):
        raise _refuse(parts[0], "no token_embd.weight tensor")
    return headers


def check_projector(path: Path, n_embd: int) -> tuple[Header, dict[str, bool]]:
    """A projector (mmproj) for a Gemma 4 text model of width ``n_embd``; returns what it can take."""
    return check_projector_header(read_checked(path), n_embd)


def check_projector_header(h: Header, n_embd: int) -> tuple[Header, dict[str, bool]]:
    path = h.path
    arch = h.values.get("general.architecture")
    types = {k: h.values[k] for k in PROJECTOR_KEYS if k in h.values}
    if arch != "clip" or not types or not all(str(v).startswith("gemma4") for v in types.values()):
        shown = ", ".join(f"{v}" for v in types.values()) or "none"
        raise CheckpointError(f"{path.name} is not a Gemma 4 projector (architecture {arch!r}, projector type {shown})")
    for kind in ("vision", "audio"):
        width = h.values.get(f"clip.{kind}.projection_dim")
        if width is not None and width != n_embd:
            raise _refuse(path, f"its {kind} projection is {width} wide, the text model {n_embd}")
    caps = {
        "vision": bool(h.values.get("clip.has_vision_encoder")),
        "audio": bool(h.values.get("clip.has_audio_encoder")),
    }
    return h, caps


def arch_values(path: ggufmeta.Source) -> dict[str, Any]:
    """The text model's ``gemma4.*`` keys g4 describes it by (arrays included)."""
    got = ggufmeta.read_values(path, {f"{{arch}}.{k}" for k in ARCH_KEYS})
    return {k.split(".", 1)[1]: v for k, v in got.items()}

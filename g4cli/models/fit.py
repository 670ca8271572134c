"""Will it fit? Disk and memory a pull needs, from config.json and the download size alone.

Computed before any weight is downloaded:

- text weights: every text tensor's parameter count (from the config, as ``quantize.gemma4``
  lays them out) times the bits per weight of the type llama.cpp's quantizer gives it (``MIX``:
  measured on tiny checkpoints with llama-cpp-python 0.3.36; e.g. under Q4_K_M the token and
  PLE embeddings go to Q6_K, ``ffn_down``/``attn_v`` of llama.cpp's "more bits" layers too);
- projector: the checkpoint's parameters that are not text (vision/audio towers) at F16, the
  vision position table at F32 (as ``quantize.mmproj`` writes them);
- KV cache at the default chat context: per layer with its own cache (KV-shared layers add
  none) ``cells x kv_heads x head_dim x 2 (K, V) x 2 bytes (F16)``, where cells is
  ``min(sliding_window, ctx)`` on sliding layers and ``ctx`` on full-attention layers;
- disk: what is left to download (HF cache) + the unquantized intermediate GGUF + the results
  (g4's store), per file system, against ``shutil.disk_usage``; memory against MemAvailable.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from g4cli.models.catalog import CPU_FLASH_ATTN, DEFAULT_CTX
from quantize.gguf_out import F32_ALWAYS

if TYPE_CHECKING:
    from quantize.gemma4 import Layout

# bits per weight of each ggml type
BITS = {
    "F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K": 5.5, "Q5_0": 5.5,
    "Q5_1": 6.0, "Q4_K": 4.5, "Q4_0": 4.5, "Q4_1": 5.0, "Q3_K": 3.4375, "Q2_K": 2.625,
    "IQ4_NL": 4.5, "IQ4_XS": 4.25, "MXFP4": 4.25,
}  # fmt: skip


@dataclass(frozen=True)
class Mix:
    """The types llama.cpp's quantizer picks per tensor role; "A/B": B on its "more bits" layers."""

    default: str
    attn_v: str
    attn_output: str
    ffn_down: str
    embeddings: str  # token embeddings (tied output) and the PLE table
    experts: str | None = None  # MoE expert tensors (26B-A4B), when not the default rules


# measured with llama-cpp-python 0.3.36 on tiny Gemma 4 checkpoints (widths multiples of 256)
MIX = {
    "Q2_K": Mix("Q2_K", "Q4_K", "Q3_K", "Q3_K", "Q6_K"),
    "Q3_K_S": Mix("Q3_K", "Q3_K", "Q3_K", "Q3_K", "Q6_K"),
    "Q3_K_M": Mix("Q3_K", "Q4_K/Q5_K", "Q4_K", "Q4_K", "Q6_K"),
    "Q3_K_L": Mix("Q3_K", "Q5_K", "Q5_K", "Q5_K", "Q6_K"),
    "Q4_0": Mix("Q4_0", "Q4_0", "Q4_0", "Q4_0", "Q6_K"),
    "Q4_0_QAT": Mix("Q4_0", "Q4_0", "Q4_0", "Q4_0", "Q6_K"),  # g4's QAT-aware Q4_0: "pure", embeddings Q6_K
    "Q4_1": Mix("Q4_1", "Q4_1", "Q4_1", "Q4_1", "Q6_K"),
    "Q4_K_S": Mix("Q4_K", "Q5_K", "Q4_K", "Q4_K", "Q6_K"),
    "Q4_K_M": Mix("Q4_K", "Q4_K/Q6_K", "Q4_K", "Q4_K/Q6_K", "Q6_K"),
    "Q5_0": Mix("Q5_0", "Q5_0", "Q5_0", "Q5_0", "Q6_K"),
    "Q5_1": Mix("Q5_1", "Q5_1", "Q5_1", "Q5_1", "Q6_K"),
    "Q5_K_S": Mix("Q5_K", "Q5_K", "Q5_K", "Q5_K", "Q6_K"),
    "Q5_K_M": Mix("Q5_K", "Q5_K/Q6_K", "Q5_K", "Q5_K/Q6_K", "Q6_K"),
    "Q6_K": Mix("Q6_K", "Q6_K", "Q6_K", "Q6_K", "Q6_K"),
    "Q8_0": Mix("Q8_0", "Q8_0", "Q8_0", "Q8_0", "Q8_0"),
    "IQ4_NL": Mix("IQ4_NL", "Q5_K", "IQ4_NL", "IQ4_NL", "Q6_K"),
    "IQ4_XS": Mix("IQ4_XS", "Q5_K", "IQ4_XS", "IQ4_XS", "Q6_K"),
    "MXFP4_MOE": Mix("Q8_0", "Q8_0", "Q8_0", "Q8_0", "Q8_0", experts="MXFP4"),  # MoE (26B-A4B)
}
SOURCE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
SOURCE_TYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
VOCAB_METADATA = 40  # GGUF bytes per vocabulary entry (token text, score, type, merges), about


def more_bits(i: int, n: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _bits(spec: str, i: int, n: int) -> float:
    base, _, more = spec.partition("/")
    return BITS[more if more and more_bits(i, n) else base]


@dataclass
class Estimate:
    quant: str
    ctx: int
    source: int  # all weight files of the checkpoint
    download: int  # what is still to download (0 for a local checkpoint or a complete cache)
    intermediate: int  # the unquantized text GGUF (0 when the target is a float type)
    text: int  # the text GGUF g4 keeps
    ple: int  # of which the per-layer embedding table (E2B/E4B)
    projector: int  # vision/audio projector GGUF
    kv_cache: int
    embeddings: int = 0  # of ``text``: the token embeddings, held twice when the output is tied
    compute: int = 0  # llama.cpp's compute buffer, the part a chat writes

    @property
    def weights(self) -> int:
        """Text weights in memory for ``g4 chat`` on a CPU: read into memory (not mapped), the
        PLE table read per token used (llama.cpp's lazy mode: not counted), the tied output
        matrix a copy of the token embeddings (llama.cpp loads it as a tensor of its own)."""
        return self.text - self.ple + self.embeddings

    @property
    def memory(self) -> int:
        """Peak memory of a text chat at ``ctx`` (the projector loads with the first image or audio)."""
        return self.weights + self.kv_cache + self.compute + RUNTIME

    @property
    def memory_media(self) -> int:
        """Peak memory once an image or audio was sent: the projector's weights too."""
        return self.memory + self.projector

    def memory_parts(self) -> list[tuple[str, int]]:
        return [("weights", self.weights), ("KV cache", self.kv_cache), ("compute", self.compute), ("runtime", RUNTIME)]

    @property
    def store_disk(self) -> int:
        """Peak use of g4's store while quantizing: intermediate and results side by side."""
        return self.intermediate + self.text + self.projector


def _role(name: str, shape: tuple[int, ...]) -> str:
    """Which of llama.cpp's quantization rules a text tensor falls under."""
    if len(shape) <= 1 or F32_ALWAYS.search(name):
        return "float"
    if name in ("token_embd.weight", "output.weight"):
        return "embeddings"  # the output matrix (tied or not) is typed like the token embeddings
    if name == "per_layer_token_embd.weight":
        return "ple"
    if name == "per_layer_model_proj.weight":
        return "source"  # llama.cpp leaves it as it is
    kind = name.split(".")[2] if name.startswith("blk.") else ""
    return {
        "attn_k": "attn_k",
        "attn_v": "attn_v",
        "attn_output": "attn_output",
        "ffn_down": "ffn_down",
        "ffn_gate_up_exps": "experts",
        "ffn_down_exps": "experts_down",
    }.get(kind, "default")


def _text_roles(hp: Layout) -> tuple[list[tuple[str, str, int, int, int | None]], int]:
    """(name, role, parameters, layer or attn_v index, layer) for every text tensor; the attn_v count."""
    out: list[tuple[str, str, int, int, int | None]] = []
    v = 0
    for t in hp.tensors():
        role = _role(t.name, t.shape)
        if role == "attn_v":  # llama.cpp counts its "more bits" attn_v layers among attn_v tensors
            out.append((t.name, role, math.prod(t.shape), v, t.layer))
            v += 1
        else:
            out.append((t.name, role, math.prod(t.shape), t.layer or 0, t.layer))
    out.append(("rope_freqs.weight", "float", hp.head_dim_full // 2, 0, None))
    return out, v


def tensor_bytes(hp: Layout, quant: str, source_type: str) -> list[tuple[str, int | None, str, float]]:
    """(name, layer or None, role, bytes at ``quant``) for every tensor of the text GGUF."""
    roles, n_v = _text_roles(hp)
    L = hp.n_layer
    mix = MIX.get(quant)
    moe = hp.n_expert >= 8 and mix is not None and quant not in ("MXFP4_MOE", "Q4_0_QAT")  # Q4_0_QAT: "pure"
    out = []
    for name, role, n, i, layer in roles:
        if role == "float":
            bits = 32.0
        elif mix is None:  # a float target: everything at that type
            bits = BITS[quant]
        elif role == "source":
            bits = BITS[source_type]
        elif role in ("embeddings", "ple"):
            bits = BITS[mix.embeddings]
        elif role in ("attn_k", "attn_v") and moe:  # llama.cpp: K/V at Q8_0 with >= 8 experts
            bits = BITS["Q8_0"]
        elif role == "attn_v":
            bits = _bits(mix.attn_v, i, n_v)
        elif role == "attn_output":
            bits = max(_bits(mix.attn_output, i, L), BITS["Q5_K"] if moe else 0.0)
        elif role in ("ffn_down", "experts_down"):
            bits = BITS[mix.experts] if mix.experts and role == "experts_down" else _bits(mix.ffn_down, i, L)
        elif role == "experts" and mix.experts:
            bits = BITS[mix.experts]
        else:
            bits = BITS[mix.default]
        out.append((name, layer, role, n * bits / 8))
    return out


def text_bytes(hp: Layout, quant: str, source_type: str) -> dict[str, int]:
    """The text GGUF at ``quant``: its bytes ("total"), of which the PLE table ("ple") and the
    token embeddings ("embeddings"), and its parameter count ("params")."""
    roles, _ = _text_roles(hp)
    sizes = tensor_bytes(hp, quant, source_type)
    total = sum(b for *_, b in sizes) + hp.vocab_size * VOCAB_METADATA
    ple = sum(b for _, _, role, b in sizes if role == "ple")
    embeddings = sum(b for _, _, role, b in sizes if role == "embeddings")
    params = sum(n for _, _, n, _, _ in roles)
    return {"total": int(total), "ple": int(ple), "embeddings": int(embeddings), "params": int(params)}


# Python, llama.cpp's code and its vocabulary tables (bench/memory_bench.py: ~250 MiB of E4B's
# resident memory is neither weights nor KV cache, of which the compute buffer's part is ~130)
RUNTIME = 120 * 2**20
N_UBATCH = 512  # g4's micro-batch for text (g4cli/chat/runtime/model.py)


def compute_bytes(hp: Layout, ctx: int, n_ubatch: int = N_UBATCH, flash_attn: bool = False) -> int:
    """The part of llama.cpp's compute buffer a chat writes. The buffer is sized for n_ubatch
    outputs (n_ubatch x vocabulary F32 logits: 512 MiB at Gemma 4's 262k), but g4 asks for the
    last token's logits only, so those pages are never touched; what is: one row of logits, the
    widest MLP's activations (gate and up), a few hidden-state rows per token, and without flash
    attention the attention scores and their softmax over a full context (F32, every head)."""
    ff = max((hp.ff(il) for il in range(hp.n_layer)), default=hp.n_ff)
    activations = n_ubatch * (2 * max(ff, hp.n_ff_expert * max(hp.n_expert_used, 1)) + 4 * hp.n_embd) * 4
    scores = 0 if flash_attn else 2 * n_ubatch * (-(-ctx // 256) * 256) * hp.n_head * 4
    return hp.vocab_size * 4 + activations + scores


# ggml types a KV cache can have: (values per block, bytes per block)
KV_BLOCKS = {"f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), "q8_0": (32, 34), "q4_0": (32, 18)}


def _row_bytes(kv_type: str, width: int) -> int:
    per, size = KV_BLOCKS[kv_type]
    return -(-width // per) * size


def kv_cache_bytes(hp: Layout, ctx: int = DEFAULT_CTX, kv_type: str = "f16", flash_attn: bool = False) -> int:
    """The KV cache llama.cpp allocates (and clears, so all of it is resident) for ``g4 chat``.

    Every layer that keeps its own cache (KV-shared layers reuse another's) gets ``ctx`` cells
    (padded to 256), sliding layers too: g4 uses llama.cpp's full-size sliding-window cache
    (``swa_full``) so that a conversation can be rolled back (/regen, thinking stripped from
    history). K and V rows are ``kv_type`` rows (Q8_0/Q4_0 in blocks of 32). Without flash
    attention llama.cpp keeps V transposed and pads every layer's V row to the widest one of
    the model (heads × head dim; llama-kv-cache.cpp, TAG_V_CACHE_VARIABLE).
    """
    cells = -(-ctx // 256) * 256
    width = [hp.n_head_kv(il) * hp.head_dim(il) for il in range(hp.n_layer)]
    v_max = max(width, default=0)
    own = [il for il in range(hp.n_layer) if not hp.is_shared(il)]
    v_width = {il: width[il] if flash_attn else v_max for il in own}
    per_cell = sum(_row_bytes(kv_type, width[il]) + _row_bytes(kv_type, v_width[il]) for il in own)
    return cells * per_cell


def source_dtype(config: dict) -> str:
    """The checkpoint's weight dtype as config.json states it (``dtype`` or ``torch_dtype``)."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    for c in (config, text):
        for key in ("dtype", "torch_dtype"):
            if isinstance(c.get(key), str) and c[key] in SOURCE_BYTES:
                return c[key]
    return "bfloat16"  # every official Gemma 4 release


def estimate(
    config: dict,
    *,
    quant: str,
    source_bytes: int,
    download: int = 0,
    ctx: int | None = None,
) -> Estimate:
    """The estimate for converting a checkpoint of ``source_bytes`` weight bytes to ``quant``.

    ``ctx`` defaults to what ``g4 chat`` uses: 8192, or less if the model was trained on less.
    """
    from quantize.gemma4 import text_params
    from quantize.llama_quant import FLOAT_TYPES

    hp = text_params(config)
    ctx = ctx or min(DEFAULT_CTX, hp.n_ctx_train)
    dtype = source_dtype(config)
    src_type = SOURCE_TYPES[dtype]
    sizes = text_bytes(hp, quant, src_type)
    text, ple, n_text = sizes["total"], sizes["ple"], sizes["params"]
    intermediate = 0 if quant in FLOAT_TYPES else text_bytes(hp, src_type, src_type)["total"]
    n_projector = max(source_bytes // SOURCE_BYTES[dtype] - n_text, 0)
    has_towers = bool(config.get("vision_config") or config.get("audio_config"))
    vision = config.get("vision_config") or {}
    # kept F32 by the converter: gemma4v's [2, P, H]; the 12B's [P, 2, mm_embed_dim] (no tower)
    table_rows = vision.get("position_embedding_size", vision.get("mm_posemb_size", 10240))
    position_table = 2 * int(table_rows) * int(vision.get("hidden_size", vision.get("mm_embed_dim", 0)))
    return Estimate(
        quant=quant,
        ctx=ctx,
        source=source_bytes,
        download=download,
        intermediate=intermediate,
        text=text,
        ple=ple,
        projector=(n_projector + position_table) * 2 if has_towers else 0,  # F16; the position table F32
        kv_cache=kv_cache_bytes(hp, ctx, flash_attn=CPU_FLASH_ATTN),
        embeddings=sizes["embeddings"] if hp.tied else 0,
        compute=compute_bytes(hp, ctx, flash_attn=CPU_FLASH_ATTN),
    )


@dataclass
class DiskNeed:
    path: Path  # the file system's mount point
    need: int
    free: int

    @property
    def short(self) -> bool:
        return self.need > self.free


def _mount(path: Path) -> Path:
    """The mount point of the file system ``path`` is (or would be) on."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    dev = os.stat(path).st_dev
    while path != path.parent and os.stat(path.parent).st_dev == dev:
        path = path.parent
    return path


def disk_needs(est: Estimate, store: Path, cache: Path) -> list[DiskNeed]:
    """What each file system must hold: the rest of the download (HF cache), the store's peak."""
    needs: dict[int, DiskNeed] = {}
    for where, amount in ((_mount(cache), est.download), (_mount(store), est.store_disk)):
        dev = os.stat(where).st_dev
        if dev in needs:
            needs[dev].need += amount
        else:
            needs[dev] = DiskNeed(where, amount, shutil.disk_usage(where).free)
    return list(needs.values())


def mem_available() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None

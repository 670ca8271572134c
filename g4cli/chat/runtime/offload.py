"""``--gpu-layers auto``: how many layers go to which device, from each device's free memory.

llama.cpp's rules, which the plan follows exactly (llama-model.cpp ``load_tensors``, 0.3.36):

- there are n_layer + 1 offloadable units: the repeating layers and the output layer (output
  norm + output matrix; Gemma 4 ties it, so a copy of the token embeddings); ``n_gpu_layers = n``
  offloads the *last* n of them, the first layers stay on the CPU;
- the input layer (token embeddings, the PLE table of E2B/E4B, read lazily) always stays on the CPU;
- ``per_layer_model_proj`` (PLE) goes with layer 0; a layer's KV cache goes with the layer;
- the offloaded units are cut into contiguous runs, one per device in llama.cpp's device order
  (RPC servers, then GPUs), by the cumulative fractions of ``tensor_split`` (free memory when
  unset); the last device used holds the output layer, and with it the logits;
- each device used gets a compute buffer; the one holding the output layer also holds the
  n_ubatch x vocabulary F32 logits.

The sizes come from the fit estimate's arithmetic (``g4cli.models.fit``) for a config, or from
the GGUF's own tensor table for a file; the plan checks each device's share against its free
memory less ``RESERVE``. Weights and KV are exact (tests/test_offload.py: to llama.cpp's
0.01 MiB); the compute buffers are not (the graph allocator's reuse), so ``refine`` asks
llama.cpp for them with a dry run (``dryrun.py``) and plans again where they are larger. On a
machine without GPU or RPC devices there is nothing to plan: ``auto`` is 0 layers and the context
is chosen as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from g4cli.models.fit import KV_BLOCKS

if TYPE_CHECKING:
    from quantize.gemma4 import Layout

RESERVE = 256 * 2**20  # per device: the GPU runtime's own workspace (cuBLAS, Metal heaps), fragmentation
MIN_AUTO_CTX = 2048  # --ctx unset never goes below this to fit more layers
SPLIT_MODES = {"none": 0, "layer": 1, "row": 2}  # enum llama_split_mode


@dataclass(frozen=True)
class Shape:
    """What a model needs, per offloadable unit: the numbers a plan is made of."""

    layers: tuple[int, ...]  # weight bytes of each repeating layer
    output: int  # the output layer's weights (the tied copy of the token embeddings + norm)
    host: int  # resident input-layer weights, always on the CPU (the lazy PLE table not counted)
    kv_widths: tuple[tuple[int, int], ...]  # per layer (K, V) row width in values; (0, 0): KV-shared
    n_vocab: int
    n_embd: int
    n_ff: int  # the widest MLP activation (MoE: experts used x expert width)
    n_ctx_train: int
    projector: int = 0

    @property
    def units(self) -> int:
        return len(self.layers) + 1

    def unit_weights(self, u: int) -> int:
        return self.output if u == len(self.layers) else self.layers[u]

    def kv_bytes(self, u: int, cells: int, kv_type: str, flash_attn: bool) -> int:
        """One unit's KV cache at ``cells`` cells (padded to 256, as fit.kv_cache_bytes)."""
        if u == len(self.layers):
            return 0
        k, v = self.kv_widths[u]
        if not k:
            return 0
        if not flash_attn:  # V kept transposed, every row padded to the widest (TAG_V_CACHE_VARIABLE)
            v = max(w for pair in self.kv_widths for w in pair)
        per, size = KV_BLOCKS[kv_type]
        cells = -(-cells // 256) * 256
        return cells * (-(-k // per) * size + -(-v // per) * size)

    def compute(self, n_ubatch: int, holds_output: bool) -> int:
        """A device's compute buffer: a ubatch of activations; the logits where the output is."""
        activations = n_ubatch * (2 * self.n_ff + 4 * self.n_embd) * 4
        return activations + (n_ubatch * self.n_vocab * 4 if holds_output else 0)


def shape_from_layout(hp: Layout, quant: str, source_type: str = "BF16", projector: int = 0) -> Shape:
    """The shape at ``quant`` from a config's layout, with the fit estimate's byte counts."""
    from g4cli.models.fit import tensor_bytes

    layers = [0.0] * hp.n_layer
    output = host = 0.0
    for name, layer, role, size in tensor_bytes(hp, quant, source_type):
        if layer is not None:
            layers[layer] += size
        elif name in ("per_layer_model_proj.weight", "per_layer_proj_norm.weight", "rope_freqs.weight"):
            layers[0] += size  # created with layer 0's index: on its device
        elif name in ("output.weight", "output_norm.weight"):
            output += size
        elif role != "ple":  # the token embeddings; the PLE table is read lazily
            host += size
        if name == "token_embd.weight" and hp.tied:
            output += size  # llama.cpp duplicates it as the output matrix, on the output layer's device
    widths = tuple(
        (0, 0) if hp.is_shared(il) else (hp.n_head_kv(il) * hp.head_dim(il),) * 2 for il in range(hp.n_layer)
    )
    ff = max(max(hp.ff(il) for il in range(hp.n_layer)), hp.n_ff_expert * max(hp.n_expert_used, 1))
    return Shape(
        tuple(int(x) for x in layers), int(output), int(host), widths, hp.vocab_size, hp.n_embd, ff, hp.n_ctx_train,
        projector,
    )  # fmt: skip


def shape_from_gguf(gguf: Path, mmproj: Path | None = None) -> Shape:
    """The shape of a GGUF file, from its tensor table (exact bytes per tensor)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from g4cli.models.ggufmeta import read_tensors

    values, tensors = read_tensors(gguf)
    arch = values.get("general.architecture", "gemma4")
    n_layer = int(values[f"{arch}.block_count"])

    def nbytes(t: object) -> int:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(t.ggml_type)]
        return t.n_elements // block * size

    layers, output, host = [0] * n_layer, 0, 0
    k_width, v_width, ff = [0] * n_layer, [0] * n_layer, 0
    n_vocab = n_embd = 0
    for t in tensors:
        if t.name.startswith("blk."):
            il, kind = int(t.name.split(".")[1]), t.name.split(".")[2]
            layers[il] += nbytes(t)
            if kind == "attn_k":
                k_width[il] = t.shape[1]
            elif kind == "attn_v":
                v_width[il] = t.shape[1]
            elif kind == "ffn_gate":
                ff = max(ff, t.shape[1])
        elif t.name in ("per_layer_model_proj.weight", "per_layer_proj_norm.weight", "rope_freqs.weight"):
            layers[0] += nbytes(t)
        elif t.name in ("output.weight", "output_norm.weight"):
            output += nbytes(t)
        elif t.name == "token_embd.weight":
            host += nbytes(t)
            n_embd, n_vocab = t.shape[0], t.shape[1]
            if not any(x.name == "output.weight" for x in tensors):
                output += nbytes(t)  # the tied output matrix
    used = int(values.get(f"{arch}.expert_used_count", 0) or 0)
    ff = max(ff, used * int(values.get(f"{arch}.expert_feed_forward_length", 0) or 0))
    widths = tuple((k, v or k) for k, v in zip(k_width, v_width, strict=True))  # K=V layers (26B, 31B): V as wide
    proj = mmproj.stat().st_size if mmproj is not None and mmproj.is_file() else 0
    ctx_train = int(values.get(f"{arch}.context_length", 0) or 0)
    return Shape(tuple(layers), output, host, widths, n_vocab, n_embd, ff, ctx_train, proj)


@dataclass
class DeviceUse:
    name: str
    free: int
    units: int = 0
    weights: int = 0
    kv: int = 0
    compute: int = 0
    projector: int = 0

    @property
    def used(self) -> int:
        return self.weights + self.kv + self.compute + self.projector


@dataclass
class Plan:
    """Where a model goes: what llama.cpp is told, and what each device holds."""

    n_gpu_layers: int
    ctx: int | None  # per sequence; None: the default (nothing planned)
    units: int  # n_layer + 1
    devices: list[DeviceUse] = field(default_factory=list)
    tensor_split: list[float] | None = None  # per offload device, in llama.cpp's order
    split_mode: str = "layer"
    main_gpu: int = 0
    projector_gpu: bool = False
    cpu: int = 0  # bytes left on the CPU: input layer, layers not offloaded, their KV

    @property
    def kv_where(self) -> str:
        on = sum(d.kv for d in self.devices)
        return "GPU" if on and self.n_gpu_layers >= self.units else ("CPU" if not on else "GPU+CPU")

    def summary(self) -> str:
        """One line, as ``ollama ps`` has it: "11/11 layers on CUDA0, KV on GPU, 5.1 GB"."""
        from g4cli.render import human_bytes

        used = [d for d in self.devices if d.units]
        if not used:
            return f"0/{self.units} layers on a GPU (CPU only)"
        where = " + ".join(f"{d.name} ({d.units})" if len(used) > 1 else d.name for d in used)
        proj = "; projector on GPU" if self.projector_gpu else ""
        gpu = human_bytes(sum(d.used for d in used))
        return f"{self.n_gpu_layers}/{self.units} layers on {where}, KV on {self.kv_where}, {gpu}{proj}"

    def apply(self, mp: object) -> object:
        """Set llama_model_params from the plan; the tensor_split array (it must outlive the load)."""
        import ctypes

        import llama_cpp

        mp.split_mode = SPLIT_MODES[self.split_mode]
        mp.main_gpu = self.main_gpu
        if not self.tensor_split:
            return None
        n = llama_cpp.llama_max_devices()
        array = (ctypes.c_float * n)(*(self.tensor_split + [0.0] * n)[:n])
        mp.tensor_split = array
        return array


def assign(n: int, fractions: list[float]) -> list[int]:
    """Units per device when the last ``n`` units are offloaded with these split fractions:
    llama.cpp's ``upper_bound`` over the cumulative, normalized fractions."""
    import bisect

    total = sum(fractions)
    if n <= 0 or total <= 0:
        return [0] * len(fractions)
    cum, acc = [], 0.0
    for f in fractions:
        acc += f
        cum.append(acc / total)
    counts = [0] * len(fractions)
    for j in range(n):
        counts[min(bisect.bisect_right(cum, j / n), len(fractions) - 1)] += 1
    return counts


@dataclass(frozen=True)
class _Sizing:
    """The per-unit and per-device sizes of one planning pass."""

    shape: Shape
    cells: int
    kv_type: str
    flash_attn: bool
    n_ubatch: int
    measured: dict[str, int]  # device -> compute buffer llama.cpp reported for it (refine())

    def need(self, unit: int) -> int:
        return self.shape.unit_weights(unit) + self.shape.kv_bytes(unit, self.cells, self.kv_type, self.flash_attn)

    def compute(self, name: str, holds_output: bool) -> int:
        return max(self.shape.compute(self.n_ubatch, holds_output), self.measured.get(name, 0))

    def fill(self, names: list[str], free: list[int], counts: list[int]) -> list[DeviceUse] | None:
        """Each device's share for ``counts`` (None when one does not fit in its free memory)."""
        shape = self.shape
        last = max((i for i, c in enumerate(counts) if c), default=-1)
        out, u = [], shape.units - sum(counts)
        for i, (name, f, c) in enumerate(zip(names, free, counts, strict=True)):
            d = DeviceUse(name, f, c)
            for unit in range(u, u + c):
                d.weights += shape.unit_weights(unit)
                d.kv += shape.kv_bytes(unit, self.cells, self.kv_type, self.flash_attn)
            u += c
            if c:
                d.compute = self.compute(name, holds_output=i == last)
                if d.used + RESERVE > f:
                    return None
            out.append(d)
        return out

    def greedy(self, names: list[str], free: list[int], n: int) -> list[int]:
        """Fill the devices in order, each with as many of the last ``n`` units as it holds (the
        output unit's logits counted on whichever device ends up with it)."""
        units = self.shape.units
        counts, u = [], units - n
        for name, f in zip(names, free, strict=True):
            c, used = 0, 0
            while u + c < units:
                compute = self.compute(name, holds_output=u + c == units - 1)
                if used + self.need(u + c) + compute + RESERVE > f:
                    break
                used += self.need(u + c)
                c += 1
            counts.append(c)
            u += c
        return counts if u == units else []


def plan(
    shape: Shape,
    devices: list[tuple[str, int]],
    *,
    ctx: int,
    n_seq: int = 1,
    kv_type: str = "f16",
    flash_attn: bool = True,
    n_ubatch: int = 512,
    gpu_layers: int | None = None,
    split_mode: str = "layer",
    tensor_split: list[float] | None = None,
    main_gpu: int = 0,
    measured: dict[str, int] | None = None,
) -> Plan:
    """The most units that fit on ``devices`` ((name, free bytes), llama.cpp's order) at ``ctx``
    tokens per sequence; with ``gpu_layers`` given, that many, placed as llama.cpp will.
    ``measured``: compute buffers llama.cpp reported for a previous plan (used where larger)."""
    if split_mode == "none" and devices:
        devices = [devices[main_gpu]]  # llama.cpp keeps only the main GPU
        tensor_split = None
    names, free = [n for n, _ in devices], [f for _, f in devices]
    sizing = _Sizing(shape, ctx * n_seq, kv_type, flash_attn, n_ubatch, measured or {})
    base = Plan(0, ctx, shape.units, [DeviceUse(n, f) for n, f in devices], None, split_mode, main_gpu)
    if not devices:
        return _with_cpu(base, sizing)
    if gpu_layers is not None:  # what llama.cpp does with a number: the split by free memory or as told
        n = min(gpu_layers, shape.units)
        uses = sizing.fill(names, [2**62] * len(names), assign(n, tensor_split or [float(f) for f in free]))
        for d, f in zip(uses, free, strict=True):
            d.free = f
        base.n_gpu_layers, base.devices, base.tensor_split = n, uses, tensor_split
        base.projector_gpu = n > 0  # as before auto: the projector follows the layers
        return _with_cpu(base, sizing)
    for n in range(shape.units, 0, -1):
        if tensor_split:  # the user's proportions, as many units as they allow
            tries = [assign(n, tensor_split)]
        else:  # spread by free memory, as llama.cpp's default; failing that, fill in device order
            tries = [assign(n, [float(f) for f in free]), sizing.greedy(names, free, n)]
        for counts in tries:
            uses = counts and sizing.fill(names, free, counts)
            if uses:
                base.n_gpu_layers, base.devices = n, uses
                base.tensor_split = tensor_split or [float(c) for c in counts]
                return _with_cpu(_projector(base, shape), sizing)
    return _with_cpu(base, sizing)


def _projector(p: Plan, shape: Shape) -> Plan:
    """The projector on the main device when it fits beside the layers (mtmd's use_gpu)."""
    main = next((d for d in p.devices if d.units), None)
    if shape.projector and main is not None and main.used + shape.projector + RESERVE <= main.free:
        main.projector = shape.projector
        p.projector_gpu = True
    return p


def _with_cpu(p: Plan, sizing: _Sizing) -> Plan:
    p.cpu = sizing.shape.host + sum(sizing.need(u) for u in range(sizing.shape.units - p.n_gpu_layers))
    return p


def choose(
    shape: Shape,
    devices: list[tuple[str, int]],
    *,
    ctx: int | None,
    default_ctx: int,
    host_free: int | None,
    **options: object,
) -> Plan:
    """The plan at ``ctx``, or with ``ctx`` unset at the largest context up to ``default_ctx``
    (halving, not below ``MIN_AUTO_CTX``) whose CPU share fits ``host_free``. An explicit
    ``ctx`` that cannot fit is an error naming one that would."""
    from g4cli.errors import RuntimeFailure
    from g4cli.render import human_bytes

    def fits(p: Plan) -> bool:
        return host_free is None or cpu_need(p, shape, options) <= host_free

    if ctx is not None:
        p = plan(shape, devices, ctx=ctx, **options)
        if fits(p):
            return p
        smaller = next((c for c in _halvings(ctx // 2) if fits(plan(shape, devices, ctx=c, **options))), None)
        where = " + ".join(name for name, _ in devices) or "the CPU"
        raise RuntimeFailure(
            f"--ctx {ctx} does not fit: {human_bytes(cpu_need(p, shape, options))} would stay in memory "
            f"beside what fits on {where}, and {human_bytes(host_free or 0)} is available",
            hint=f"--ctx {smaller} fits" if smaller else "no context fits this model here",
        )
    candidates = _halvings(default_ctx, floor=min(MIN_AUTO_CTX, default_ctx))
    for c in candidates:
        p = plan(shape, devices, ctx=c, **options)
        if fits(p):
            return p
    return plan(shape, devices, ctx=candidates[-1], **options)  # llama.cpp will say what failed


def _halvings(start: int, floor: int = 256) -> list[int]:
    out, c = [], start
    while c >= floor:
        out.append(c)
        c //= 2
    return out or [start]


def cpu_need(p: Plan, shape: Shape, options: dict) -> int:
    """System memory the plan leaves to the CPU: its weights and KV, a compute buffer, the runtime."""
    from g4cli.models.fit import RUNTIME

    n_ubatch = int(options.get("n_ubatch", 512))
    return p.cpu + shape.compute(n_ubatch, holds_output=p.n_gpu_layers == 0) + RUNTIME


def refine(make: Callable[[dict[str, int]], Plan], measure: Callable[[Plan], dict[str, int]], rounds: int = 3) -> Plan:
    """Plan, ask llama.cpp what each device's compute buffer would be (a dry run), and plan again
    with those figures where they exceed the estimate, until every device's is covered."""
    measured: dict[str, int] = {}
    p = make(measured)
    for _ in range(rounds):
        if not p.n_gpu_layers:
            return p
        got = measure(p)
        if all(got.get(d.name, 0) <= d.compute for d in p.devices if d.units):
            return p
        measured = {k: max(v, measured.get(k, 0)) for k, v in {**measured, **got}.items()}
        p = make(measured)
    return p

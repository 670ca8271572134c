"""Chat settings, one typed dataclass per concern, validated in one place.

``g4 chat`` builds them once from its command line (``ChatOptions.validate`` checks them all
before anything loads); the REPL's ``/set`` edits the same ``Sampling`` object through
``Sampling.set``, which applies the same limits. Every limit is a row of ``LIMITS``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from g4cli.errors import UsageError

# field: (command-line flag, check, what the check demands)
LIMITS: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "temperature": ("--temp", lambda v: v >= 0, ">= 0"),
    "top_p": ("--top-p", lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": ("--top-k", lambda v: v >= 0, ">= 0"),
    "min_p": ("--min-p", lambda v: 0 <= v <= 1, "in [0, 1]"),
    "repeat_penalty": ("--repeat-penalty", lambda v: v > 0, "> 0"),
    "max_tokens": ("--max-tokens", lambda v: v >= 1, ">= 1"),
    "gpu_layers": ("--gpu-layers", lambda v: v >= 0, ">= 0"),
    "threads": ("--threads", lambda v: v >= 1, ">= 1"),
    "silence": ("--silence", lambda v: v > 0, "> 0"),
    "max_seconds": ("--max-seconds", lambda v: v > 0, "> 0"),
}
MIN_CTX = 64
FLASH_ATTN = ("auto", "on", "off")
DRAFT = ("auto", "on", "off")
KV_TYPES = ("f16", "q8_0", "q4_0")
IMAGE_TOKENS = (70, 1120)  # the per-image budget llama.cpp's gemma4 projectors accept


def gpu_layers_value(text: str) -> int | None:
    """``--gpu-layers auto|N`` -> None (auto) or N."""
    if text.strip().lower() == "auto":
        return None
    if not text.strip().isdigit():
        raise UsageError(f"--gpu-layers {text}: expected auto or a number of layers")
    return int(text)


def tensor_split_value(text: str | None) -> tuple[float, ...]:
    """``--tensor-split 3,1`` -> (3.0, 1.0)."""
    if not text:
        return ()
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"--tensor-split {text}: expected numbers like 3,1") from None


def image_tokens_setting(text: str) -> int:
    """``/set image_tokens N``: parsed and checked against the limits of ``--image-tokens``."""
    lo, hi = IMAGE_TOKENS
    try:
        n = int(text.strip())
    except ValueError:
        raise UsageError(f"/set image_tokens: {text.strip()!r} is not a valid value") from None
    if not lo <= n <= hi:
        raise UsageError(f"/set image_tokens: {n} is out of range (must be in {lo}..{hi})")
    return n


def _check(obj: Any) -> None:
    """Apply ``LIMITS`` to every field of ``obj`` that has one (None means 'not set')."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in LIMITS and value is not None:
            flag, ok, rule = LIMITS[f.name]
            if not ok(value):
                raise UsageError(f"{flag} must be {rule}")


@dataclass
class Sampling:
    """How tokens are picked. Gemma 4's recommended defaults: temperature 1.0, top-k 64, top-p 0.95."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int | None = None
    think: bool = False
    # GBNF the answer must match (``runtime.grammar.json_grammar``): set from the command line or a
    # request, not by /set, and left out of describe()
    grammar: str | None = field(default=None, repr=False, metadata={"repl": False})

    def validate(self) -> Sampling:
        _check(self)
        return self

    def set(self, key: str, text: str) -> Any:
        """``/set KEY VALUE``: parse, check against the same limits, assign; returns the value."""
        key = {"temp": "temperature"}.get(key.replace("-", "_"), key.replace("-", "_"))
        names = [f.name for f in fields(self) if f.metadata.get("repl", True)]
        if key not in names:
            raise UsageError(f"/set {key}: unknown setting; one of {', '.join(names)}")
        value = text.strip()
        try:
            if key == "think":
                if value not in ("on", "off", "true", "false", "1", "0"):
                    raise ValueError
                parsed: Any = value in ("on", "true", "1")
            elif key in ("top_k", "seed", "max_tokens"):
                parsed = None if value in ("", "none") and key != "top_k" else int(value)
            else:
                parsed = float(value)
        except ValueError:
            raise UsageError(f"/set {key}: {value!r} is not a valid value") from None
        if key in LIMITS and parsed is not None and not LIMITS[key][1](parsed):
            raise UsageError(f"/set {key}: {value} is out of range (must be {LIMITS[key][2]})")
        setattr(self, key, parsed)
        return parsed

    def saved(self) -> dict[str, Any]:
        """The settings a saved conversation keeps (the ones ``/set`` can change)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("repl", True)}

    def describe(self) -> str:
        return "  ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if f.metadata.get("repl", True))


@dataclass
class LoadOptions:
    """How the model is loaded."""

    ctx: int | None = None  # None: the default context, never beyond the model's own
    threads: int | None = None  # None: the physical performance cores
    gpu_layers: int | None = None  # None: auto (g4cli/chat/runtime/offload.py); 0 on a CPU-only machine
    mmproj: Path | None = None  # a projector for a model given as a GGUF path
    flash_attn: str = "auto"  # auto: the measured best on CPU, llama.cpp's own choice on a GPU
    kv_type: str = "f16"  # KV cache type; a quantized V cache needs flash attention
    image_tokens: int | None = None  # per-image token budget (None: the default, see the runtime)
    rpc: str | None = None  # --rpc host:port[,host:port]: llama.cpp RPC servers whose devices take layers
    split_mode: str = "layer"  # several GPUs: llama.cpp's layer, row or none
    tensor_split: tuple[float, ...] = ()  # share of the layers per device (empty: by free memory)
    main_gpu: int = 0
    draft: str = "auto"  # the assistant drafter: auto (when there is one), on (required), off
    draft_max: int = 3  # most tokens drafted a round (llama.cpp's default)
    drafter: Path | None = None  # a drafter GGUF; None: the one beside the model
    batch_invariant: bool = False  # a lone token decoded as a row of a batch (runtime/model.py: submit)

    def validate(self) -> LoadOptions:
        _check(self)
        if self.draft not in DRAFT:
            raise UsageError(f"--draft {self.draft}: choose one of {', '.join(DRAFT)}")
        if self.ctx is not None and self.ctx < MIN_CTX:
            raise UsageError(f"--ctx {self.ctx} is too small (at least {MIN_CTX} tokens)")
        if self.flash_attn not in FLASH_ATTN:
            raise UsageError(f"--flash-attn {self.flash_attn}: choose one of {', '.join(FLASH_ATTN)}")
        if self.kv_type not in KV_TYPES:
            raise UsageError(f"--kv-type {self.kv_type}: choose one of {', '.join(KV_TYPES)}")
        if self.kv_type != "f16" and self.flash_attn == "off":
            raise UsageError(
                f"--kv-type {self.kv_type} needs flash attention (llama.cpp quantizes the V cache only with it)",
                hint="drop --flash-attn off, or use --kv-type f16",
            )
        lo, hi = IMAGE_TOKENS
        if self.image_tokens is not None and not lo <= self.image_tokens <= hi:
            raise UsageError(f"--image-tokens must be in {lo}..{hi}")
        if self.split_mode not in ("layer", "row", "none"):
            raise UsageError(f"--split-mode {self.split_mode}: choose one of layer, row, none")
        if (
            self.main_gpu < 0
            or any(x < 0 for x in self.tensor_split)
            or (self.tensor_split and not sum(self.tensor_split))
        ):
            raise UsageError("--main-gpu and --tensor-split take numbers >= 0 (--tensor-split not all 0)")
        if self.rpc is not None:
            from g4cli.chat.runtime.rpc import parse_endpoints

            parse_endpoints(self.rpc)
        return self


@dataclass
class MicOptions:
    """How the microphone records."""

    input_device: str | None = None
    silence: float = 1.5
    max_seconds: float = 30.0
    save_audio: Path | None = None

    def validate(self) -> MicOptions:
        _check(self)
        return self


@dataclass
class ChatOptions:
    """Everything ``g4 chat`` was told, built once from its command line."""

    sampling: Sampling = field(default_factory=Sampling)
    load: LoadOptions = field(default_factory=LoadOptions)
    mic: MicOptions = field(default_factory=MicOptions)
    image: list[str] = field(default_factory=list)
    audio: list[str] = field(default_factory=list)
    record: bool = False  # --mic: record one utterance and send it
    system: str | None = None
    json: bool = False
    verbose: bool = False
    history: bool = True
    local: bool = False  # never through a running g4 serve
    response_format: dict | None = None  # --schema / --format json, as OpenAI's response_format

    def validate(self) -> ChatOptions:
        """Usage errors, each one line and exit 2, before anything loads."""
        self.sampling.validate()
        self.load.validate()
        self.mic.validate()
        if [*self.image, *self.audio].count("-") > 1:
            raise UsageError("only one attachment can come from stdin (-)")
        if self.response_format is not None:  # the grammar every answer must match
            from g4cli.chat.runtime.grammar import json_grammar

            if self.sampling.think:
                raise UsageError(
                    "--think cannot be combined with --schema or --format json (the JSON has no room for a thought)"
                )

            spec = self.response_format.get("json_schema")
            self.sampling.grammar = json_grammar(spec["schema"] if spec else None)
        return self

    @property
    def needs(self) -> set[str]:
        """Capabilities the command line asks for before any file is read (``--mic``)."""
        return {"audio"} if self.record else set()


def response_format(schema: str | None, output_format: str | None) -> dict | None:
    """``--schema`` / ``--format json`` as an OpenAI ``response_format`` (None: free text)."""
    import json

    if output_format is not None and output_format != "json":
        raise UsageError(f"--format {output_format!r}: only json is supported (or give --schema)")
    if schema is None:
        return {"type": "json_object"} if output_format else None
    text = schema
    if not schema.lstrip().startswith("{"):
        path = Path(schema).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise UsageError(f"--schema {schema}: cannot read ({e.strerror or e})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--schema: not valid JSON (line {e.lineno}: {e.msg})") from None
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": doc}}

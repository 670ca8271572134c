"""A Gemma 4 GGUF (+ projector) loaded in llama.cpp: the model, its context, tokens, media.

Loaded through libllama's own API (llama-cpp-python's low-level bindings), so that every
context parameter is ours to set; images and audio go through llama.cpp's ``mtmd``.
llama-cpp-python's ``Gemma4ChatHandler`` is not used: it handles image parts only and refuses
an audio-only projector. ``Model.generate`` answers a conversation on the model's first
sequence (``g4cli.chat.runtime.generate`` does the work).
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp  # before numpy: a numpy-first import crashed a CUDA build at model load
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from g4cli.chat import template
from g4cli.chat.conversation import Event, Stats, Turn
from g4cli.chat.media import Media
from g4cli.chat.runtime.cache import MediaUnit, Sequence
from g4cli.chat.runtime.ggml_api import backend_init
from g4cli.chat.runtime.handle import Handle
from g4cli.chat.runtime.hardware import physical_cores
from g4cli.chat.runtime.llama_log import LOG
from g4cli.chat.runtime.prompt import Prompt, tokenize_media_prompt
from g4cli.chat.settings import IMAGE_TOKENS, Sampling
from g4cli.errors import CapabilityError, RuntimeFailure
from g4cli.models.catalog import CPU_FLASH_ATTN, DEFAULT_CTX  # shared with the fit estimate of g4 pull

if TYPE_CHECKING:
    from g4cli.chat.runtime.draft import Drafter
    from g4cli.chat.runtime.offload import Plan

MARKER = "<__media__>"  # mtmd's media marker
KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}  # ggml type ids
# CPU-only loads read the weights into memory rather than map them: llama.cpp repacks most of
# them for its CPU kernels, and through a mapping the file pages it read stay resident beside
# the repacked copy (E4B Q4_K_M: +1.8 GB). See bench/memory_bench.py.
CPU_LOAD_MODE = llama_cpp.LLAMA_LOAD_MODE_NONE
_CONTROL_TEXT = {"<|channel>": "open", "<channel|>": "close"}
# The per-image token budget without --image-tokens: the most gemma4v takes (mtmd's image_max_tokens).
# llama.cpp sizes each image dynamically: its own size rounded to 48 px, shrunk only to fit the
# budget, enlarged only up to 70 tokens (image_min_tokens), so a high budget costs small images
# nothing. transformers' processor defaults to 280 (max_soft_tokens) and resizes every image to
# fill it; at 280 a 1920x1080 screenshot becomes 1056x576 and OCR fails (ollama #17152, LM Studio
# bug tracker #1898): reading text needs the maximum.
DEFAULT_IMAGE_TOKENS = IMAGE_TOKENS[1]


def require(capability: str, capabilities: set[str], model: str, mmproj: Path | None, detail: str = "") -> None:
    """The one capability error: what the model cannot take, and why."""
    if capability in capabilities:
        return
    what = "images" if capability == "vision" else "audio"
    why = "it has no projector file" if mmproj is None else f"its projector has no {capability} encoder"
    raise CapabilityError(f"{model} cannot take {what}: {why}" + (f" ({detail})" if detail else ""))


def projector_capabilities(mmproj: Path | None) -> set[str]:
    """What a projector file can encode, read from its header without loading it."""
    if mmproj is None:
        return set()
    LOG.install()
    caps = mtmd.mtmd_get_cap_from_file(os.fsencode(mmproj))
    return {name for name, ok in (("vision", caps.inp_vision), ("audio", caps.inp_audio)) if ok}


def non_causal_images(mmproj: Path, n_embd_text: int) -> bool:
    """Whether mtmd decodes this projector's images non-causally, every image token attending to
    every other (then llama.cpp needs a whole image in one ubatch): mtmd's own rule
    (``mtmd_decode_use_non_causal``) read from the header, so that the projector need not be
    loaded to size the context. gemma4v: all but E2B/E4B (text width 1536/2560); gemma4uv (the
    12B): always. Checked against mtmd when the projector loads."""
    from g4cli.models.ggufmeta import read_values

    kind = read_values(mmproj, {"clip.vision.projector_type"}).get("clip.vision.projector_type")
    if kind == "gemma4v":
        return n_embd_text not in (1536, 2560)
    return kind in ("gemma4uv", "gemma3")


def suppress_tokens(vocab: object) -> list[int]:
    """The ids generation must never pick (``tokenizer.ggml.suppress_tokens``, from the release's
    generation_config.json: the 12B has them). llama.cpp reads them into the vocabulary but bans
    them only in its common/ sampling code, which the bindings lack: g4's sampler bans them."""
    n = ctypes.c_int32(0)
    ids = llama_cpp.llama_vocab_get_suppress_tokens(vocab, ctypes.byref(n))
    return list(ids[: n.value]) if ids and n.value > 0 else []


def _trained_context(gguf: Path) -> int | None:
    """``<arch>.context_length`` from a GGUF header (None if unreadable: the load will say why)."""
    from g4cli.models.ggufmeta import read_values

    try:
        value = read_values(gguf, {"{arch}.context_length"}).get("{arch}.context_length")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) else None


class Model(Handle):
    """A loaded model with one context of ``n_seq`` sequences; ``generate(turns, sampling)``
    answers on the first one."""

    def __init__(
        self,
        gguf: Path | str,
        mmproj: Path | str | None = None,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        n_batch: int = 512,
        n_ubatch: int | None = None,
        n_seq: int = 1,
        flash_attn: str = "auto",
        kv_type: str = "f16",
        image_tokens: int | None = None,
        offload: Plan | None = None,  # --gpu-layers auto, --split-mode, --tensor-split (runtime/offload.py)
        batch_invariant: bool = False,  # --batch-invariant: see submit()
    ) -> None:
        self.path = Path(gguf)
        self.batch_invariant = batch_invariant
        self.offload = offload
        self.mmproj = Path(mmproj) if mmproj else None
        self.name = self.path.name
        if n_ctx is not None and n_ctx < 16:
            raise RuntimeFailure(f"context size {n_ctx} is too small")
        self._log = LOG.install()  # llama.cpp's own log, shown with G4_LLAMA_LOG=1
        t0 = time.perf_counter()
        backend_init()
        threads = n_threads or physical_cores()
        self.threads = threads
        self.flash_attn = self._flash_attn(flash_attn, kv_type, n_gpu_layers)
        self.kv_type = kv_type
        self.image_tokens = image_tokens or DEFAULT_IMAGE_TOKENS
        self._ubatch_given = n_ubatch  # None: see _ubatch; a number is used as is (larger images split: tests)
        if n_ctx is None:  # the default, but never beyond what the model was trained for
            n_ctx = min(DEFAULT_CTX, _trained_context(self.path) or DEFAULT_CTX)
        self.model = self.ctx = self._mtmd = self._batch = None
        self.drafter: Drafter | None = None  # an assistant attached by runtime/draft.attach
        self.draft_max = 0
        self.draft_paced = False  # --draft auto: draft only while it is measured to pay (speculate.Pace)
        self.draft_pays: bool | None = None  # what the first paced answer measured
        try:
            self._load(n_ctx, threads, n_gpu_layers, n_batch, n_seq)
        except BaseException:
            self.close()
            raise
        self.load_s = time.perf_counter() - t0

    def _load(self, n_ctx: int, threads: int, n_gpu_layers: int, n_batch: int, n_seq: int) -> None:
        if not self.path.is_file():
            raise RuntimeFailure(f"{self.path}: no such model file")
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = n_gpu_layers
        self._tensor_split = self.offload.apply(mp) if self.offload is not None else None  # kept until freed
        # E2B/E4B's per-layer-embedding table (~2 GB of E4B Q4_K_M): rows read for the tokens
        # used, not up front (llama.cpp's AUTO does that only above 4 GiB)
        mp.lazy_mode = llama_cpp.LLAMA_LAZY_MODE_ON
        if n_gpu_layers == 0:
            mp.load_mode = CPU_LOAD_MODE
        self.model = llama_cpp.llama_model_load_from_file(os.fsencode(self.path), mp)
        if not self.model:
            detail = self._log.last_error() or "not a GGUF llama.cpp can load"
            raise RuntimeFailure(f"{self.path}: cannot load the model ({detail})")
        # The projector is loaded on first use (most chats are text: E4B's takes ~1 GB); what it
        # can take, and whether it reads images whole (the ubatch size), come from its header.
        self._mtmd_args = (threads, self.offload.projector_gpu if self.offload else n_gpu_layers > 0)
        self.capabilities: set[str] = projector_capabilities(self.mmproj)
        if self.mmproj is not None and not self.capabilities:
            detail = self._log.last_error() or "no vision or audio encoder in it"
            raise RuntimeFailure(f"{self.mmproj}: cannot load the projector ({detail})")
        self.non_causal_images = "vision" in self.capabilities and non_causal_images(
            self.mmproj, llama_cpp.llama_model_n_embd(self.model)
        )
        self.n_ubatch = self._ubatch(n_batch)
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_seq_max = n_ctx, n_seq
        cp.n_batch, cp.n_ubatch = max(n_batch, self.n_ubatch), self.n_ubatch  # text still goes n_batch at a time
        cp.n_threads = cp.n_threads_batch = threads
        cp.flash_attn_type = self.flash_attn
        cp.type_k = cp.type_v = KV_TYPES[self.kv_type]
        cp.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            detail = self._log.last_error() or "out of memory?"
            if self.n_ubatch > n_batch:
                raise RuntimeFailure(
                    f"{self.path}: cannot create a context of {n_ctx} tokens that takes a whole "
                    f"{self.n_ubatch}-token image at once ({detail}); lower --image-tokens or --ctx"
                )
            raise RuntimeFailure(f"{self.path}: cannot create a context of {n_ctx} tokens ({detail})")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_batch = n_batch
        self.template = self._chat_template()
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.sequences = [Sequence(self.ctx, i) for i in range(n_seq)]
        self._control = {self._single_token(text): kind for text, kind in _CONTROL_TEXT.items()}
        self._control.pop(None, None)
        self.bos_text = self.piece(llama_cpp.llama_vocab_bos(self.vocab), special=True) or "<bos>"
        self._media_pos: dict[str, int] = {}  # media key -> positions it takes (mtmd's own sizing)
        self._warm_up()

    @staticmethod
    def _flash_attn(choice: str, kv_type: str, n_gpu_layers: int) -> int:
        """llama.cpp's flash-attention switch for ``--flash-attn``: on CPU, auto means the setting
        measured fastest; with layers on a GPU, llama.cpp decides. A quantized KV cache needs it."""
        if choice == "on" or (choice == "auto" and kv_type != "f16"):
            return llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if choice == "off":
            if kv_type != "f16":
                raise RuntimeFailure(f"a {kv_type} KV cache needs flash attention")
            return llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if n_gpu_layers > 0:
            return llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO
        return llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if CPU_FLASH_ATTN else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED

    def _warm_up(self) -> None:
        """What llama.cpp's own CLI does at load: one decode (thread pool, compute graph) and the
        chat template compiled, so that the first answer does not pay for them."""
        if self.template:
            template.compile_template(self.template)
        seq = self.sequences[0]
        self.decode(seq, [llama_cpp.llama_vocab_bos(self.vocab)], logits_last=True)
        seq.clear()

    @property
    def projector(self) -> object:
        """The mtmd context, loaded now if it was not yet (None: the model has no projector)."""
        if self._mtmd is None and self.mmproj is not None:
            self._init_mtmd(*self._mtmd_args)
        return self._mtmd

    def close_projector(self) -> None:
        """Free the projector (it loads again with the next image or audio)."""
        if self._mtmd is not None:
            mtmd.mtmd_free(self._mtmd)
            self._mtmd = None

    def _init_mtmd(self, threads: int, gpu: bool) -> None:
        """The projector, with ``self.image_tokens`` as its per-image budget. gemma4v (clip.cpp)
        rounds an image to 48-px multiples, shrinks it (aspect kept, rounded down) when it
        exceeds image_max_tokens, and enlarges it (rounded up) when it is under
        image_min_tokens; the minimum stays llama.cpp's 70, so small images are not blown up."""
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = gpu
        params.n_threads = threads
        params.print_timings = False
        params.warmup = False
        params.image_max_tokens = self.image_tokens
        self._mtmd = mtmd.mtmd_init_from_file(os.fsencode(self.mmproj), self.model, params)
        if not self._mtmd:
            detail = self._log.last_error() or "not a projector for this model?"
            raise RuntimeFailure(f"{self.mmproj}: cannot load the projector ({detail})")
        loaded = {"vision"} if mtmd.mtmd_support_vision(self._mtmd) else set()
        loaded |= {"audio"} if mtmd.mtmd_support_audio(self._mtmd) else set()
        non_causal = "vision" in loaded and bool(mtmd.mtmd_decode_use_non_causal(self._mtmd, None))
        if loaded != self.capabilities or non_causal != self.non_causal_images:  # the header said otherwise
            self.close_projector()
            raise RuntimeFailure(f"{self.mmproj}: the projector is not what its header says")

    def _ubatch(self, n_batch: int) -> int:
        """llama.cpp's micro-batch: ``n_batch``, or room for the largest image when images are
        decoded non-causally, which llama.cpp does right only within one ubatch (mtmd-helper's
        scope_non_causal; split across ubatches, an image's first tokens never see its last).
        gemma4v's largest image is the budget (but for very long, thin ones: see eval_media)."""
        if self._ubatch_given is not None:
            return self._ubatch_given
        return max(n_batch, self.image_tokens) if self.non_causal_images else n_batch

    def set_image_tokens(self, n: int) -> None:
        """A new per-image budget (``/set image_tokens``): a new projector context, and no image
        cached under the old budget is reused (the KV cache is cleared; token counts are kept per budget)."""
        if self.non_causal_images and n > self.n_ubatch:
            raise RuntimeFailure(
                f"{self.name} reads each image whole and was loaded for images of up to {self.n_ubatch} "
                f"tokens; restart with --image-tokens {n}"
            )
        if self._mtmd is None or n == self.image_tokens:  # not loaded yet: loaded with the new budget
            self.image_tokens = n
            return
        old, self.image_tokens = self.image_tokens, n
        self.close_projector()
        try:
            self._init_mtmd(*self._mtmd_args)
        except RuntimeFailure:
            self.image_tokens = old
            self._init_mtmd(*self._mtmd_args)
            raise
        self.reset()

    # --- metadata ------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as text (``{arch}`` in the key is the model's architecture)."""
        if "{arch}" in key:
            key = key.replace("{arch}", self.meta("general.architecture") or "")
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def _chat_template(self) -> str | None:
        raw = llama_cpp.llama_model_chat_template(self.model, None)
        return raw.decode("utf-8", "replace") if raw else None

    @property
    def suppress_tokens(self) -> list[int]:
        """Token ids the sampler never picks (see ``suppress_tokens``)."""
        return suppress_tokens(self.vocab)

    def describe(self) -> dict[str, object]:
        """What ``/show`` prints about the model."""
        return {
            "arch": self.meta("general.architecture") or "?",
            "layers": self.meta("{arch}.block_count") or "?",
            "width": self.meta("{arch}.embedding_length") or "?",
            "trained_ctx": self.meta("{arch}.context_length") or "?",
        }

    # --- tokens and text -----------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, False, special)
        if n < 0:
            cap = -n
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, False, special)
        return list(buf[:n])

    def _single_token(self, text: str) -> int | None:
        ids = self.tokenize(text)
        return ids[0] if len(ids) == 1 else None

    def control(self, token: int) -> str | None:
        """ "open"/"close" for the thinking channel's tokens, else None."""
        return self._control.get(token)

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int, special: bool = False) -> str:
        return self.piece_bytes(token, special).decode("utf-8", "replace")

    def piece_bytes(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def render(self, turns: list[Turn], think: bool = False, tools: list[dict] | None = None) -> str:
        """The prompt text (media as mtmd markers), rendered by the model's own chat template
        (with ``tools`` declared to the model when given)."""
        if not self.template:
            raise RuntimeFailure(f"{self.path}: the GGUF has no chat template")
        extra = {"tools": tools} if tools else {}
        return template.prompt_text(self.template, turns, think=think, bos=self.bos_text, marker=MARKER, **extra)

    # --- media ---------------------------------------------------------------------------------

    def require(self, capability: str, detail: str = "") -> None:
        """Refuse up front what the model cannot take ("vision" or "audio")."""
        require(capability, self.capabilities, self.name, self.mmproj, detail)

    def check_media(self, media: list[Media]) -> None:
        """Refuse attachments the model cannot take, before any work."""
        for m in media:
            self.require("vision" if m.kind == "image" else "audio", m.name)

    def tokenize_prompt(self, prompt: str, media: list[Media]) -> Prompt:
        """A rendered prompt (mtmd markers where media go) as units: tokens and media chunks.

        Media the model cannot take are refused here, before any work: the runtime's own check
        for its callers (``g4 chat`` also checks the projector's header before loading, and a
        ``Session`` when something is attached, so that the user hears it at once)."""
        self.check_media(media)
        if self._mtmd is None and not media:  # text only: the projector is not needed (yet)
            return Prompt(self.tokenize(prompt))
        return tokenize_media_prompt(self.projector, prompt, media)

    def media_tokens(self, media: Media) -> list[int]:
        """How many tokens each piece of an attachment becomes (mtmd's own sizing)."""
        with self.tokenize_prompt(MARKER * max(1, len(media.pieces)), [media]) as p:
            return [u.n_tokens for u in p.units if isinstance(u, MediaUnit)]

    def media_positions(self, media: Media) -> int:
        """Positions an attachment takes in a prompt, with the tokens mtmd wraps it in (cached
        per content and image budget)."""
        key = f"{media.sha256}@{self.image_tokens}"
        if key not in self._media_pos:
            with self.tokenize_prompt(MARKER * max(1, len(media.pieces)), [media]) as p:
                self._media_pos[key] = p.n_pos
        return self._media_pos[key]

    def prompt_tokens(self, turns: list[Turn], think: bool = False) -> int:
        """Positions the prompt for ``turns`` takes: its text tokens plus each attachment's."""
        media = [m for t in turns for m in t.media]
        text = self.render(turns, think)
        if not media:
            return len(self.tokenize(text))
        return len(self.tokenize(text.replace(MARKER, ""))) + sum(self.media_positions(m) for m in media)

    def encode_media(self, media: Media) -> np.ndarray:
        """The projector's output embeddings for one attachment (rows = media tokens)."""
        with self.tokenize_prompt(MARKER * max(1, len(media.pieces)), [media]) as p:
            out = []
            n_embd = llama_cpp.llama_model_n_embd(self.model)
            for i, chunk in p.media.items():
                if mtmd.mtmd_encode_chunk(self._mtmd, chunk) != 0:
                    raise RuntimeFailure(f"{media.name}: the projector failed to encode it")
                n = p.units[i].n_tokens
                ptr = mtmd.mtmd_get_output_embd(self._mtmd)
                out.append(np.ctypeslib.as_array(ptr, shape=(n * n_embd,)).reshape(n, n_embd).copy())
            return np.concatenate(out)

    # --- evaluation ------------------------------------------------------------------------------

    def decode(self, seq: Sequence, tokens: list[int], logits_last: bool) -> None:
        """Evaluate ``tokens`` into ``seq`` (in pieces of ``n_batch``); logits for the last one."""
        b = self._batch
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start : start + self.n_batch]
            b.n_tokens = len(part)
            for j, tok in enumerate(part):
                b.token[j] = tok
                b.pos[j] = seq.n_past + j
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = seq.seq_id
                b.logits[j] = False
            if logits_last and start + len(part) == len(tokens):
                b.logits[len(part) - 1] = True
            self.submit(b)
            seq.added(part, len(part))

    def submit(self, b: Any) -> None:
        """``llama_decode`` of batch ``b`` (its rows for one sequence or several).

        llama.cpp's CPU kernels compute a lone row differently from a row of a larger batch
        (llamafile's sgemm takes only batches of 2+ rows, K-quants' repacked gemm vs gemv, flash
        attention's split-KV path for one query over 512+ cells): logits differ by up to ~0.5,
        enough to change a greedy pick at a near-tie. With ``batch_invariant`` a lone row goes
        with a throwaway copy of itself one position on (removed again), so that every token is
        computed as a row of a batch, as drafting's verify batches compute them: answers with
        and without a drafter are then the same bit for bit. Decoding without a drafter costs up
        to twice as much on a CPU (the copy is computed too).
        """
        pad = self.batch_invariant and b.n_tokens == 1 and b.pos[0] + 1 < self.n_ctx
        if pad:
            b.token[1], b.pos[1], b.n_seq_id[1], b.logits[1] = b.token[0], b.pos[0] + 1, 1, False
            b.seq_id[1][0] = b.seq_id[0][0]
            b.n_tokens = 2
        try:
            rc = llama_cpp.llama_decode(self.ctx, b)
        finally:
            if pad:
                b.n_tokens = 1
                llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.ctx), b.seq_id[0][0], b.pos[0] + 1, -1)
        if rc != 0:
            detail = self._log.last_error() or "the KV cache may be full"
            raise RuntimeFailure(f"llama.cpp could not decode (code {rc}): {detail}")

    def eval_media(self, seq: Sequence, chunk: object, unit: MediaUnit, logits_last: bool) -> None:
        """Encode a media chunk and decode its embeddings into ``seq``. A non-causal one goes in
        one ubatch (never more than n_ubatch at once: llama.cpp asserts that, killing the process)."""
        n_batch = self.n_batch
        if mtmd.mtmd_decode_use_non_causal(self._mtmd, chunk):
            n_batch = self.n_ubatch
            if unit.n_tokens > n_batch and self._ubatch_given is None:
                raise RuntimeFailure(
                    f"an image of {unit.n_tokens} tokens is more than the {n_batch} this model reads at "
                    "once (a very long, thin image?); crop it or lower --image-tokens"
                )
        new_n_past = llama_cpp.llama_pos(0)
        rc = mtmd.mtmd_helper_eval_chunk_single(
            self._mtmd, self.ctx, chunk, seq.n_past, seq.seq_id, n_batch, logits_last, ctypes.byref(new_n_past)
        )
        if rc != 0:
            raise RuntimeFailure(f"llama.cpp could not encode the media (code {rc}): {self._log.last_error()}")
        seq.added([unit], new_n_past.value - seq.n_past)

    def eval_prompt(self, prompt: str, media: list[Media], seq: Sequence | None = None) -> tuple[int, int]:
        """Bring a sequence's KV cache to the prompt, reusing its common prefix; (prompt
        positions, positions evaluated)."""
        from g4cli.chat.runtime.generate import prefill

        with self.tokenize_prompt(prompt, media) as p:
            return prefill(self, seq or self.sequences[0], p)

    def logits(self, row: int = -1) -> np.ndarray:
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).copy()

    def last_logits(self) -> np.ndarray:
        return self.logits(-1)

    # --- generation ------------------------------------------------------------------------------

    def generate(
        self, turns: list[Turn], sampling: Sampling | None = None, stats: Stats | None = None
    ) -> Iterator[Event]:
        """Stream the answer to the conversation's last user turn (on the first sequence)."""
        from g4cli.chat.runtime.generate import answer_turns

        return answer_turns(self, self.sequences[0], turns, sampling or Sampling(), stats)

    def reset(self) -> None:
        for seq in self.sequences:
            seq.clear()

    def close(self) -> None:
        if getattr(self, "drafter", None) is not None:  # it reads this context: freed first
            self.drafter.close()
            self.drafter = None
        for attr, free in (
            ("_batch", llama_cpp.llama_batch_free),
            ("_mtmd", mtmd.mtmd_free),
            ("ctx", llama_cpp.llama_free),
            ("model", llama_cpp.llama_model_free),
        ):
            if getattr(self, attr) is not None:
                free(getattr(self, attr))
                setattr(self, attr, None)

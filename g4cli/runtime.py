"""The runtime: a Gemma 4 GGUF (+ projector) in llama.cpp; conversations in, streamed text out.

llama-cpp-python loads the model and context; the rest is driven through its low-level
bindings: the chat template is rendered in jinja2's sandbox, images and audio go through
llama.cpp's ``mtmd`` (tokenize -> encode -> decode, media kept in the KV cache between turns),
and text is decoded and sampled token by token (what is already in the KV cache is reused).
llama-cpp-python's ``Gemma4ChatHandler`` is not used: it handles image parts only and refuses an
audio-only projector.
"""

from __future__ import annotations

import ctypes
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_cpp  # before numpy: a numpy-first import crashed a CUDA build at model load
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from g4cli import chat_template
from g4cli.catalog import DEFAULT_CTX  # shared with the fit estimate of g4 pull
from g4cli.conversation import PLACEHOLDERS, ChannelSplitter, Event, Sampling, Stats, Turn, to_template_messages
from g4cli.errors import CapabilityError, RuntimeFailure
from g4cli.media import AUDIO_TOKENS_PER_SECOND, Media

ANSWER_RESERVE = 1024  # tokens kept free for the answer when fitting a long conversation
MARKER = "<__media__>"  # mtmd's media marker
_CONTROL_TEXT = {"<|channel>": "open", "<channel|>": "close"}
_SLOT = re.compile("|".join(map(re.escape, PLACEHOLDERS)))


@dataclass(frozen=True)
class MediaUnit:
    """A media chunk in the KV cache, identified by content (sha256 + piece)."""

    key: str
    n_tokens: int
    n_pos: int


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
    LOG.install(LOG.echo)
    caps = mtmd.mtmd_get_cap_from_file(os.fsencode(mmproj))
    return {name for name, ok in (("vision", caps.inp_vision), ("audio", caps.inp_audio)) if ok}


def _trained_context(gguf: Path) -> int | None:
    """``<arch>.context_length`` from a GGUF header (None if unreadable: the load will say why)."""
    from g4cli.ggufmeta import read_values

    try:
        value = read_values(gguf, {"{arch}.context_length"}).get("{arch}.context_length")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) else None


class _Log:
    """llama.cpp's log lines, kept instead of printed (echoed with G4_LLAMA_LOG=1, quoted on failure).

    One instance for the process: llama.cpp keeps the callback pointer for good, so the ctypes
    callback must never be garbage-collected.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.echo = False

        @llama_cpp.llama_log_callback
        def on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            self.lines.append(text.decode("utf-8", "replace"))
            del self.lines[:-1000]
            if self.echo:
                os.write(2, text)

        self.callback = on_log

    def install(self, echo: bool) -> _Log:
        self.echo = echo
        llama_cpp.llama_log_set(self.callback, ctypes.c_void_p(0))
        mtmd.mtmd_log_set(self.callback, ctypes.c_void_p(0))
        mtmd.mtmd_helper_log_set(self.callback, ctypes.c_void_p(0))
        return self

    def last_error(self) -> str:
        for line in reversed(self.lines):
            if "error" in line.lower() or "failed" in line.lower():
                return line.strip()
        return ""


LOG = _Log()


class Model:
    """A loaded model. ``generate(turns, sampling)`` yields ``Event``s."""

    def __init__(
        self,
        gguf: Path | str,
        mmproj: Path | str | None = None,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        n_batch: int = 512,
    ) -> None:
        self.path = Path(gguf)
        self.mmproj = Path(mmproj) if mmproj else None
        if n_ctx is not None and n_ctx < 16:
            raise RuntimeFailure(f"context size {n_ctx} is too small")
        self._log = LOG.install(bool(os.environ.get("G4_LLAMA_LOG")))  # llama.cpp's own log, on request
        t0 = time.perf_counter()
        threads = n_threads or os.cpu_count() or 1
        if n_ctx is None:  # the default, but never beyond what the model was trained for
            n_ctx = min(DEFAULT_CTX, _trained_context(self.path) or DEFAULT_CTX)
        try:
            self.llm = llama_cpp.Llama(
                str(self.path),
                n_ctx=n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=n_gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as e:
            detail = self._log.last_error() or str(e)
            raise RuntimeFailure(f"{self.path}: cannot load the model ({detail})") from None
        llama_cpp.llama_log_set(self._log.callback, ctypes.c_void_p(0))  # Llama() installs its own
        self.ctx = self.llm.ctx
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.n_ctx = llama_cpp.llama_n_ctx(self.ctx)
        self.n_batch = n_batch
        self.template = self.llm.metadata.get("tokenizer.chat_template")
        self._mtmd = None
        self.capabilities: set[str] = set()
        if self.mmproj is not None:
            self._init_mtmd(threads, n_gpu_layers > 0)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self._units: list[int | MediaUnit] = []  # what the KV cache holds, in order
        self.n_past = 0
        self._control = {self._single_token(text): kind for text, kind in _CONTROL_TEXT.items()}
        self._control.pop(None, None)
        self._bos_text = self._piece(llama_cpp.llama_vocab_bos(self.vocab), special=True) or "<bos>"
        self._warm_up()
        self.load_s = time.perf_counter() - t0

    def _warm_up(self) -> None:
        """What llama.cpp's own CLI does at load: one decode (thread pool, compute graph) and the
        chat template compiled, so that the first answer does not pay for them."""
        if self.template:
            chat_template.compile_template(self.template)
        self._decode_tokens([llama_cpp.llama_vocab_bos(self.vocab)], logits_last=True)
        self.reset()

    def _init_mtmd(self, threads: int, gpu: bool) -> None:
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = gpu
        params.n_threads = threads
        params.print_timings = False
        params.warmup = False
        self._mtmd = mtmd.mtmd_init_from_file(os.fsencode(self.mmproj), self.llm.model, params)
        if not self._mtmd:
            detail = self._log.last_error() or "not a projector for this model?"
            raise RuntimeFailure(f"{self.mmproj}: cannot load the projector ({detail})")
        if mtmd.mtmd_support_vision(self._mtmd):
            self.capabilities.add("vision")
        if mtmd.mtmd_support_audio(self._mtmd):
            self.capabilities.add("audio")

    # --- tokens and text -----------------------------------------------------------------------

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def _single_token(self, text: str) -> int | None:
        ids = self.tokenize(text)
        return ids[0] if len(ids) == 1 else None

    def _piece(self, token: int, special: bool = False) -> str:
        return self._piece_bytes(token, special).decode("utf-8", "replace")

    def _piece_bytes(self, token: int, special: bool = False) -> bytes:
        buf = ctypes.create_string_buffer(64)
        n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[: max(n, 0)]

    def render(self, turns: list[Turn], think: bool = False) -> str:
        """The prompt text (media as mtmd markers), rendered by the model's own chat template."""
        if not self.template:
            raise RuntimeFailure(f"{self.path}: the GGUF has no chat template")
        text = chat_template.render(
            self.template,
            to_template_messages(turns),
            add_generation_prompt=True,
            enable_thinking=think,
            bos_token=self._bos_text,
        )
        media = [m for t in turns for m in t.media]
        slots = list(_SLOT.finditer(text))
        if len(slots) != len(media):
            raise RuntimeFailure(f"chat template placed {len(slots)} media slots for {len(media)} attachments")
        out, last = [], 0
        for slot, m in zip(slots, media):  # an audio file split in pieces takes one marker a piece
            out += [text[last : slot.start()], MARKER * max(1, len(m.pieces)) if m.kind == "audio" else MARKER]
            last = slot.end()
        out.append(text[last:])
        return "".join(out)

    # --- prompt -> units -----------------------------------------------------------------------

    def require(self, capability: str, detail: str = "") -> None:
        """Refuse up front what the model cannot take ("vision" or "audio")."""
        require(capability, self.capabilities, self.path.name, self.mmproj, detail)

    def check_media(self, media: list[Media]) -> None:
        """Refuse attachments the model cannot take, before any work."""
        for m in media:
            self.require("vision" if m.kind == "image" else "audio", m.name)

    def _bitmaps(self, media: list[Media]) -> list:
        bitmaps = []
        for m in media:
            if m.kind == "image":
                h, w = m.pixels.shape[:2]
                data = np.ascontiguousarray(m.pixels).tobytes()
                bmp = mtmd.mtmd_bitmap_init(w, h, (ctypes.c_ubyte * len(data)).from_buffer_copy(data))
                mtmd.mtmd_bitmap_set_id(bmp, m.sha256.encode())
                bitmaps.append(bmp)
                continue
            for i, piece in enumerate(m.pieces):
                pcm = np.ascontiguousarray(piece, dtype=np.float32)
                bmp = mtmd.mtmd_bitmap_init_from_audio(len(pcm), pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
                mtmd.mtmd_bitmap_set_id(bmp, f"{m.sha256}:{i}".encode())
                bitmaps.append(bmp)
        return bitmaps

    def _tokenize_prompt(self, prompt: str, media: list[Media]):
        """(units, chunks handle or None, {unit index: chunk}) for a rendered prompt."""
        if self._mtmd is None:
            if media:
                self.check_media(media)
            return self.tokenize(prompt), None, {}
        bitmaps = self._bitmaps(media)
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            data = prompt.encode("utf-8")
            text = mtmd.mtmd_input_text()
            text.text, text.text_len, text.add_special, text.parse_special = data, len(data), False, True
            arr = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            rc = mtmd.mtmd_tokenize(self._mtmd, chunks, ctypes.byref(text), arr, len(bitmaps))
            if rc != 0:
                raise RuntimeFailure(f"cannot tokenize the prompt with its media (mtmd error {rc})")
        except BaseException:
            mtmd.mtmd_input_chunks_free(chunks)
            raise
        finally:
            for bmp in bitmaps:
                mtmd.mtmd_bitmap_free(bmp)
        units: list[int | MediaUnit] = []
        media_chunks = {}
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            chunk = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(chunk) == 0:  # MTMD_INPUT_CHUNK_TYPE_TEXT
                n = ctypes.c_size_t(0)
                toks = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
                units.extend(toks[j] for j in range(n.value))
            else:
                key = (mtmd.mtmd_input_chunk_get_id(chunk) or b"").decode()
                media_chunks[len(units)] = chunk
                units.append(
                    MediaUnit(key, mtmd.mtmd_input_chunk_get_n_tokens(chunk), mtmd.mtmd_input_chunk_get_n_pos(chunk))
                )
        return units, chunks, media_chunks

    @staticmethod
    def _n_pos(units: list[int | MediaUnit]) -> int:
        return sum(u.n_pos if isinstance(u, MediaUnit) else 1 for u in units)

    # --- evaluation ------------------------------------------------------------------------------

    def _forget_from(self, keep: int) -> None:
        """Drop everything after the first ``keep`` units from the KV cache."""
        self._units = self._units[:keep]
        n_past = self._n_pos(self._units)
        mem = llama_cpp.llama_get_memory(self.ctx)
        if not llama_cpp.llama_memory_seq_rm(mem, 0, n_past, -1):
            llama_cpp.llama_memory_clear(mem, True)
            self._units, n_past = [], 0
        self.n_past = n_past

    def _decode_tokens(self, tokens: list[int], logits_last: bool) -> None:
        b = self._batch
        for start in range(0, len(tokens), self.n_batch):
            part = tokens[start : start + self.n_batch]
            b.n_tokens = len(part)
            for j, tok in enumerate(part):
                b.token[j] = tok
                b.pos[j] = self.n_past + j
                b.n_seq_id[j] = 1
                b.seq_id[j][0] = 0
                b.logits[j] = False
            if logits_last and start + len(part) == len(tokens):
                b.logits[len(part) - 1] = True
            rc = llama_cpp.llama_decode(self.ctx, b)
            if rc != 0:
                raise RuntimeFailure(f"llama.cpp could not decode (code {rc}): {self._log.last_error()}")
            self.n_past += len(part)
            self._units.extend(part)

    def _eval_media(self, chunk, unit: MediaUnit, logits_last: bool) -> None:
        new_n_past = llama_cpp.llama_pos(0)
        rc = mtmd.mtmd_helper_eval_chunk_single(
            self._mtmd, self.ctx, chunk, self.n_past, 0, self.n_batch, logits_last, ctypes.byref(new_n_past)
        )
        if rc != 0:
            raise RuntimeFailure(f"llama.cpp could not encode the media (code {rc}): {self._log.last_error()}")
        self.n_past = new_n_past.value
        self._units.append(unit)

    def eval_prompt(self, prompt: str, media: list[Media]) -> tuple[int, int]:
        """Bring the KV cache to the prompt, reusing its common prefix; (prompt tokens, evaluated)."""
        units, chunks, media_chunks = self._tokenize_prompt(prompt, media)
        try:
            if self._n_pos(units) >= self.n_ctx:
                raise RuntimeFailure(
                    f"the prompt ({self._n_pos(units)} tokens) does not fit the context ({self.n_ctx})"
                )
            common = 0
            for a, b in zip(self._units, units):
                if a != b:
                    break
                common += 1
            if common == len(units):  # identical prompt: re-evaluate the last unit for fresh logits
                common -= 1
            self._forget_from(common)
            start = len(self._units)
            i = start
            while i < len(units):
                if isinstance(units[i], MediaUnit):
                    self._eval_media(media_chunks[i], units[i], logits_last=i == len(units) - 1)
                    i += 1
                    continue
                j = i
                while j < len(units) and not isinstance(units[j], MediaUnit):
                    j += 1
                self._decode_tokens(units[i:j], logits_last=j == len(units))
                i = j
            return self._n_pos(units), self._n_pos(units[start:])
        finally:
            if chunks is not None:
                mtmd.mtmd_input_chunks_free(chunks)

    def last_logits(self) -> np.ndarray:
        n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        ptr = llama_cpp.llama_get_logits_ith(self.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()

    # --- generation ------------------------------------------------------------------------------

    def _sampler(self, s: Sampling):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if s.repeat_penalty != 1.0:
            n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
            add(chain, llama_cpp.llama_sampler_init_penalties(n_vocab, 64, s.repeat_penalty, 0.0, 0.0))
        if s.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if s.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            add(chain, llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")
        add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def fit(self, turns: list[Turn], sampling: Sampling) -> tuple[list[Turn], int, str]:
        """Drop the oldest turns (never the system prompt or the last one) until the prompt fits.

        Returns the turns kept, how many were dropped, and the rendered prompt.
        """
        reserve = min(sampling.max_tokens or ANSWER_RESERVE, ANSWER_RESERVE, self.n_ctx // 4)
        turns = list(turns)
        dropped = 0
        while True:
            prompt = self.render(turns, sampling.think)
            n = self.count_tokens(prompt, [m for t in turns for m in t.media])
            if n + reserve <= self.n_ctx:
                return turns, dropped, prompt
            first = 1 if turns and turns[0].role == "system" else 0
            if len(turns) - first <= 1:
                raise RuntimeFailure(
                    f"the message ({n} tokens) does not fit the context ({self.n_ctx} tokens); use --ctx to enlarge it"
                )
            del turns[first]
            dropped += 1

    def count_tokens(self, prompt: str, media: list[Media]) -> int:
        if self._mtmd is None:
            return len(self.tokenize(prompt))
        text_only = prompt.replace(MARKER, "")
        n = len(self.tokenize(text_only))
        for m in media:  # an estimate that errs on the large side
            if m.kind == "audio":
                n += int(m.seconds * AUDIO_TOKENS_PER_SECOND) + 2 * len(m.pieces) + 2
            else:
                n += 1120 + 2
        return n

    def generate(self, turns: list[Turn], sampling: Sampling | None = None) -> Iterator[Event]:
        """Stream the answer to the conversation's last user turn."""
        s = sampling or Sampling()
        media = [m for t in turns for m in t.media]
        self.check_media(media)
        stats = Stats(load_s=self.load_s)
        t0 = time.perf_counter()
        turns, stats.dropped_turns, prompt = self.fit(turns, s)
        if stats.dropped_turns:
            yield Event("notice", f"context full: dropped the {stats.dropped_turns} oldest turn(s)")
        stats.prompt_tokens, stats.prompt_eval_tokens = self.eval_prompt(prompt, [m for t in turns for m in t.media])
        stats.prompt_s = time.perf_counter() - t0
        chain = self._sampler(s)
        splitter = ChannelSplitter()
        finish = "stop"
        t_first = None
        try:
            limit = s.max_tokens if s.max_tokens is not None else self.n_ctx
            while True:
                if stats.gen_tokens >= limit:
                    finish = "length"
                    break
                tok = llama_cpp.llama_sampler_sample(chain, self.ctx, -1)
                if t_first is None:
                    t_first = time.perf_counter()
                    stats.ttft_s = t_first - t0
                stats.gen_tokens += 1
                if llama_cpp.llama_vocab_is_eog(self.vocab, tok):
                    break
                control = self._control.get(tok)
                yield from splitter.feed(control, b"" if control else self._piece_bytes(tok))
                if self.n_past >= self.n_ctx:
                    finish = "context"
                    break
                self._decode_tokens([tok], logits_last=True)
            yield from splitter.finish()
        finally:
            llama_cpp.llama_sampler_free(chain)
            if t_first is not None:
                stats.gen_s = time.perf_counter() - t_first
        yield Event("done", finish=finish, stats=stats)

    def media_tokens(self, media: Media) -> list[int]:
        """How many tokens each piece of an attachment becomes (mtmd's own sizing)."""
        self.check_media([media])
        units, chunks, _ = self._tokenize_prompt(MARKER * max(1, len(media.pieces)), [media])
        mtmd.mtmd_input_chunks_free(chunks)
        return [u.n_tokens for u in units if isinstance(u, MediaUnit)]

    def encode_media(self, media: Media) -> np.ndarray:
        """The projector's output embeddings for one attachment (rows = media tokens)."""
        self.check_media([media])
        units, chunks, media_chunks = self._tokenize_prompt(MARKER * max(1, len(media.pieces)), [media])
        try:
            out = []
            n_embd = llama_cpp.llama_model_n_embd(self.llm.model)
            for i, chunk in media_chunks.items():
                if mtmd.mtmd_encode_chunk(self._mtmd, chunk) != 0:
                    raise RuntimeFailure(f"{media.name}: the projector failed to encode it")
                n = units[i].n_tokens
                ptr = mtmd.mtmd_get_output_embd(self._mtmd)
                out.append(np.ctypeslib.as_array(ptr, shape=(n * n_embd,)).reshape(n, n_embd).copy())
            return np.concatenate(out)
        finally:
            mtmd.mtmd_input_chunks_free(chunks)

    def reset(self) -> None:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        self._units, self.n_past = [], 0

    def close(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._mtmd is not None:
            mtmd.mtmd_free(self._mtmd)
            self._mtmd = None
        self.llm.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

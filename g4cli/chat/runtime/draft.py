"""An assistant drafter (``gemma4-assistant`` GGUF) drafting tokens for a loaded target model.

llama.cpp runs the drafter inside libllama (``src/models/gemma4-assistant.cpp``): its context
is made with ``ctx_type = LLAMA_CONTEXT_TYPE_MTP`` and ``ctx_other`` = the target's context, and
it reads the target's KV cache (the target's last sliding and last full layer,
``src/llama-model.cpp:2809-2837``) without writing to it, so only the target's cache is ever
rolled back. Each draft step takes one token and the hidden state before it, at one fixed
position (the next free one), and gives logits and the next hidden state.

The target hands over its post-final-norm hidden state with ``llama_set_embeddings_nextn`` /
``llama_get_embeddings_nextn_ith``, which llama-cpp-python binds only in ``llama_cpp_ext``
("not part of the stable public API"): this module is the one place that imports it, and only
for the versions it was written against.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import llama_cpp  # before numpy: a numpy-first import crashed a CUDA build at model load
import numpy as np

from g4cli.chat.runtime.handle import Handle
from g4cli.chat.runtime.model import KV_TYPES
from g4cli.errors import DraftError, DraftUnavailable

if TYPE_CHECKING:
    from g4cli.chat.runtime.model import Model

ARCH = "gemma4-assistant"
TESTED_VERSIONS = ("0.3.36",)  # llama_cpp_ext and the MTP context as this module uses them
_NEEDED = ("llama_batch_ext_init", "llama_batch_ext_set_embd_token", "llama_process", "llama_model_n_embd_out")


def ext() -> Any:
    """llama-cpp-python's ``llama_cpp_ext`` (set/get_embeddings_nextn), checked; else ``DraftUnavailable``."""
    version = getattr(llama_cpp, "__version__", "?")
    if version not in TESTED_VERSIONS:
        raise DraftUnavailable(f"llama-cpp-python {version}: drafting is written for {', '.join(TESTED_VERSIONS)}")
    try:
        from llama_cpp import llama_cpp_ext
    except (ImportError, AttributeError) as e:  # AttributeError: a symbol missing from libllama
        raise DraftUnavailable(f"llama-cpp-python {version} lacks the drafting API ({e})") from None
    missing = [n for n in _NEEDED if not hasattr(llama_cpp, n)]
    if missing or not hasattr(llama_cpp, "LLAMA_CONTEXT_TYPE_MTP"):
        raise DraftUnavailable(f"llama-cpp-python {version} lacks {', '.join(missing) or 'MTP contexts'}")
    return llama_cpp_ext


def attach(model: Model, path: Path | str, n_max: int = 3) -> Drafter:
    """Load the drafter at ``path`` for ``model``: its answers are drafted from now on
    (``generate.answer_turns``), ``n_max`` tokens a round at most."""
    if n_max < 1:
        raise DraftError(f"--draft-max must be at least 1, not {n_max}")
    drafter = Drafter(model, path)
    model.drafter, model.draft_max = drafter, n_max
    return drafter


def check_drafter(path: Path, n_embd_target: int) -> None:
    """Refuse, from the header alone, a GGUF that is not a drafter for a model of this width."""
    from g4cli.models.ggufmeta import read_values

    try:
        values = read_values(path, {"general.architecture", f"{ARCH}.embedding_length_out"})
    except (OSError, ValueError) as e:
        raise DraftError(f"{path}: not a GGUF file ({e})") from None
    arch = values.get("general.architecture")
    if arch != ARCH:
        raise DraftError(f"{path}: a {arch or 'unknown'} model, not a drafter (arch {ARCH})")
    width = values.get(f"{ARCH}.embedding_length_out")
    if width != n_embd_target:
        raise DraftError(f"{path}: a drafter for a model of hidden size {width}, this model's is {n_embd_target}")


class Drafter(Handle):
    """The drafter's model and MTP context, bound to ``target``'s context; ``draft`` proposes tokens."""

    def __init__(self, target: Model, path: Path | str) -> None:
        self.ext = ext()
        self.path = Path(path)
        self.target = target
        self.n_embd = llama_cpp.llama_model_n_embd_out(target.model)
        check_drafter(self.path, self.n_embd)
        self.model = self.ctx = self.batch = None
        try:
            self._load()
        except BaseException:
            self.close()
            raise
        # per sequence of the target: the hidden state its next draft starts from
        self.hidden = np.zeros((len(target.sequences), self.n_embd), dtype=np.float32)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))

    def _load(self) -> None:
        t = self.target
        mp = llama_cpp.llama_model_default_params()
        if t.model is None or not self.path.is_file():
            raise DraftUnavailable(f"{self.path}: no such file")
        self.model = llama_cpp.llama_model_load_from_file(os.fsencode(self.path), mp)
        if not self.model:
            raise DraftUnavailable(f"{self.path}: cannot load the drafter ({t._log.last_error() or 'out of memory?'})")
        cp = llama_cpp.llama_context_default_params()
        cp.ctx_type = llama_cpp.LLAMA_CONTEXT_TYPE_MTP
        cp.ctx_other = t.ctx  # the KV cache it reads
        cp.n_ctx, cp.n_seq_max = t.n_ctx, len(t.sequences)
        # one token per step; llama.cpp reserves an output row per sequence (llama-context.cpp:2120)
        cp.n_batch = cp.n_ubatch = len(t.sequences)
        cp.n_threads = cp.n_threads_batch = t.threads
        cp.flash_attn_type = t.flash_attn
        cp.type_k = cp.type_v = KV_TYPES[t.kv_type]  # the mirror views the target's cache as is
        cp.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, cp)
        if not self.ctx:
            detail = t._log.last_error() or "out of memory?"
            raise DraftUnavailable(f"{self.path}: cannot create the drafter's context ({detail})")
        # target: a hidden row for every batch token (the verify batch's rows); drafter: its output row
        self.ext.llama_set_embeddings_nextn(t.ctx, True, False)
        self.ext.llama_set_embeddings_nextn(self.ctx, True, True)
        self.batch = llama_cpp.llama_batch_ext_init(self.ctx)

    def take_hidden(self, row: int, seq_id: int = 0) -> None:
        """Start sequence ``seq_id``'s next draft from the target's hidden state at ``row`` of its
        last batch."""
        self._copy(self.ext.llama_get_embeddings_nextn_ith(self.target.ctx, row), seq_id)

    def _copy(self, ptr: Any, seq_id: int) -> None:
        if not ptr:
            raise DraftUnavailable("llama.cpp returned no hidden state")
        self.hidden[seq_id] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))

    def step(self, token: int, pos: int, seq_id: int = 0) -> np.ndarray:
        """One drafter pass: ``token`` at ``pos`` in sequence ``seq_id``, from its hidden state;
        its logits (the hidden state advances)."""
        b = self.batch
        llama_cpp.llama_batch_ext_clear(b)
        i = llama_cpp.llama_batch_ext_add_token(b, seq_id, token)
        position = llama_cpp.llama_pos(pos)
        llama_cpp.llama_batch_ext_set_pos(b, i, ctypes.byref(position))
        h = self.hidden[seq_id]
        row = llama_cpp.llama_embd(h.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), 1, self.n_embd)
        llama_cpp.llama_batch_ext_set_embd_token(b, i, row)
        llama_cpp.llama_batch_ext_set_output_logits(b, i, True)
        rc = llama_cpp.llama_process(self.ctx, llama_cpp.LLAMA_PROCESS_TYPE_DECODE, b)
        if rc != 0:
            raise DraftUnavailable(f"the drafter could not decode (code {rc})")
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, 0), shape=(self.n_vocab,)).copy()
        self._copy(self.ext.llama_get_embeddings_nextn_ith(self.ctx, 0), seq_id)
        return logits

    def draft(self, token: int, pos: int, n: int, seq_id: int = 0) -> list[int]:
        """Up to ``n`` greedy draft tokens after ``token`` (which goes at ``pos``), every step at
        ``pos``: the assistant is trained that way (transformers' candidate_generator.py:1309-1350,
        llama.cpp's speculative.cpp:1697-1702)."""
        out: list[int] = []
        for _ in range(n):
            token = int(np.argmax(self.step(token, pos, seq_id)))
            out.append(token)
        return out

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            llama_cpp.llama_batch_ext_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None) is not None:
            if self.target.ctx is not None:  # the target goes back to its usual outputs
                self.ext.llama_set_embeddings_nextn(self.target.ctx, False, False)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None) is not None:
            llama_cpp.llama_model_free(self.model)
            self.model = None

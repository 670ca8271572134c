"""Sampling chains: ``Sampling`` settings -> a llama.cpp sampler chain (freed with the object)."""

from __future__ import annotations

import ctypes
import os
import re
import sys
import tempfile
import threading
import weakref
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import llama_cpp  # before numpy: a numpy-first import crashed a CUDA build at model load
import numpy as np

from g4cli.chat.runtime.handle import Handle
from g4cli.chat.runtime.llama_log import LOG
from g4cli.chat.runtime.model import suppress_tokens
from g4cli.chat.settings import Sampling
from g4cli.errors import RuntimeFailure, UsageError

if TYPE_CHECKING:
    from g4cli.chat.runtime.model import Model

PENALTY_WINDOW = 64  # tokens the repetition penalty looks back over
_STDERR = threading.Lock()  # fd 2 is borrowed while llama.cpp parses a grammar
TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)  # llama_token_data
_GUARDS: weakref.WeakKeyDictionary[Any, GrammarGuard] = weakref.WeakKeyDictionary()


class Sampler(Handle):
    """A llama.cpp sampler chain for one answer: penalties, top-k, top-p, min-p, temperature, dist
    (or greedy at temperature 0). The model's suppress tokens (``tokenizer.ggml.suppress_tokens``,
    the 12B's) are never picked: a -inf logit bias first in the chain, as llama.cpp's
    common/sampling.cpp adds it (``suppress`` overrides what the vocabulary says).

    With ``sampling.grammar`` (GBNF, root rule ``root``) every token is checked by llama.cpp's
    grammar sampler, as llama.cpp's common/sampling.cpp does by default: the chain picks from all
    the tokens; only when the grammar rejects the pick is it made again with the grammar applied
    first, so that the chain (greedy included) only sees what the grammar allows. The pick is
    always grammatical, greedy gives exactly the grammar-first pick, and the grammar's cost (it
    matches every token of the vocabulary: 262k for Gemma 4) is paid only on a rejection.
    End-of-generation tokens pass the grammar only where it is complete, and nothing else does
    there: a constrained answer ends right after its last character. The model's ``guard``
    (``grammar_guard``) keeps the text shown the text the grammar checked.
    """

    def __init__(
        self, vocab: Any, sampling: Sampling, guard: GrammarGuard | None = None, suppress: list[int] | None = None
    ) -> None:
        s = sampling
        self.grammar = grammar_sampler(vocab, s.grammar) if s.grammar is not None else None
        self.chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = partial(llama_cpp.llama_sampler_chain_add, self.chain)  # the chain owns (and frees) what is added
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        guard = guard if self.grammar is not None else None
        hidden = guard.hidden_for(s.grammar) if guard is not None and s.grammar is not None else []
        banned = list(dict.fromkeys([*hidden, *(suppress_tokens(vocab) if suppress is None else suppress)]))
        if banned:
            bias = (llama_cpp.llama_logit_bias * len(banned))(*((t, float("-inf")) for t in banned))
            add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(banned), bias))
        self.after = guard.after if guard is not None else {}
        self.masked: list[int] = []  # what the last token forbids next
        if self.grammar is not None:
            self.candidates = np.empty(n_vocab, dtype=TOKEN_DATA)
            self.ids = np.arange(n_vocab, dtype=np.intc)
        if s.repeat_penalty != 1.0:
            add(llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_WINDOW, s.repeat_penalty, 0.0, 0.0))
        if s.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if s.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            add(llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: Any, row: int = -1) -> int:
        """Sample from the logits of output ``row`` (and accept the token into the chain)."""
        if self.grammar is None:
            return llama_cpp.llama_sampler_sample(self.chain, ctx, row)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, row), shape=self.ids.shape)
        tok = self._pick(logits, grammar_first=False)
        if not self._grammatical(tok):
            tok = self._pick(logits, grammar_first=True)
            if not self._grammatical(tok):  # accepting it would abort the process inside llama.cpp
                raise RuntimeFailure("the grammar allows no token here")
        llama_cpp.llama_sampler_accept(self.grammar, tok)
        llama_cpp.llama_sampler_accept(self.chain, tok)
        self.masked = self.after.get(tok, [])
        return tok

    def _pick(self, logits: np.ndarray, grammar_first: bool) -> int:
        c = self.candidates
        c["id"], c["logit"], c["p"] = self.ids, logits, 0.0
        c["logit"][self.masked] = -np.inf
        cur = llama_cpp.llama_token_data_array(c.ctypes.data_as(llama_cpp.llama_token_data_p), len(c), -1, False)
        if grammar_first:
            llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(cur))
        llama_cpp.llama_sampler_apply(self.chain, ctypes.byref(cur))
        return int(cur.data[cur.selected].id)

    def _grammatical(self, tok: int) -> bool:
        one = llama_cpp.llama_token_data(tok, 0.0, 0.0)
        cur = llama_cpp.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(cur))
        return one.logit != -np.inf

    def close(self) -> None:
        for name in ("grammar", "chain"):
            if getattr(self, name, None) is not None:
                llama_cpp.llama_sampler_free(getattr(self, name))
                setattr(self, name, None)


def grammar_sampler(vocab: Any, gbnf: str) -> Any:
    """llama.cpp's grammar sampler for ``gbnf`` (the caller frees it).

    A grammar that does not parse is a ``UsageError``: llama.cpp prints why (and the whole
    grammar) straight to stderr, so fd 2 is borrowed for the parse and that becomes one line.
    """
    if not gbnf.strip():
        raise UsageError("invalid grammar: it is empty")
    with _STDERR, tempfile.TemporaryFile() as printed:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(printed.fileno(), 2)
        try:
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        printed.seek(0)
        text = printed.read()
    if sampler:
        if text:  # someone else's output, in the meantime
            os.write(2, text)
        return sampler
    found = re.search(rb"error parsing grammar: ([^\n]*)", text)
    logged = [line.strip() for line in LOG.lines[-3:] if "grammar" in line and "failed to parse" not in line]
    detail = found.group(1).decode("utf-8", "replace") if found else (logged[-1] if logged else "")
    raise UsageError(f"invalid grammar: {detail[:160] or 'llama.cpp cannot parse it'}")


@dataclass(frozen=True)
class GrammarGuard:
    """What keeps the text of a grammar-constrained answer the text the grammar checked.

    llama.cpp's grammar matches a control token as its text (``<unused5>``, ``<|turn>``) where
    the answer shows nothing: those are ``hidden``. ``<|channel>``/``<channel|>`` (``channel``)
    switch the answer to the thinking channel: hidden too, unless the grammar names them (a
    tool-call grammar with a thinking block does). The grammar also decodes byte tokens without
    checking UTF-8 beyond sequence lengths, so bytes that never occur in UTF-8 (C0, C1, F5-FF)
    are hidden and, after a byte that restricts the next one (E0, ED, F0, F4), the continuation
    bytes that would make an overlong form, a surrogate or a code point above U+10FFFF are
    masked (``after``): otherwise ``E0 80 A2`` is a closing quote to the grammar and three U+FFFD
    in the answer. End-of-generation tokens are never hidden: they end a complete answer.
    """

    hidden: list[int]
    channel: dict[int, str]
    after: dict[int, list[int]]

    def hidden_for(self, gbnf: str) -> list[int]:
        return self.hidden + [t for t, text in self.channel.items() if text not in gbnf and f"<[{t}]>" not in gbnf]


# lead byte -> the continuation bytes UTF-8 forbids right after it (RFC 3629)
UTF8_AFTER = {0xE0: range(0x80, 0xA0), 0xED: range(0xA0, 0xC0), 0xF0: range(0x80, 0x90), 0xF4: range(0x90, 0xC0)}
UTF8_NEVER = {0xC0, 0xC1, *range(0xF5, 0x100)}


def grammar_guard(model: Model) -> GrammarGuard:
    """The model's ``GrammarGuard`` (one scan of the vocabulary per model, then cached)."""
    if model not in _GUARDS:
        special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN
        attr, vocab = llama_cpp.llama_vocab_get_attr, model.vocab
        hidden, channel, byte_token = [], {}, {}
        for t in range(model.n_vocab):
            a = attr(vocab, t)
            if model.control(t) is not None:
                channel[t] = model.piece(t, special=True)
            elif a & special and not model.is_eog(t):
                hidden.append(t)
            elif a & llama_cpp.LLAMA_TOKEN_ATTR_BYTE:  # the only tokens that are not whole UTF-8 text
                piece = model.piece_bytes(t, special=True)
                if len(piece) == 1:
                    byte_token[piece[0]] = t
        hidden += [byte_token[b] for b in sorted(UTF8_NEVER) if b in byte_token]
        after = {
            byte_token[lead]: [byte_token[b] for b in banned if b in byte_token]
            for lead, banned in UTF8_AFTER.items()
            if lead in byte_token
        }
        _GUARDS[model] = GrammarGuard(hidden, channel, after)
    return _GUARDS[model]

"""Sampling chains: ``Sampling`` settings -> a llama.cpp sampler chain (freed with the object)."""

from __future__ import annotations

import os
from typing import Any

import llama_cpp

from g4cli.chat.runtime.handle import Handle
from g4cli.chat.settings import Sampling

PENALTY_WINDOW = 64  # tokens the repetition penalty looks back over


class Sampler(Handle):
    """A llama.cpp sampler chain for one answer: penalties, top-k, top-p, min-p, temperature, dist
    (or greedy at temperature 0)."""

    def __init__(self, vocab: Any, sampling: Sampling) -> None:
        s = sampling
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        self.chain = chain
        add = llama_cpp.llama_sampler_chain_add
        if s.repeat_penalty != 1.0:
            n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
            add(chain, llama_cpp.llama_sampler_init_penalties(n_vocab, PENALTY_WINDOW, s.repeat_penalty, 0.0, 0.0))
        if s.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return
        if s.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(s.top_k))
        if s.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(s.top_p, 1))
        if s.min_p > 0.0:
            add(chain, llama_cpp.llama_sampler_init_min_p(s.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(s.temperature))
        seed = s.seed if s.seed is not None else int.from_bytes(os.urandom(4), "little")
        add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: Any, row: int = -1) -> int:
        """Sample from the logits of output ``row`` (and accept the token into the chain)."""
        return llama_cpp.llama_sampler_sample(self.chain, ctx, row)

    def close(self) -> None:
        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

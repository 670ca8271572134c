"""The drafter's reference: transformers 5.23's ``Gemma4Assistant*`` fed by its Gemma 4 target.

As transformers' ``SinglePositionMultiTokenCandidateGenerator`` drives it
(generation/candidate_generator.py:1309-1350): the target's post-norm hidden state of the last
prompt token and its ``shared_kv_states`` (the last sliding and last full layer's K/V), then
draft steps at one position, each fed the target's embedding of the last token and the
previous step's projected hidden state.

transformers 5.23 cannot build an assistant from its own config: ``Gemma4TextConfig.
kv_sharing_modes`` raises when every layer is KV-shared (no layer produces a cache, which is
what an assistant is). ``patch_kv_sharing`` makes such a config's layers all "reuse", the
behaviour its modeling code is written for (modeling_gemma4.py:1221-1222); and a target
without KV-shared layers (26B, 31B, 12B) stores no ``shared_kv_states`` at all, so its last
layer of each type is made to, as the shared-layer branch of the same property does.

The one place the two differ: on sliding layers transformers' assistant mask
(``create_attention_masks``, a flipped bidirectional window) lets a draft step see the last
W+1 cached tokens, llama.cpp's (a causal window at the draft's position, which holds no cell)
the last W-1. ``sliding_cells`` cuts the reference's sliding K/V to that many cells, so that a
prompt longer than the window compares the rest of the computation.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
from reference import _model

_PATCHED: list[bool] = []


def patch_kv_sharing() -> None:
    from transformers.models.gemma4 import configuration_gemma4 as c4
    from transformers.models.gemma4_unified import configuration_gemma4_unified as cu

    if _PATCHED:
        return
    for cls in (c4.Gemma4TextConfig, cu.Gemma4UnifiedTextConfig):

        def modes(self, _orig=cls.kv_sharing_modes):
            n, types = self.num_hidden_layers, self.layer_types
            if self.num_kv_shared_layers == n:  # an assistant: every layer reads the target's
                return ["reuse"] * n
            if self.num_kv_shared_layers == 0:  # 26B/31B/12B: nothing stored for an assistant either
                last = {t: i for i, t in enumerate(types)}
                return ["store" if last[t] == i else None for i, t in enumerate(types)]
            return _orig.fget(self)

        cls.kv_sharing_modes = property(modes)
    _PATCHED.append(True)


@cache
def assistant(checkpoint: str):
    import torch
    import transformers

    patch_kv_sharing()
    arch = json.loads((Path(checkpoint) / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, arch).from_pretrained(checkpoint, attn_implementation="eager", dtype=torch.float32)
    model.config.use_ordered_embeddings = False  # the full LM head, as llama.cpp computes it
    return model.eval()


def reference_drafts(
    target_dir: Path,
    drafter_dir: Path,
    ids: list[int],
    tokens: list[int],
    *,
    pre_norm: bool = False,
    sliding_cells: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, next hidden) of the drafter for each of ``tokens`` fed in turn after the prompt
    ``ids``, every step at position ``len(ids)``, and the target's hidden state it started from.
    ``pre_norm`` feeds the target's hidden state before its final norm (an injected bug)."""
    import torch

    patch_kv_sharing()  # before the target is built: it decides which of its layers store K/V
    target, drafter = _model(str(target_dir)), assistant(str(drafter_dir))
    seen: list = []  # what goes into the target's final norm
    hook = target.model.language_model.norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            out = target(torch.tensor([ids]), output_hidden_states=True, return_shared_kv_states=True)
    finally:
        hook.remove()
    h = (seen[-1] if pre_norm else out.hidden_states[-1])[:, -1:]
    h0 = out.hidden_states[-1][0, -1].float().numpy()
    kv = dict(out.shared_kv_states)
    if sliding_cells is not None:
        k, v = kv["sliding_attention"]
        kv["sliding_attention"] = (k[:, :, -sliding_cells:], v[:, :, -sliding_cells:])
    with torch.no_grad():
        embed = target.get_input_embeddings()
        pos = torch.tensor([[len(ids)]])
        logits, hidden = [], []
        for tok in tokens:
            x = torch.cat([embed(torch.tensor([[tok]])), h], dim=-1)
            step = drafter(inputs_embeds=x, position_ids=pos, shared_kv_states=kv)
            h = step.last_hidden_state
            logits.append(step.logits[0, -1].float().numpy())
            hidden.append(h[0, -1].float().numpy())
    return np.stack(logits), np.stack(hidden), h0


def router_margin(target_dir: Path, ids: list[int]) -> float:
    """The smallest gap, over every MoE layer and prompt token, between the log-probabilities of
    the router's last chosen expert and its first unchosen one, in transformers (inf: no router).

    A near-tie there is a coin toss between two correct implementations: llama.cpp's rounding
    may pick the other expert, and the K/V the drafter reads then differ by far more than any
    kernel's error (tiny-checkpoints.md)."""
    import torch
    from transformers.models.gemma4.modeling_gemma4 import Gemma4TextRouter

    patch_kv_sharing()  # the target is cached: built as reference_drafts needs it
    target = _model(str(target_dir))
    gaps: list[float] = []

    def record(module, _args, out) -> None:
        top = torch.topk(out[0].float().log(), module.config.top_k_experts + 1, dim=-1).values
        gaps.append(float((top[..., -2] - top[..., -1]).min()))

    hooks = [m.register_forward_hook(record) for m in target.modules() if isinstance(m, Gemma4TextRouter)]
    try:
        with torch.no_grad():
            target(torch.tensor([ids]))
    finally:
        for hook in hooks:
            hook.remove()
    return min(gaps, default=float("inf"))

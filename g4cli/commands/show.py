"""``g4 show``: what a pulled model is, what it can do, and its files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from g4cli.options import JsonOpt

if TYPE_CHECKING:
    from g4cli.models.store import ModelEntry


def show(
    name: Annotated[str, typer.Argument(metavar="NAME", help="A pulled model: e4b, e4b:q8_0, org/repo.")],
    json: JsonOpt = False,
) -> None:
    """Show a pulled model: architecture, layers, context, PLE and experts, quant mix, files.

    Examples:

    \b
      g4 show e4b
      g4 show 26b:q8_0 --json
    """
    import json as jsonlib

    from g4cli.models import store
    from g4cli.render import out

    e = store.resolve(name)
    if json:
        out(jsonlib.dumps({**e.manifest, "tag": e.tag, "path": str(e.dir)}, indent=2) + "\n")
        return
    out("".join(f"{k:<14}{v}\n" for k, v in lines(e)))


def lines(e: ModelEntry) -> list[tuple[str, str]]:
    """(label, text) rows of ``g4 show``."""
    from g4cli.render import human_bytes as h

    m = e.manifest
    a, src, mem = m.get("architecture", {}), m.get("source", {}), m.get("memory", {})
    rows = [("model", e.tag)]
    if src.get("repo"):
        rows.append(("source", f"{src['repo']} @ {src.get('commit', '')[:7]} ({src.get('revision', '')})"))
    elif src.get("path"):
        rows.append(("source", src["path"]))
    if a:
        kv, hd = a["kv_heads"], a["head_dim"]
        layers = f"{a['sliding_layers']} sliding (window {a['sliding_window']}) + {a['full_layers']} full layers"
        heads = f"{a['heads']} heads, KV heads {kv['sliding']}/{kv['full']}, head dim {hd['sliding']}/{hd['full']}"
        rows += [
            ("architecture", f"{a['arch']}, {a['layers']} layers, embedding {a['embedding']}, vocab {a['vocab']}"),
            ("attention", f"{layers}; {heads} (sliding/full)"),
            ("context", f"{a['context_length']} (g4 chat default {mem.get('ctx', '')})"),
        ]
        if a["kv_shared_layers"]:
            rows.append(("kv sharing", f"the last {a['kv_shared_layers']} layers reuse earlier layers' KV cache"))
        rows.append(("ple", f"{a['ple_dim']} per layer, table {h(mem.get('ple', 0))}" if a["ple_dim"] else "none"))
        rows.append(("experts", f"{a['experts']}, {a['experts_used']} active per token" if a["experts"] else "none"))
    rows.append(("capabilities", " ".join(e.capabilities) or "text"))
    mix = m.get("quant_mix", {})
    if mix:
        parts = (f"{t}: {v['tensors']} tensor{'s' * (v['tensors'] > 1)}, {h(v['bytes'])}" for t, v in mix.items())
        rows.append(("quant mix", "; ".join(parts)))
    if mem:
        media = f"; +{h(mem['projector'])} with images or audio" if mem.get("projector") else ""
        media += f"; drafter {h(mem['drafter'])} included" if mem.get("drafter") else ""
        rows.append(("memory", f"{h(mem['total'])} at {mem['ctx']} context (KV cache {h(mem['kv_cache'])}{media})"))
    for role, f in m.get("files", {}).items():
        label = {"drafter": "draft"}.get(role, role)  # within the label column
        rows.append((f"file ({label})", f"{f['name']} {h(f['size'])} sha256 {f['sha256']}"))
    rows.append(("path", str(e.dir)))
    rows.append(("offload", offload_line(e)))
    return rows


def offload_line(e: ModelEntry) -> str:
    """Where ``g4 chat`` would put the layers on this machine now (--gpu-layers auto)."""
    from g4cli.chat.load import plan_offload
    from g4cli.chat.select import Choice
    from g4cli.chat.settings import LoadOptions

    try:
        p = plan_offload(Choice(e.tag, e.gguf, e.mmproj, e), LoadOptions())
    except Exception as err:  # g4 show describes; a plan that cannot be made is one more fact
        return f"cannot plan ({err})"
    return p.summary() if p is not None else "CPU only (no GPU or RPC device in this llama.cpp build)"

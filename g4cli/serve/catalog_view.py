"""What the server can serve, as the listing endpoints describe it (/v1/models, /api/tags,
/api/show, /api/ps): models given on the command line, the loaded ones, and g4's store."""

from __future__ import annotations

import hashlib
import time
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from g4cli.chat.select import Choice
from g4cli.errors import ModelNotFound
from g4cli.serve.pool import Pool, served_name

FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
              12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
              25: "IQ4_NL", 30: "IQ4_XS", 32: "BF16", 38: "MXFP4_MOE"}  # fmt: skip


@lru_cache(maxsize=64)
def _header(path: str, mtime: float) -> tuple[dict[str, Any], int]:
    from g4cli.models.ggufmeta import read_tensors

    values, tensors = read_tensors(path)
    return values, sum(t.n_elements for t in tensors)


def header(choice: Choice) -> tuple[dict[str, Any], int]:
    p = Path(choice.gguf)
    return _header(str(p), p.stat().st_mtime)


def _size_label(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def details(choice: Choice) -> dict[str, Any]:
    values, n_params = header(choice)
    arch = str(values.get("general.architecture", "gemma4"))
    quant = choice.entry.quant if choice.entry is not None else FILE_TYPES.get(values.get("general.file_type"), "")
    return {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch],
        "parameter_size": _size_label(n_params),
        "quantization_level": quant,
    }


def _digest(choice: Choice) -> str:
    files = getattr(choice.entry, "manifest", {}).get("files", {}) if choice.entry is not None else {}
    if "model" in files:
        return files["model"]["sha256"]
    p = Path(choice.gguf)
    st = p.stat()
    return hashlib.sha256(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


def _size(choice: Choice) -> int:
    return Path(choice.gguf).stat().st_size + (Path(choice.mmproj).stat().st_size if choice.mmproj else 0)


def _modified(choice: Choice) -> str:
    return datetime.fromtimestamp(Path(choice.gguf).stat().st_mtime, timezone.utc).isoformat()


def choices(pool: Pool) -> dict[str, Choice]:
    """Every model a request may name, by served name."""
    from g4cli.chat.select import choose
    from g4cli.models import store

    out = dict(pool.fixed)
    for entry in store.list_models():
        out.setdefault(entry.tag, choose(entry.tag))
    return out


def names(pool: Pool) -> list[str]:
    return sorted(choices(pool))


def tags(pool: Pool) -> list[dict[str, Any]]:
    return [
        {
            "name": n,
            "model": n,
            "modified_at": _modified(c),
            "size": _size(c),
            "digest": _digest(c),
            "details": details(c),
        }
        for n, c in sorted(choices(pool).items())
    ]


def capabilities(pool: Pool, choice: Choice) -> list[str]:
    from g4cli.chat.runtime.model import projector_capabilities

    caps = ["completion", "tools", "thinking"]
    media = projector_capabilities(Path(choice.mmproj)) if choice.mmproj else set()
    return caps + sorted(media)


def show(pool: Pool, name: Any) -> dict[str, Any]:
    if not isinstance(name, str):
        raise ModelNotFound('name the model: {"model": "e4b"}')
    choice = pool.choice(name)
    values, n_params = header(choice)
    info = {k: v for k, v in values.items() if not k.startswith("tokenizer.")}
    info["general.parameter_count"] = n_params
    return {
        "modelfile": f"# g4 model {served_name(choice)}\nFROM {choice.gguf}\n",
        "parameters": "",
        "template": values.get("tokenizer.chat_template", ""),
        "details": details(choice),
        "model_info": info,
        "capabilities": capabilities(pool, choice),
        "modified_at": _modified(choice),
    }


def running(pool: Pool) -> list[dict[str, Any]]:
    out = []
    for w in pool.loaded():
        keep = w.keep_alive if w.keep_alive is not None else pool.config.keep_alive
        expires = (
            time.time() + (keep - (time.monotonic() - w.last_used)) if keep >= 0 else time.time() + 10 * 365 * 86400
        )
        name = served_name(w.choice)
        out.append(
            {
                "name": name,
                "model": name,
                "size": _size(w.choice),
                "digest": _digest(w.choice),
                "details": details(w.choice),
                "expires_at": datetime.fromtimestamp(expires, timezone.utc).isoformat(),
                "size_vram": 0,
                "context_length": w.ctx_per_seq if w.model is not None else 0,
            }
        )
    return out

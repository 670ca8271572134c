"""``g4 pull hf.co/ORG/REPO[:QUANT]``: a repo of ready GGUF files into g4's store, as llama.cpp's
``-hf repo:quant`` and Ollama's ``hf.co/…`` take them.

- The file for the tag: a GGUF whose name ends in the tag (case-insensitive, ``Q4_K_M``,
  ``UD-Q4_K_XL``), or that sits in a folder of that name; split files (``-00001-of-0000N``) come
  together. Without a tag: Q4_K_M if the repo has it (llama.cpp's default), else its only one.
  A tag the repo lacks is an error that lists those it has.
- The projector: the repo's ``mmproj*.gguf``, F16 when there are several.
- Before the download: the headers alone (HTTP Range requests, ``gguf_remote``), checked, give
  the memory-fit estimate that a converted pull prints from config.json, and the same refusal
  of a disk too small (``--force`` overrides).
- Each file's sha256 is the one the Hub lists (LFS), checked as it downloads into the HF cache
  (``g4cli.models.download``); each header is checked again (``gguf_check``, against the whole
  file) before anything is stored.
- Stored like a converted model (``models/<org>--<repo>/<TAG>/model.gguf``, ``mmproj.gguf``,
  ``manifest.json`` last), hard-linked from the HF cache when both are on one file system.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from g4cli.errors import CheckpointError, IntegrityError, ModelNotFound, UsageError
from g4cli.models import catalog, fit, gguf_check, store
from g4cli.models.hub import RemoteFile, Snapshot, hub_errors

Progress = Callable[[str, int, int], None]
SPLIT = re.compile(r"-(\d{5})-of-(\d{5})$")
QUANT_SUFFIX = re.compile(r"(?:^|[-_.])((?:UD-)?(?:I?Q\d(?:_[0-9A-Z]+)*|BF16|F16|F32|MXFP4(?:_MOE)?))$", re.IGNORECASE)
DEFAULT_TAG = "Q4_K_M"
DRAFTER = re.compile(r"assistant|draft|mtp", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Choice:
    tag: str  # upper-cased, as g4 stores it
    parts: list[RemoteFile]  # the text model (its splits in order)
    mmproj: RemoteFile | None


def _stem(path: str) -> str:
    return SPLIT.sub("", Path(path).name[: -len(".gguf")])


def file_tag(path: str) -> str:
    """The quantization tag of a GGUF file name (``gemma-4-E4B-it-UD-Q4_K_XL.gguf`` -> UD-Q4_K_XL)."""
    m = QUANT_SUFFIX.search(_stem(path))
    return m.group(1) if m else _stem(path)


def is_projector(path: str) -> bool:
    return Path(path).name.lower().startswith("mmproj")


def choose(repo: str, files: list[RemoteFile], tag: str | None) -> Choice:
    """The text model's file(s) for ``tag`` (None: the default) and the projector."""
    models = [f for f in files if f.path.endswith(".gguf") and not is_projector(f.path)]
    if not models:
        raise CheckpointError(f"{repo} has no GGUF files", hint=f"a checkpoint repo? g4 pull {repo}")
    tags: dict[str, list[RemoteFile]] = {}
    for f in sorted(models, key=lambda f: f.path):
        tags.setdefault(file_tag(f.path).upper(), []).append(f)
        folder = Path(f.path).parent.name.upper()
        if folder and folder != file_tag(f.path).upper():
            tags.setdefault(folder, []).append(f)
    if tag is None:
        tag = DEFAULT_TAG if DEFAULT_TAG in tags else (next(iter(tags)) if len(tags) == 1 else None)
        if tag is None:
            raise UsageError(
                f"{repo} has several quantizations; say which: {', '.join(tags)}",
                hint=f"g4 pull hf.co/{repo}:{next(iter(tags))}",
            )
    parts = tags.get(tag.upper())
    if not parts:
        raise ModelNotFound(
            f"{repo} has no {tag} GGUF; it has {', '.join(tags)}", hint=f"g4 pull hf.co/{repo}:{next(iter(tags))}"
        )
    parts = _whole_split(repo, parts)
    projectors = sorted((f for f in files if f.path.endswith(".gguf") and is_projector(f.path)), key=lambda f: f.path)
    f16 = [f for f in projectors if re.search(r"(?<![a-z])f16", f.path, re.IGNORECASE)]
    return Choice(tag.upper(), parts, (f16 or projectors or [None])[0])


def _whole_split(repo: str, parts: list[RemoteFile]) -> list[RemoteFile]:
    """One file, or every split of one model in order; a missing split is an error."""
    if len(parts) > 1:  # a drafter beside the model (issue 13's assistant models) is not the model
        main = [p for p in parts if not DRAFTER.search(Path(p.path).name)]
        parts = main or parts
    m = SPLIT.search(parts[0].path[: -len(".gguf")])
    if not m:
        if len(parts) > 1:
            raise UsageError(f"{repo}: several files for that tag ({', '.join(p.path for p in parts)})")
        return parts
    n = int(m.group(2))
    want = [SPLIT.sub(f"-{i:05d}-of-{n:05d}", parts[0].path[: -len(".gguf")]) + ".gguf" for i in range(1, n + 1)]
    by_path = {p.path: p for p in parts}
    missing = [w for w in want if w not in by_path]
    if missing:
        raise CheckpointError(f"{repo}: split file {missing[0]} is missing from the repo")
    return [by_path[w] for w in want]


def open_repo(repo: str, revision: str) -> Snapshot:
    """The repo's GGUF files with their size and LFS sha256, at one commit."""
    from huggingface_hub import HfApi

    with hub_errors(repo, revision):
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    files = [
        RemoteFile(s.rfilename, int(s.lfs.size if s.lfs else s.size or 0), s.lfs.sha256 if s.lfs else None)
        for s in info.siblings or []
        if s.rfilename.endswith(".gguf")
    ]
    return Snapshot(repo, revision, str(info.sha or ""), files)


def default_tag(ref: catalog.Ref, revision: str | None) -> str:
    """The tag a pull without one takes (needs the repo's listing)."""
    assert ref.repo is not None
    snap = open_repo(ref.repo, revision or "main")
    return choose(ref.repo, snap.files, None).tag


def pull_into(ref: catalog.Ref, quant: str, tag: str, directory: Path, opts: Any, update: Progress) -> store.ModelEntry:
    """Under the model's lock: the headers and the fit estimate, the download, the checks of the
    whole files, the files into the store, the manifest."""
    from g4cli.models import download, gguf_remote
    from g4cli.models.pull import check_fit
    from g4cli.render import human_bytes, info

    assert ref.repo is not None
    snap = open_repo(ref.repo, opts.revision or "main")
    choice = choose(ref.repo, snap.files, quant)
    wanted = [*choice.parts, *([choice.mmproj] if choice.mmproj else [])]
    unlisted = [f.path for f in wanted if not f.sha256]
    if unlisted:
        raise IntegrityError(f"{ref.repo}: the Hub lists no sha256 for {unlisted[0]}; g4 will not take it unchecked")
    snap.files = wanted
    info(f"{tag}: {snap.repo} @ {snap.commit[:7]}: {', '.join(f.path for f in wanted)}")
    ahead, values = gguf_remote.check_ahead(snap, choice.parts, choice.mmproj)  # the headers alone
    text, projector = sum(f.size for f in choice.parts), choice.mmproj.size if choice.mmproj else 0
    hp = layout(values, {t.name: t.shape for h in ahead for t in h.tensors})
    est = estimate(ahead, hp, quant, text, projector, download=snap.remaining_bytes())
    check_fit(tag, est, fit.disk_needs(est, store.store_root(), snap.storage), opts.force)  # as converted pulls
    download.download(snap, wanted, update)
    download.verify(snap, update)
    headers = gguf_check.check_model([snap.pointer(f) for f in choice.parts])
    values = gguf_check.arch_values(headers[0].path)
    caps = {"vision": False, "audio": False}
    if choice.mmproj:
        caps = gguf_check.check_projector(snap.pointer(choice.mmproj), int(values.get("embedding_length", 0)))[1]
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    hashes: dict[str, str] = {}  # checked against the Hub's listing above: not read again for the manifest
    n = len(choice.parts)
    for i, f in enumerate(choice.parts):
        name = store.MODEL_FILE if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.gguf"  # llama.cpp finds splits by name
        role = "model" if i == 0 else f"model-{i + 1}"
        files[role], hashes[role] = _place(snap.pointer(f), directory / name), str(f.sha256)
    if choice.mmproj:
        files["mmproj"] = _place(snap.pointer(choice.mmproj), directory / store.MMPROJ_FILE)
        hashes["mmproj"] = str(choice.mmproj.sha256)
    info(f"checked {len(wanted)} file{'s' * (len(wanted) > 1)}: sha256 as the Hub lists, headers whole")
    hp = layout(values, {t.name: t.shape for h in headers for t in h.tensors})  # from the files, as checked
    sizes = {role: p.stat().st_size for role, p in files.items()}
    text = sum(v for role, v in sizes.items() if role.startswith("model"))
    est = estimate(headers, hp, quant, text, sizes.get("mmproj", 0))
    manifest = _describe(ref.name, quant, files, caps, hp, headers, est, hashes)
    manifest["source"] = {
        "repo": snap.repo, "revision": snap.revision, "commit": snap.commit, "gguf": [f.path for f in wanted],
    }  # fmt: skip
    store.write_manifest(directory, manifest)
    entry = store.entry(ref.name, quant)
    assert entry is not None
    info(f"pulled {entry.tag} ({human_bytes(entry.size)}) into {directory}")
    if opts.remove_download:  # the store's hard links (or copies) keep the bytes
        download.remove_weights(snap)
        info("removed the downloaded GGUF files from the Hugging Face cache")
    return entry


def _describe(
    name: str, quant: str, files: dict[str, Path], caps: dict[str, bool], hp: Any, headers, est, hashes: dict[str, str]
) -> dict:
    from g4cli.models.pull import manifest_for

    mix: dict[str, dict[str, int]] = {}
    for h in headers:
        for t, qtype in h.types.items():
            row = mix.setdefault(qtype, {"tensors": 0, "bytes": 0})
            row["tensors"] += 1
            row["bytes"] += h.sizes[t]
    caps = {**caps, "experts": hp.n_expert > 0, "ple": hp.ple_dim > 0}
    mix = dict(sorted(mix.items(), key=lambda kv: -kv[1]["bytes"]))
    return manifest_for(name, quant, files, caps, hp, mix, est, hashes)


def _place(cached: Path, dest: Path) -> Path:
    """The cached file in the store: a hard link (same file system) or a copy, renamed into place."""
    from g4cli.fsutil import fsync_file, partial_path

    tmp = partial_path(dest)
    try:
        try:
            os.link(cached.resolve(), tmp)
        except OSError:
            shutil.copyfile(cached.resolve(), tmp)
            fsync_file(tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def layout(values: dict[str, Any], tensors: dict[str, tuple[int, ...]]):  # -> quantize.gemma4.Layout
    """The text model's Layout from its GGUF header (for the KV cache and compute estimate)."""
    from quantize.gemma4 import Layout

    n = int(values["block_count"])
    pattern = values.get("attention.sliding_window_pattern") or [True] * n
    kv = values.get("attention.head_count_kv", values.get("attention.head_count", 1))
    kv = kv if isinstance(kv, list) else [kv] * n
    ff = values.get("feed_forward_length", 0)
    ff = ff if isinstance(ff, list) else [ff] * n
    full = [i for i in range(n) if not pattern[i]] or [n - 1]
    swa = [i for i in range(n) if pattern[i]] or [0]
    embd = tensors.get("token_embd.weight", (0, 0))
    v = values.get
    return Layout(
        n_layer=n,
        n_embd=int(v("embedding_length")),
        n_ff=int(min(ff)),
        n_head=int(v("attention.head_count")),
        n_head_kv_swa=int(kv[swa[0]]),
        n_head_kv_full=int(kv[full[0]]),
        head_dim_swa=int(v("attention.key_length_swa", 0)),
        head_dim_full=int(v("attention.key_length", 0)),
        is_swa=tuple(bool(p) for p in pattern),
        sliding_window=int(v("attention.sliding_window", 0)),
        rms_eps=float(v("attention.layer_norm_rms_epsilon", 1e-6)),
        n_ctx_train=int(v("context_length")),
        vocab_size=int(embd[1]),
        vocab_size_ple=int(tensors.get("per_layer_token_embd.weight", embd)[1]),
        ple_dim=int(v("embedding_length_per_layer_input", 0)),
        n_kv_shared=int(v("attention.shared_kv_layers", 0)),
        double_wide_mlp=max(ff) > min(ff),
        k_eq_v=f"blk.{full[0]}.attn_v.weight" not in tensors,
        rope_theta_full=float(v("rope.freq_base", 1e6)),
        rope_theta_swa=float(v("rope.freq_base_swa", 1e4)),
        rotary_fraction_full=1.0,  # not in the header; the estimate does not need it
        rotary_fraction_swa=1.0,
        softcap=v("final_logit_softcapping"),
        n_expert=int(v("expert_count", 0)),
        n_expert_used=int(v("expert_used_count", 0)),
        n_ff_expert=int(v("expert_feed_forward_length", 0)),
        tied="output.weight" not in tensors,
    )


def estimate(
    headers: list[gguf_check.Header], hp: Any, quant: str, text: int, projector: int, download: int = 0
) -> fit.Estimate:
    """What ``g4 chat`` needs for this model (``text``/``projector``: the files' bytes), as
    ``fit.estimate`` says for a converted one; ``download``: what is still to fetch."""
    from g4cli.models.catalog import CPU_FLASH_ATTN, DEFAULT_CTX

    sizes = {k: v for h in headers for k, v in h.sizes.items()}
    ctx = min(DEFAULT_CTX, hp.n_ctx_train)
    return fit.Estimate(
        quant=quant, ctx=ctx, source=text + projector, download=download, intermediate=0, text=text,
        ple=sizes.get("per_layer_token_embd.weight", 0), projector=projector,
        kv_cache=fit.kv_cache_bytes(hp, ctx, flash_attn=CPU_FLASH_ATTN),
        embeddings=sizes.get("token_embd.weight", 0) if hp.tied else 0,
        compute=fit.compute_bytes(hp, ctx, flash_attn=CPU_FLASH_ATTN),
    )  # fmt: skip

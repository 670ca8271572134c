"""``g4 pull`` as a library call: a model name -> quantized GGUFs and a manifest in g4's store.

Steps, under the model's lock (a second pull of the same model waits, then finds it done):
the model's directory is emptied (what an interrupted pull left, or a revision being
replaced); the Hub listing (or the cache, offline) gives the commit and every file's size and
sha256; config.json and the index come first, for the fit estimate, which refuses a disk that
is too small before any weight is downloaded (``force`` overrides); the weights download
resumably into the HF cache and are sha256-checked; the converter writes the text GGUF and the
projector into the model's directory; the manifest is written last. Killing g4 anywhere leaves
either the previous state or partial files that the next pull resumes or deletes.

Test hook: ``G4_TEST_PAUSE_AT=convert`` (or ``quantize``) makes g4 stop in that phase, once
it has written its first bytes, printing ``G4_TEST_PAUSE_AT: paused in <phase>`` on stderr,
so that tests can kill it there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from g4cli.errors import CheckpointError, DiskSpaceError, ModelBusy, UsageError
from g4cli.models import catalog, store
from g4cli.render import human_bytes, info, warn

if TYPE_CHECKING:
    from g4cli.models.fit import DiskNeed, Estimate
    from quantize.checkpoint import Checkpoint
    from quantize.gemma4 import Layout

Progress = Callable[[str, int, int], None]


@dataclass
class Pulled:
    entry: store.ModelEntry
    already: bool  # nothing to do: it was pulled before


@dataclass
class PullOptions:
    revision: str | None = None  # Hub repos: branch, tag or commit (default main)
    force: bool = False  # go ahead when the disk looks too small
    keep_source: bool = False  # keep the unquantized GGUF
    remove_download: bool = False  # delete the safetensors from the HF cache once converted
    threads: int | None = None
    draft: bool = True  # also the model's assistant drafter (catalog models), as drafter.gguf


def pull(text: str, *, quant: str | None = None, name: str | None = None, **options: Any) -> Pulled:
    """Pull ``text`` (a catalog name with optional ``:quant`` tag, an org/repo id or a directory).

    ``options`` are the fields of ``PullOptions``; ``name`` names a local directory's model.
    """
    from quantize.llama_quant import parse_type

    opts = PullOptions(**options)
    ref = catalog.parse(text, name=name)
    qtype = (catalog.gguf_tag(quant) if ref.gguf else parse_type(quant)) if quant else None
    if qtype and ref.quant and qtype != ref.quant:
        raise UsageError(f"{text} asks for {ref.quant.lower()} but --quant says {qtype.lower()}")
    if ref.gguf and not (qtype or ref.quant):
        from g4cli.models.gguf_repo import default_tag

        qtype = default_tag(ref, opts.revision)  # the repo's listing says which (Q4_K_M if it has it)
    qtype = qtype or ref.quant or catalog.default_quant(ref)
    if ref.path is not None and (opts.revision or opts.remove_download):
        raise UsageError("--revision and --remove-download apply to models from the Hub, not to a directory")
    tag = f"{ref.name}:{qtype.lower()}"

    done = _already(ref, qtype, opts.revision)
    if done:
        return Pulled(done, already=True)
    with _exclusive(ref.name, qtype, tag):
        done = _already(ref, qtype, opts.revision)  # a concurrent pull may have finished it meanwhile
        if done:
            return Pulled(done, already=True)
        directory = store.model_dir(ref.name, qtype)
        store.clear(directory)
        return Pulled(_pull(ref, qtype, tag, directory, opts), already=False)


def _already(ref: catalog.Ref, quant: str, revision: str | None) -> store.ModelEntry | None:
    """The finished model this pull would produce, if it is in the store (None: pull it)."""
    found = store.entry(ref.name, quant)
    if found is None or not found.gguf.is_file():
        return None
    source = found.manifest.get("source", {})
    origin = str(ref.path.resolve()) if ref.path is not None else ref.repo
    have = source.get("path") or source.get("repo")
    if have != origin:
        raise UsageError(
            f"{found.tag} already holds a model from {have}, not {origin}",
            hint=f"g4 rm {found.tag} first" + (", or choose another --name" if ref.path is not None else ""),
        )
    if revision and revision != source.get("revision") and not str(source.get("commit", "")).startswith(revision):
        return None  # another revision: pull it, replacing this one
    return found


@contextlib.contextmanager
def _exclusive(name: str, quant: str, tag: str) -> Iterator[None]:
    """The model's lock; says so when another g4 process holds it and this one has to wait."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(store.lock(name, quant, wait=False))
        except ModelBusy:
            info(f"waiting for another g4 process to finish with {tag}…")
            stack.enter_context(store.lock(name, quant))
        yield


def _pull(ref: catalog.Ref, quant: str, tag: str, directory: Path, opts: PullOptions) -> store.ModelEntry:
    """Under the model's lock: the fit check, the download (from the Hub), convert, the manifest."""
    from g4cli.models import download, drafter_pull, fit, hub
    from g4cli.render import ByteProgress
    from quantize.checkpoint import open_checkpoint, read_json

    if ref.gguf:  # a repo of ready GGUF files: download, check, store (g4cli/models/gguf_repo.py)
        from g4cli.models import gguf_repo

        progress = ByteProgress()
        with progress.running():
            return gguf_repo.pull_into(ref, quant, tag, directory, opts, _with_test_pause(progress.update))
    snap = None
    if ref.path is not None:
        checkpoint = ref.path
        weights = sum(p.stat().st_size for p in open_checkpoint(checkpoint).files)  # validates it first
        info(f"{tag}: {checkpoint.resolve()}")
        source: dict[str, str] = {"path": str(checkpoint.resolve())}
        to_fetch, cache = 0, store.store_root()
    else:
        assert ref.repo is not None
        try:
            snap = hub.open_snapshot(ref.repo, opts.revision or "main")
        except CheckpointError:  # ORG/REPO:QUANT of a repo of GGUF files (its name does not say so)
            from g4cli.models import gguf_repo

            if not gguf_repo.open_repo(ref.repo, opts.revision or "main").files:
                raise
            return _pull(dataclasses.replace(ref, gguf=True), quant, tag, directory, opts)
        why = f" (from the cache: {snap.offline})" if snap.offline else ""
        info(f"{tag}: {snap.repo} @ {snap.commit[:7]}{why}")
        hub.clean_orphans(snap)
        download.download(snap, [f for f in snap.files if f.path in ("config.json", hub.INDEX)])  # for the estimate
        checkpoint, weights = snap.dir, sum(f.size for f in snap.weights)
        source = {"repo": snap.repo, "revision": snap.revision, "commit": snap.commit}
        to_fetch, cache = snap.remaining_bytes(), snap.storage
    est = fit.estimate(read_json(checkpoint / "config.json"), quant=quant, source_bytes=weights, download=to_fetch)
    needs = fit.disk_needs(est, store.store_root(), cache)
    drafter = drafter_pull.plan(ref, quant) if opts.draft and snap is not None else None
    if drafter is not None:
        drafter_pull.add_needs(drafter, needs)
    check_fit(tag, est, needs, opts.force, drafter.file if drafter is not None else 0)

    progress = ByteProgress()
    update = _with_test_pause(progress.update)
    with progress.running():
        if snap is not None:
            fetched = download.download(snap, snap.files, update)
            download.verify(snap, update)
            if fetched:
                info(f"downloaded {human_bytes(fetched)} into {snap.storage} (sha256 verified)")
        files = _convert(checkpoint, directory, quant, opts.keep_source, opts.threads, update)
        if drafter is not None:
            files["drafter"] = drafter_pull.fetch(drafter, directory, quant, opts.threads, update)
    entry = _finish(ref.name, quant, directory, checkpoint, source, files, est)
    if snap is not None and opts.remove_download:
        freed = download.remove_weights(snap)
        info(f"removed the downloaded weights from the Hugging Face cache ({human_bytes(freed)})")
    return entry


def check_fit(tag: str, est: Estimate, needs: list[DiskNeed], force: bool, drafter: int = 0) -> None:
    """Print the fit estimate on stderr; refuse a disk that is too small unless ``force``.
    ``drafter``: the assistant drafter's file, held in memory beside the model's weights."""
    from g4cli.models import fit
    from g4cli.models.fit import mem_available

    h = human_bytes
    if est.download or est.source:
        cached = f"; {h(est.source - est.download)} already in the cache" if est.source > est.download else ""
        info(f"  download {h(est.download):>9}  (weights {h(est.source)}{cached})")
    parts = [f"download {h(est.download)}"] if est.download else []
    parts += [f"intermediate {h(est.intermediate)}"] if est.intermediate else []
    parts += [f"model {h(est.text)}"] + ([f"projector {h(est.projector)}"] if est.projector else [])
    parts += [f"drafter {h(drafter)}"] if drafter else []
    free = ", ".join(f"{h(n.free)} free on {n.path}" for n in needs)
    info(f"  disk     {h(sum(n.need for n in needs)):>9}  ({' + '.join(parts)}); {free}")
    mem = [f"weights {h(est.weights)}" + (f" + PLE table {h(est.ple)} read as used" if est.ple else "")]
    mem += [f"drafter {h(drafter)}"] if drafter else []
    mem += [f"KV cache {h(est.kv_cache)} at {est.ctx} context", f"compute {h(est.compute + fit.RUNTIME)}"]
    mem += [f"+ projector {h(est.projector)} once an image or audio is sent"] if est.projector else []
    available = mem_available()
    memory = est.memory + drafter
    info(f"  memory   {h(memory):>9}  ({', '.join(mem)})" + (f"; {h(available)} available" if available else ""))
    if available is not None and memory > available:
        warn(f"{tag} needs about {h(memory)} of memory and {h(available)} is available: it may not load")
    short = [n for n in needs if n.short]
    if short and not force:
        raise DiskSpaceError(
            f"not enough disk space for {tag}: {h(short[0].need)} needed on {short[0].path}, {h(short[0].free)} free",
            hint="free some space, or add --force to try anyway",
        )
    if short:
        warn("the disk looks too small; going ahead as --force says")


def _with_test_pause(update: Progress) -> Progress:
    """The progress callback, plus the G4_TEST_PAUSE_AT test hook (see the module docstring)."""
    phase = os.environ.get("G4_TEST_PAUSE_AT")
    if not phase:
        return update

    def paused(what: str, done: int, total: int) -> None:
        update(what, done, total)
        if what == phase and done > 0:
            sys.stderr.write(f"G4_TEST_PAUSE_AT: paused in {phase}\n")
            sys.stderr.flush()
            time.sleep(3600)

    return paused


def _convert(
    checkpoint: Path, directory: Path, quant: str, keep_source: bool, threads: int | None, update: Progress
) -> dict[str, Path]:
    """Convert (and quantize) into ``directory``; returns the files written by role."""
    from quantize.checkpoint import open_checkpoint
    from quantize.converter import convert
    from quantize.llama_quant import FLOAT_TYPES, QAT_TYPES, quantize

    directory.mkdir(parents=True, exist_ok=True)
    model = directory / store.MODEL_FILE
    files: dict[str, Path] = {}
    if keep_source and quant not in FLOAT_TYPES:  # the converter's own intermediate, kept under a name
        dtype = open_checkpoint(checkpoint).source_dtype
        dtype = dtype if dtype in FLOAT_TYPES else "F32"
        source = directory / f"source-{dtype}.gguf"
        result = convert(checkpoint, source, quant=dtype, threads=threads, on_progress=update)
        if quant in QAT_TYPES:  # written from the checkpoint, not from the unquantized GGUF
            result.qat = convert(
                checkpoint, model, quant=quant, mmproj_type=None, threads=threads, on_progress=update
            ).qat
        else:
            quantize(source, model, quant, threads=threads, on_progress=lambda d, t: update("quantize", d, t))
        files["source"] = source
    else:
        result = convert(checkpoint, model, quant=quant, threads=threads, on_progress=update)
    if result.qat is not None:
        from quantize.qat import summary

        info(summary(result.qat))
    files["model"] = model
    if result.mmproj is not None:
        files["mmproj"] = directory / store.MMPROJ_FILE
        if result.mmproj != files["mmproj"]:
            os.replace(result.mmproj, files["mmproj"])
    return files


def _finish(
    name: str, quant: str, directory: Path, checkpoint: Path, source: dict, files: dict[str, Path], est: Estimate
) -> store.ModelEntry:
    """Checksum the outputs and write the manifest: from now on the model exists."""
    manifest = describe(name, quant, checkpoint, files, est)
    manifest["source"] = source
    store.write_manifest(directory, manifest)
    entry = store.entry(name, quant)
    assert entry is not None
    info(f"pulled {entry.tag} ({human_bytes(entry.size)}) into {directory}")
    return entry


def describe(name: str, quant: str, checkpoint: Path, files: dict[str, Path], est: Estimate) -> dict[str, Any]:
    """The manifest: what the model is, what it can do, and each file with its size and sha256."""
    from gguf import GGUFReader

    from quantize.checkpoint import open_checkpoint
    from quantize.gemma4 import text_params

    ckpt = open_checkpoint(checkpoint)
    hp = text_params(ckpt.config)
    mix: dict[str, dict[str, int]] = {}
    for t in GGUFReader(files["model"]).tensors:
        row = mix.setdefault(t.tensor_type.name, {"tensors": 0, "bytes": 0})
        row["tensors"] += 1
        row["bytes"] += int(t.n_bytes)
    sizes = {role: p.stat().st_size for role, p in files.items()}
    written = dataclasses.replace(est, text=sizes["model"])  # the estimate with the real text file
    mix = dict(sorted(mix.items(), key=lambda kv: -kv[1]["bytes"]))
    return manifest_for(name, quant, files, capabilities(ckpt), hp, mix, written)


def manifest_for(
    name: str,
    quant: str,
    files: dict[str, Path],
    caps: dict[str, bool],
    hp: Layout,
    mix: dict,
    written: Estimate,
    hashes: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The manifest's fields (a converted model's, and a GGUF repo's: ``gguf_repo``); ``written``:
    the estimate with the sizes of the files as written; ``hashes``: sha256 by role already checked
    (a GGUF repo's files, against the Hub's listing), the others are read and hashed here."""
    hashes = hashes or {}
    from g4cli.models import fit

    n_swa = sum(hp.is_swa)
    sizes = {role: p.stat().st_size for role, p in files.items()}
    return {
        "format": store.MANIFEST_FORMAT,
        "name": name,
        "quant": quant,
        "pulled": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {},
        "files": {
            role: {"name": p.name, "size": sizes[role], "sha256": hashes.get(role) or store.sha256_file(p)}
            for role, p in files.items()
        },
        "capabilities": caps,
        "architecture": {
            "arch": "gemma4",
            "layers": hp.n_layer,
            "sliding_layers": n_swa,
            "full_layers": hp.n_layer - n_swa,
            "sliding_window": hp.sliding_window,
            "context_length": hp.n_ctx_train,
            "embedding": hp.n_embd,
            "heads": hp.n_head,
            "kv_heads": {"sliding": hp.n_head_kv_swa, "full": hp.n_head_kv_full},
            "head_dim": {"sliding": hp.head_dim_swa, "full": hp.head_dim_full},
            "kv_shared_layers": hp.n_kv_shared,
            "ple_dim": hp.ple_dim,
            "experts": hp.n_expert,
            "experts_used": hp.n_expert_used,
            "vocab": hp.vocab_size,
        },
        "quant_mix": mix,
        "memory": {  # a text chat at the default context (fit.Estimate.memory), from the files as written
            "ctx": written.ctx,
            "weights": written.weights,
            "ple": written.ple,
            "projector": sizes.get("mmproj", 0),  # loaded with the first image or audio
            "drafter": sizes.get("drafter", 0),  # its KV cache is the model's
            "kv_cache": written.kv_cache,
            "compute": written.compute + fit.RUNTIME,
            "total": written.memory + sizes.get("drafter", 0),
        },
    }


def capabilities(ckpt: Checkpoint) -> dict[str, bool]:
    """What a checkpoint can do, from its tensors (the names ``catalog.Model.capabilities`` uses)."""
    from quantize.gemma4 import text_params

    hp = text_params(ckpt.config)
    return {
        # a tower, or the 12B's embedders of raw patches / waveform frames (no tower)
        "vision": any(n.startswith(("model.vision_tower.", "model.vision_embedder.")) for n in ckpt.tensors),
        "audio": any(n.startswith(("model.audio_tower.", "model.embed_audio.")) for n in ckpt.tensors),
        "experts": hp.n_expert > 0,  # MoE (26B-A4B)
        "ple": hp.ple_dim > 0,  # per-layer embeddings (E2B/E4B)
    }

"""From options to a loaded model: resolve which model, check its capabilities, load it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from g4cli.chat.runtime.model import DEFAULT_IMAGE_TOKENS, Model, non_causal_images, projector_capabilities, require
from g4cli.chat.select import Choice
from g4cli.chat.settings import LoadOptions

if TYPE_CHECKING:
    from g4cli.chat.runtime.offload import Plan


def open_model(choice: Choice, options: LoadOptions, *, n_seq: int = 1) -> Model:
    """The chosen model loaded with ``options`` (``n_seq`` sequences, each of ``options.ctx``)."""
    if options.rpc:  # their devices must be registered before llama.cpp picks devices at load
        from g4cli.chat.runtime import rpc

        rpc.connect(rpc.parse_endpoints(options.rpc))
    placement = plan_offload(choice, options, n_seq)
    ctx = placement.ctx if placement is not None else options.ctx
    return Model(
        choice.gguf,
        choice.mmproj,
        n_ctx=ctx * n_seq if ctx else None,
        n_threads=options.threads,
        n_gpu_layers=placement.n_gpu_layers if placement is not None else options.gpu_layers or 0,
        n_seq=n_seq,
        flash_attn=options.flash_attn,
        kv_type=options.kv_type,
        image_tokens=options.image_tokens,
        offload=placement,
        batch_invariant=options.batch_invariant,
    )


def plan_offload(choice: Choice, options: LoadOptions, n_seq: int = 1) -> Plan | None:
    """Where the layers go (``--gpu-layers auto`` or a number, over the devices llama.cpp will
    use); None on a machine with no GPU or RPC device: nothing changes there."""
    from g4cli.chat.runtime import dryrun, offload
    from g4cli.chat.runtime.devices import offload_devices
    from g4cli.models.catalog import DEFAULT_CTX
    from g4cli.models.fit import mem_available

    found = offload_devices()
    devices = [(d.name, d.free) for d in found]
    if not devices:
        return None
    shape = offload.shape_from_gguf(choice.gguf, choice.mmproj)
    n_ubatch = 512  # the model's own rule (Model._ubatch): a whole image when images are non-causal
    if choice.mmproj is not None and "vision" in projector_capabilities(choice.mmproj):
        if non_causal_images(choice.mmproj, shape.n_embd):
            n_ubatch = max(n_ubatch, options.image_tokens or DEFAULT_IMAGE_TOKENS)
    settings = {
        "n_seq": n_seq,
        "kv_type": options.kv_type,
        "flash_attn": options.flash_attn != "off",
        "gpu_layers": options.gpu_layers,
        "split_mode": options.split_mode,
        "tensor_split": list(options.tensor_split) or None,
        "main_gpu": options.main_gpu,
        "n_ubatch": n_ubatch,
    }

    def make(measured: dict[str, int]) -> Plan:
        default_ctx = min(DEFAULT_CTX, shape.n_ctx_train or DEFAULT_CTX)
        return offload.choose(
            shape, devices, ctx=options.ctx, default_ctx=default_ctx, host_free=mem_available(), measured=measured,
            **settings,
        )  # fmt: skip

    def measure(p: Plan) -> dict[str, int]:
        return dryrun.compute_buffers(
            choice.gguf, p, found, n_ctx=p.ctx * n_seq, n_seq=n_seq, n_ubatch=n_ubatch,
            flash_attn=options.flash_attn, kv_type=options.kv_type,
        )  # fmt: skip

    if options.gpu_layers is not None:  # a number: llama.cpp places it; the plan only describes it
        return make({})
    return offload.refine(make, measure)


@contextlib.contextmanager
def loaded(
    choice: Choice, options: LoadOptions, *, needs: set[str] | None = None, verbose: bool = False
) -> Iterator[Model]:
    """Check capabilities from the headers, then load the chosen model.

    The model is held (a shared lock) while loaded, so ``g4 rm`` cannot delete it meanwhile.
    """
    from g4cli import render
    from g4cli.models import store

    caps = projector_capabilities(choice.mmproj)
    for need in sorted(needs or ()):
        require(need, caps, choice.name, choice.mmproj)  # from the headers, before anything loads
    hold = store.using(choice.entry) if choice.entry is not None else contextlib.nullcontext()
    with hold:
        status = render.err_console().status("loading model…") if render.stderr_is_tty() else contextlib.nullcontext()
        with status:
            model = open_model(choice, options)
        model.name = choice.name
        if verbose and model.offload is not None:  # the split, as `ollama ps` shows it
            render.info(model.offload.summary())
        try:
            from g4cli.chat.drafting import attach_for

            attach_for(model, choice, options)
            yield model
        finally:
            model.close()

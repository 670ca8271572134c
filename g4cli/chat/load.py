"""From options to a loaded model: resolve which model, check its capabilities, load it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from g4cli.chat.runtime.model import Model, projector_capabilities, require
from g4cli.chat.select import Choice
from g4cli.chat.settings import LoadOptions


def open_model(choice: Choice, options: LoadOptions, *, n_seq: int = 1) -> Model:
    """The chosen model loaded with ``options`` (``n_seq`` sequences, each of ``options.ctx``)."""
    return Model(
        choice.gguf,
        choice.mmproj,
        n_ctx=options.ctx * n_seq if options.ctx else None,
        n_threads=options.threads,
        n_gpu_layers=options.gpu_layers,
        n_seq=n_seq,
        flash_attn=options.flash_attn,
        kv_type=options.kv_type,
        image_tokens=options.image_tokens,
    )


@contextlib.contextmanager
def loaded(choice: Choice, options: LoadOptions, *, needs: set[str] | None = None) -> Iterator[Model]:
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
        try:
            from g4cli.chat.drafting import attach_for

            attach_for(model, choice, options)
            yield model
        finally:
            model.close()

"""A prompt as llama.cpp will evaluate it: text tokens and media chunks (through mtmd)."""

from __future__ import annotations

import ctypes

import llama_cpp  # noqa: F401  -- before numpy (see model.py)
import llama_cpp.mtmd_cpp as mtmd
import numpy as np

from g4cli.chat.media import Media
from g4cli.chat.runtime.cache import MediaUnit, Unit, n_pos
from g4cli.chat.runtime.handle import Handle
from g4cli.errors import RuntimeFailure


class Prompt(Handle):
    """A tokenized prompt: its units and, for media, mtmd's chunks (freed by ``close``)."""

    def __init__(self, units: list[Unit], chunks: object | None = None, media: dict[int, object] | None = None):
        self.units = units
        self.chunks = chunks
        self.media = media or {}  # unit index -> mtmd chunk

    @property
    def n_pos(self) -> int:
        return n_pos(self.units)

    def close(self) -> None:
        if self.chunks is not None:
            mtmd.mtmd_input_chunks_free(self.chunks)
            self.chunks = None


def bitmaps(media: list[Media]) -> list:
    """mtmd bitmaps for the attachments, each with its content hash as id (one per audio piece)."""
    bitmaps = []
    for m in media:
        if m.kind == "image":
            h, w = m.pixels.shape[:2]
            data = np.ascontiguousarray(m.pixels).tobytes()
            bmp = mtmd.mtmd_bitmap_init(w, h, (ctypes.c_ubyte * len(data)).from_buffer_copy(data))
            mtmd.mtmd_bitmap_set_id(bmp, m.sha256.encode())
            bitmaps.append(bmp)
            continue
        for i, piece in enumerate(m.pieces):
            pcm = np.ascontiguousarray(piece, dtype=np.float32)
            bmp = mtmd.mtmd_bitmap_init_from_audio(len(pcm), pcm.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
            mtmd.mtmd_bitmap_set_id(bmp, f"{m.sha256}:{i}".encode())
            bitmaps.append(bmp)
    return bitmaps


def tokenize_media_prompt(mtmd_ctx: object, prompt: str, media: list[Media]) -> Prompt:
    """mtmd's tokenization of a prompt with media: text runs become token units, each media item
    a ``MediaUnit`` (its chunk kept in ``Prompt.media`` for evaluation)."""
    bitmaps_ = bitmaps(media)
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        data = prompt.encode("utf-8")
        text = mtmd.mtmd_input_text()
        text.text, text.text_len, text.add_special, text.parse_special = data, len(data), False, True
        arr = (mtmd.mtmd_bitmap_p_ctypes * max(1, len(bitmaps_)))(*bitmaps_)
        rc = mtmd.mtmd_tokenize(mtmd_ctx, chunks, ctypes.byref(text), arr, len(bitmaps_))
        if rc != 0:
            raise RuntimeFailure(f"cannot tokenize the prompt with its media (mtmd error {rc})")
    except BaseException:
        mtmd.mtmd_input_chunks_free(chunks)
        raise
    finally:
        for bmp in bitmaps_:
            mtmd.mtmd_bitmap_free(bmp)
    out = Prompt([], chunks)
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_type(chunk) == 0:  # MTMD_INPUT_CHUNK_TYPE_TEXT
            n = ctypes.c_size_t(0)
            toks = mtmd.mtmd_input_chunk_get_tokens_text(chunk, ctypes.byref(n))
            out.units.extend(toks[j] for j in range(n.value))
        else:
            key = (mtmd.mtmd_input_chunk_get_id(chunk) or b"").decode()
            out.media[len(out.units)] = chunk
            out.units.append(
                MediaUnit(key, mtmd.mtmd_input_chunk_get_n_tokens(chunk), mtmd.mtmd_input_chunk_get_n_pos(chunk))
            )
    return out

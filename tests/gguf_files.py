"""GGUF files for the GGUF-repo tests, rewritten with gguf-py from ones g4 converted: another
architecture, split files (gguf-py's own splitting, as convert_hf_to_gguf --split-max-tensors),
and a header that lies about a tensor's shape."""

from __future__ import annotations

import struct
from pathlib import Path

from gguf import GGUFReader, GGUFValueType, GGUFWriter


def rewrite(
    src: Path, dst: Path, *, arch: str | None = None, split_max_tensors: int = 0, strings: dict[str, str] | None = None
) -> list[Path]:
    """``src`` written anew to ``dst`` (splits: ``<stem>-0000i-of-0000N.gguf``), with ``strings``
    set (e.g. a long chat template: a longer header); returns the files."""
    reader = GGUFReader(src)
    writer = GGUFWriter(dst, arch or str(reader.fields["general.architecture"].contents()),
                        split_max_tensors=split_max_tensors)  # fmt: skip
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        if name not in (strings or {}):
            writer.add_key_value(name, field.contents(), field.types[0], sub)
    for name, value in (strings or {}).items():
        writer.add_string(name, value)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if not split_max_tensors:
        return [dst]
    return sorted(dst.parent.glob(f"{dst.stem}-*-of-*.gguf"))


def lie_about_shape(src: Path, dst: Path, tensor: str, factor: int = 4) -> Path:
    """A copy of ``src`` whose header says ``tensor`` (1-D) is ``factor`` times as long as it is."""
    data = bytearray(src.read_bytes())
    name = tensor.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims, ne0 = struct.unpack_from("<IQ", data, at)
    assert n_dims == 1
    struct.pack_into("<Q", data, at + 4, ne0 * factor)
    dst.write_bytes(bytes(data))
    return dst

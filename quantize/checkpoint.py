"""A Hugging Face checkpoint directory, read as untrusted input.

``open_checkpoint(dir)`` reads ``config.json`` and the safetensors headers (never tensor data),
validating every field it will rely on. Pickle checkpoints (``*.bin``, ``*.pt``) are refused,
never opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from g4cli.errors import CheckpointError
from quantize.safetensors_io import TensorRef, read_header

INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def read_json(path: Path, what: str | None = None) -> Any:
    """Parse a JSON file, turning every failure into one CheckpointError line."""
    label = what or path.name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{label} not found in {path.parent}") from None
    except OSError as e:
        raise CheckpointError(f"{label}: cannot read ({e})") from e
    try:
        # orjson: Gemma 4's 33 MB tokenizer.json in about half json's time (its million small
        # strings dominate a conversion's fixed cost); it also refuses NaN/Infinity and invalid UTF-8.
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise CheckpointError(f"{label}: not valid JSON (line {e.lineno}: {e.msg})") from e


class ConfigView:
    """Typed, validated access to a config dict; errors name the key path in config.json."""

    def __init__(self, data: dict[str, Any], path: str = "") -> None:
        self.data = data
        self.path = path

    def _label(self, key: str) -> str:
        return f"config.json: {self.path}{key}"

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def sub(self, key: str) -> ConfigView | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise CheckpointError(f"{self._label(key)} must be an object")
        return ConfigView(value, f"{self.path}{key}.")

    def int(self, key: str, default: int | None = None, minimum: int = 0) -> int:
        value = self.data.get(key, default)
        if value is None:
            raise CheckpointError(f"{self._label(key)} is missing")
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise CheckpointError(f"{self._label(key)} must be an integer >= {minimum}, got {value!r}")
        return value

    def float(self, key: str, default: float | None = None) -> float:
        value = self.data.get(key, default)
        if value is None:
            raise CheckpointError(f"{self._label(key)} is missing")
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value != value:
            raise CheckpointError(f"{self._label(key)} must be a number, got {value!r}")
        return float(value)

    def bool(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise CheckpointError(f"{self._label(key)} must be true or false, got {value!r}")
        return value

    def str(self, key: str, default: str | None = None) -> str | None:
        value = self.data.get(key, default)
        if value is not None and not isinstance(value, str):
            raise CheckpointError(f"{self._label(key)} must be a string, got {value!r}")
        return value

    def list(self, key: str) -> list[Any] | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, list):
            raise CheckpointError(f"{self._label(key)} must be a list, got {value!r}")
        return value


@dataclass
class Checkpoint:
    root: Path
    config: dict[str, Any]
    tensors: dict[str, TensorRef]
    files: list[Path] = field(default_factory=list)

    @property
    def source_dtype(self) -> str:
        """The dtype holding most of the weights (BF16 for every official release)."""
        totals: dict[str, int] = {}
        for ref in self.tensors.values():
            totals[ref.dtype] = totals.get(ref.dtype, 0) + ref.nbytes
        return max(totals, key=lambda k: totals[k]) if totals else "F32"

    @property
    def nbytes(self) -> int:
        return sum(ref.nbytes for ref in self.tensors.values())


def _safe_member(root: Path, name: object, what: str) -> Path:
    """A file name from an index, kept inside the checkpoint directory."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise CheckpointError(f"{what}: invalid shard file name {name!r}")
    return root / name


def open_checkpoint(root: Path | str) -> Checkpoint:
    root = Path(root)
    if not root.exists():
        raise CheckpointError(f"{root}: no such directory")
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory (expected a Hugging Face checkpoint directory)")
    config = read_json(root / "config.json")
    if not isinstance(config, dict):
        raise CheckpointError("config.json: not a JSON object")

    index_path = root / INDEX_NAME
    if index_path.exists():
        index = read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{INDEX_NAME}: missing or empty weight_map")
        files = sorted({_safe_member(root, f, INDEX_NAME) for f in weight_map.values()})
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{INDEX_NAME}: shard {f.name} is missing from {root}")
    else:
        files = sorted(p for p in root.glob("*.safetensors") if p.is_file())
        weight_map = None
    if not files:
        pickles = sorted(p.name for p in root.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{root}: only PyTorch pickle weights ({', '.join(pickles[:3])}); g4 never unpickles files",
                hint="use a checkpoint that ships .safetensors files",
            )
        raise CheckpointError(f"{root}: no .safetensors files")

    tensors: dict[str, TensorRef] = {}
    for f in files:
        for name, ref in read_header(f).items():
            if name in tensors:
                raise CheckpointError(f"tensor {name!r} is stored twice ({tensors[name].path.name}, {f.name})")
            tensors[name] = ref
    if weight_map is not None:
        for name, fname in weight_map.items():
            ref = tensors.get(name)
            if ref is None or ref.path.name != fname:
                raise CheckpointError(f"{INDEX_NAME}: tensor {name!r} is not in {fname}")
    return Checkpoint(root=root, config=config, tensors=tensors, files=files)

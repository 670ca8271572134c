"""The reference side of parity tests: transformers 5.23's Gemma 4 on the same checkpoint files.

Test-only (torch is never needed by the product). llama.cpp is driven through llama-cpp-python.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

REL_TOL = 5e-3  # issue: ||llama - ref|| / ||ref|| at every position
AGREE_MIN = 0.97  # issue: argmax agreement


@dataclass
class Parity:
    max_rel: float
    mean_rel: float
    agreement: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= REL_TOL and self.agreement >= AGREE_MIN

    def __str__(self) -> str:
        return f"max rel {self.max_rel:.2e}, mean {self.mean_rel:.2e}, argmax agreement {self.agreement:.1%}"


def compare(logits: np.ndarray, ref: np.ndarray) -> Parity:
    rel = np.linalg.norm(logits - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    agree = float((logits.argmax(-1) == ref.argmax(-1)).mean())
    return Parity(float(rel.max()), float(rel.mean()), agree)


def sample_tokens(n: int = 48, seed: int = 1, low: int = 114, high: int = 1024) -> list[int]:
    """<bos> then random ordinary tokens (ids above the specials of the tiny vocabulary)."""
    rng = np.random.default_rng(seed)
    return [2, *(int(t) for t in rng.integers(low, high, n - 1))]


def model_class(checkpoint: Path | str):
    """transformers' class for a checkpoint: Gemma 4, or the 12B's ``Gemma4Unified*``."""
    import json

    import transformers

    archs = json.loads((Path(checkpoint) / "config.json").read_text()).get("architectures") or []
    unified = "Gemma4UnifiedForConditionalGeneration" in archs
    return (
        transformers.Gemma4UnifiedForConditionalGeneration if unified else transformers.Gemma4ForConditionalGeneration
    )


@cache
def _model(checkpoint: str):
    import torch

    torch.manual_seed(0)
    model = model_class(checkpoint).from_pretrained(checkpoint, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def reference_logits(checkpoint: Path, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return _model(str(checkpoint))(torch.tensor([ids])).logits[0].float().numpy()


def llama_logits(gguf: Path, ids: list[int], *, one_by_one: bool = False, f32_kv: bool = False) -> np.ndarray:
    """Logits for every position, from one batch or from one decode call per token."""
    import llama_cpp

    kv_type = 0 if f32_kv else None  # GGML_TYPE_F32; default F16
    llm = llama_cpp.Llama(
        str(gguf), n_ctx=256, n_batch=256, logits_all=True, verbose=False, type_k=kv_type, type_v=kv_type
    )
    try:
        if one_by_one:
            for t in ids:
                llm.eval([t])
        else:
            llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def image_prompt_logits(checkpoint: Path, prompt: str, image: Path, max_soft_tokens: int) -> np.ndarray:
    """The logits after ``prompt`` (mtmd's marker where the image goes), the image made into
    pixels by transformers' own processor at the budget ``max_soft_tokens``.

    Image attention is whatever the checkpoint's config says: the tiny 26B/31B families set
    ``use_bidirectional_attention="vision"``, as mtmd decodes those (text width not 1536/2560)."""
    import torch
    from PIL import Image
    from transformers import AutoTokenizer
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    pixels = Gemma4ImageProcessorPil(max_soft_tokens=max_soft_tokens)(
        images=[Image.open(image).convert("RGB")], return_tensors="pt"
    )
    n = int(pixels["num_soft_tokens_per_image"][0])
    tok = AutoTokenizer.from_pretrained(checkpoint)
    text = prompt.replace("<__media__>", "<|image>" + "<|image|>" * n + "<image|>")
    input_ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    mm_types = (input_ids == tok.convert_tokens_to_ids("<|image|>")).long()  # 1: image
    with torch.no_grad():
        out = _model(str(checkpoint))(
            input_ids=input_ids,
            mm_token_type_ids=mm_types,
            pixel_values=pixels["pixel_values"],
            image_position_ids=pixels["image_position_ids"],
        )
    return out.logits[0, -1].float().numpy()


# --- the 12B ("unified"): transformers' own pixel and waveform pipelines ------------------------


@cache
def _unified_image_functions() -> dict:
    """``convert_image_to_patches``/``patches_merge``/``get_aspect_ratio_preserving_size`` from
    transformers' Gemma4UnifiedImageProcessor module, whose import needs torchvision (which the
    tests do without): the functions are pure torch, so they are compiled from its source."""
    import ast
    import math

    import torch
    from transformers.models import gemma4_unified

    source = (Path(gemma4_unified.__file__).parent / "image_processing_gemma4_unified.py").read_text()
    wanted = {"convert_image_to_patches", "patches_merge", "get_aspect_ratio_preserving_size"}
    tree = ast.parse(source)
    tree.body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in wanted]
    namespace: dict = {"math": math, "torch": torch}
    exec(compile(tree, "image_processing_gemma4_unified.py", "exec"), namespace)
    assert wanted <= namespace.keys()
    return namespace


def unified_pixels(image: Path, max_soft_tokens: int = 280, patch_size: int = 16, pooling: int = 3):
    """(pixel_values [1, n, 3·48²], image_position_ids [1, n, 2]) as Gemma4UnifiedImageProcessor
    makes them (rescaled to [0, 1], no normalisation), for an image it does not resize."""
    import torch
    from PIL import Image

    f = _unified_image_functions()
    rgb = np.asarray(Image.open(image).convert("RGB"))
    h, w = rgb.shape[:2]
    size = f["get_aspect_ratio_preserving_size"](h, w, patch_size, max_soft_tokens * pooling**2, pooling)
    assert size == (h, w), f"the processor would resize {w}x{h} (torchvision): use an aligned image"
    pixels = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
    patches = f["convert_image_to_patches"](pixels, patch_size)
    grid = torch.meshgrid(torch.arange(w // patch_size), torch.arange(h // patch_size), indexing="xy")
    positions = torch.stack(grid, dim=-1).reshape(patches.shape[0], 2)
    merged, merged_pos = f["patches_merge"](patches[None], positions[None], patches.shape[0] // pooling**2)
    return merged, merged_pos


def unified_frames(pcm: np.ndarray):
    """(input_features [1, n, 640], input_features_mask [1, n]) from Gemma4UnifiedAudioFeatureExtractor."""
    from transformers.models.gemma4_unified.feature_extraction_gemma4_unified import (
        Gemma4UnifiedAudioFeatureExtractor,
    )

    out = Gemma4UnifiedAudioFeatureExtractor()([pcm], sampling_rate=16000, return_tensors="pt")
    return out["input_features"], out["input_features_mask"]

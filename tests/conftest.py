"""Shared fixtures: hermetic homes, tiny Gemma 4 checkpoints, converted GGUFs, the g4 CLI."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ["e2b", "e4b", "26b-a4b", "31b"]


@pytest.fixture(autouse=True)
def hermetic_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own G4 home, HF cache and XDG dirs; nothing touches the network."""
    home = tmp_path_factory.mktemp("home")
    for var, sub in (
        ("G4_HOME", "g4"),
        ("HF_HOME", "hf"),
        ("XDG_DATA_HOME", "xdg-data"),
        ("XDG_CONFIG_HOME", "xdg-config"),
        ("XDG_STATE_HOME", "xdg-state"),
        ("XDG_CACHE_HOME", "xdg-cache"),
    ):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("G4_HOST", "127.0.0.1:9")  # no g4 serve there: one-shot chats answer in-process
    monkeypatch.delenv("G4_API_KEY", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny(family, **options)`` -> a cached tiny checkpoint directory (built once per session)."""
    from quantize.tiny import make_checkpoint

    cache: dict[tuple, Path] = {}

    def build(family: str = "e2b", **options: object) -> Path:
        key = (family, tuple(sorted(options.items(), key=lambda kv: kv[0])))
        if key not in cache:
            d = tmp_path_factory.mktemp(f"ckpt-{family}")
            make_checkpoint(d, family, **options)
            cache[key] = d
        return cache[key]

    return build


@pytest.fixture(scope="session")
def gguf(tiny: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``gguf(family, quant)`` -> a cached GGUF converted from the tiny checkpoint.

    Its projector sits beside it as ``mmproj-<family>-<quant>.gguf`` (F32 for F32 files, else F16).
    """
    from quantize.converter import convert

    cache: dict[tuple[str, str], Path] = {}

    def build(family: str = "e2b", quant: str = "F32") -> Path:
        if (family, quant) not in cache:
            out = tmp_path_factory.mktemp(f"gguf-{family}") / f"{family}-{quant}.gguf"
            convert(tiny(family), out, quant=quant, mmproj_type="F32" if quant == "F32" else "F16")
            cache[(family, quant)] = out
        return cache[(family, quant)]

    return build


@dataclass
class Result:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


def g4_executable() -> list[str]:
    exe = shutil.which("g4")
    return [exe] if exe else [sys.executable, "-m", "g4cli.app"]


@pytest.fixture
def run_g4() -> Callable[..., Result]:
    """Run the installed ``g4`` as a subprocess with the test's environment."""

    def run(*args: object, input: bytes | None = None, env: dict | None = None, timeout: float = 300) -> Result:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run(
            [*g4_executable(), *map(str, args)],
            input=input if input is not None else b"",
            capture_output=True,
            env=full_env,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    return run


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real small or read-only file system (needs root, as on the CI machine)."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for this test: {proc.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def stray_files(directory: Path) -> list[str]:
    """Partial/temporary files left behind in a directory tree."""
    return sorted(
        str(p.relative_to(directory))
        for p in directory.rglob("*")
        if p.name.endswith((".g4-partial", ".partial", ".incomplete", ".tmp")) or ".g4-partial" in p.name
    )


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Images and audio made by real encoders (see media_files.py), built once."""
    import media_files as mf

    d = tmp_path_factory.mktemp("media")
    files: dict[str, Path] = {"photo": mf.photo(d / "photo.jpg"), "alpha": mf.png_with_alpha(d / "alpha.png")}
    files.update(mf.small_images(d))
    files.update(mf.audio_set(d))
    files["long"], _ = mf.long_clip(d, files["speech"])
    return files


LLAMA_CPP_SDIST = "llama_cpp_python-0.3.36"
GEMMA4_TEMPLATE = f"{LLAMA_CPP_SDIST}/vendor/llama.cpp/models/templates/google-gemma-4-31B-it.jinja"


@pytest.fixture(scope="session")
def gemma4_template() -> str:
    """The real Gemma 4 chat template, as llama.cpp ships it in the llama-cpp-python 0.3.36 sdist.

    The sdist is downloaded once into tests/.cache (not committed) by pip, then the template is
    read from the archive."""
    import tarfile
    import tempfile

    cache = ROOT / "tests" / ".cache"
    archive = cache / f"{LLAMA_CPP_SDIST}.tar.gz"
    if not archive.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:  # then renamed: never a partial archive
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
            proc = subprocess.run([*pip, "llama-cpp-python==0.3.36", "-d", tmp], capture_output=True, text=True)
            if proc.returncode != 0:
                pytest.fail(f"cannot download the llama-cpp-python sdist: {proc.stderr.strip()[-500:]}")
            os.replace(Path(tmp) / archive.name, archive)
    with tarfile.open(archive) as tar:
        member = tar.extractfile(GEMMA4_TEMPLATE)
        assert member is not None, GEMMA4_TEMPLATE
        return member.read().decode("utf-8")


@pytest.fixture(scope="session")
def tiny_drafter(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``tiny_drafter(family)`` -> the cached assistant drafter checkpoint matched to ``tiny(family)``."""
    from quantize.tiny import make_drafter

    cache: dict[str, Path] = {}

    def build(family: str = "e2b") -> Path:
        if family not in cache:
            cache[family] = make_drafter(tmp_path_factory.mktemp(f"drafter-{family}"), family)
        return cache[family]

    return build


@pytest.fixture(scope="session")
def drafter_gguf(tiny_drafter: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``drafter_gguf(family, quant)`` -> the cached drafter GGUF (arch gemma4-assistant)."""
    from quantize.converter import convert

    cache: dict[tuple[str, str], Path] = {}

    def build(family: str = "e2b", quant: str = "F32") -> Path:
        if (family, quant) not in cache:
            out = tmp_path_factory.mktemp(f"drafter-gguf-{family}") / f"{family}-assistant-{quant}.gguf"
            convert(tiny_drafter(family), out, quant=quant, mmproj_type=None)
            cache[(family, quant)] = out
        return cache[(family, quant)]

    return build


@pytest.fixture(scope="session")
def endless(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """``endless(family)`` -> (target GGUF, its drafter GGUF), Q8_0; the target never stops by
    itself (``make_checkpoint(endless=True)``), so answers run to their token limit."""
    from quantize.converter import convert
    from quantize.tiny import make_checkpoint, make_drafter

    cache: dict[str, tuple[Path, Path]] = {}

    def build(family: str) -> tuple[Path, Path]:
        if family not in cache:
            d = tmp_path_factory.mktemp(f"endless-{family}")
            make_checkpoint(d / "t", family, endless=True)
            target = convert(d / "t", d / "t.gguf", quant="q8_0", mmproj_type="f16").text
            make_drafter(d / "a", family)
            cache[family] = (target, convert(d / "a", d / "a.gguf", quant="q8_0", mmproj_type=None).text)
        return cache[family]

    return build

"""The loaded models of a server: load on first use, unload after ``keep_alive`` idle, never more
than the memory holds.

Models named on ``g4 serve``'s command line are loaded at start and served under their name
(a store tag such as ``e4b:q4_k_m`` also answers to ``e4b``; a GGUF path by its file stem);
any other name is looked up in g4's store by name only, never as a path.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from g4cli.chat.select import Choice, choose
from g4cli.chat.settings import LoadOptions
from g4cli.errors import G4Error, ModelNotFound
from g4cli.serve.engine import Busy, Worker

DEFAULT_KEEP_ALIVE = 300.0  # seconds, as Ollama


class OutOfMemory(Busy):
    """Loading this model would exceed the memory the server may use (HTTP 503)."""


@dataclass
class ServeConfig:
    load: LoadOptions = field(default_factory=LoadOptions)
    parallel: int = 1
    max_queue: int = 16
    keep_alive: float = DEFAULT_KEEP_ALIVE  # < 0: forever
    max_memory: int | None = None  # bytes the loaded models may take; None: what the machine has


def served_name(choice: Choice) -> str:
    """How a model given on the command line is named in requests and listings."""
    return choice.name if choice.entry is not None else Path(choice.gguf).stem


def memory_need(choice: Choice) -> int:
    """What a loaded model may take: the pull's estimate (text weights, KV cache, compute) plus the
    projector, which the first image or audio loads; for a bare GGUF, its files."""
    projector = Path(choice.mmproj).stat().st_size if choice.mmproj else 0
    manifest = getattr(choice.entry, "manifest", None) or {}
    memory = manifest.get("memory", {})
    if "compute" in memory:  # manifests from before the lazy PLE table count the files instead
        return int(memory["total"]) + projector
    return Path(choice.gguf).stat().st_size + projector + int(memory.get("kv_cache", 0))


class Pool:
    def __init__(self, config: ServeConfig, fixed: list[Choice] | None = None) -> None:
        self.config = config
        self.fixed = {served_name(c): c for c in fixed or []}
        self.workers: dict[str, Worker] = {}
        self.lock = threading.Lock()
        self.started = time.time()

    # --- names ---------------------------------------------------------------------------------

    def choice(self, name: str) -> Choice:
        """The model a request names: one given on the command line, else a pulled model."""
        if not isinstance(name, str) or not name.strip():
            raise ModelNotFound("no model named in the request")
        name = name.strip()
        if name in self.fixed:
            return self.fixed[name]
        for served, c in self.fixed.items():  # "e4b" for a command-line "e4b:q4_k_m"
            if c.entry is not None and served.split(":")[0] == name:
                return c
        from g4cli.models import store

        entry = store.resolve_name(name)
        return choose(entry.tag)

    def canonical(self, name: str) -> str:
        return served_name(self.choice(name))

    # --- loading -------------------------------------------------------------------------------

    async def worker(self, name: str) -> Worker:
        """The running worker of a model, loading it first if need be (503 when memory is short)."""
        key, worker = self._start(name)
        if not worker.loaded.is_set():
            await asyncio.get_running_loop().run_in_executor(None, worker.loaded.wait)
        return self._loaded(key, worker)

    def load_now(self, name: str) -> Worker:
        """``worker``, waiting here: for the models named at start, before the server answers."""
        key, worker = self._start(name)
        worker.loaded.wait()
        return self._loaded(key, worker)

    def _start(self, name: str) -> tuple[str, Worker]:
        choice = self.choice(name)
        key = served_name(choice)
        with self.lock:
            worker = self.workers.get(key)
            if worker is None:
                self._make_room(choice)
                worker = Worker(
                    choice, self.config.load, parallel=self.config.parallel, max_queue=self.config.max_queue
                )
                self.workers[key] = worker
                worker.start()
        return key, worker

    def _loaded(self, key: str, worker: Worker) -> Worker:
        if worker.load_error is not None:
            with self.lock:
                if self.workers.get(key) is worker:
                    del self.workers[key]
            err = worker.load_error
            raise err if isinstance(err, G4Error) else G4Error(f"{key}: cannot load ({err})")
        worker.last_used = time.monotonic()
        return worker

    def _make_room(self, choice: Choice) -> None:
        """Unload idle models (least recently used first) until ``choice`` fits; else refuse."""
        from g4cli.models.fit import mem_available

        need = memory_need(choice)
        while True:
            held = sum(memory_need(w.choice) for w in self.workers.values())
            if self.config.max_memory is not None:
                room = self.config.max_memory - held
            else:
                room = mem_available() or need
            if need <= room:
                return
            idle = sorted((w for w in self.workers.values() if w.load_count == 0), key=lambda w: w.last_used)
            if not idle:
                raise OutOfMemory(
                    f"not enough memory to load {served_name(choice)}: it needs {need / 1e9:.1f} GB and "
                    f"{max(room, 0) / 1e9:.1f} GB is free while the loaded models are busy"
                )
            self._unload(idle[0])

    def _unload(self, worker: Worker) -> None:
        worker.stop()
        for key, w in list(self.workers.items()):
            if w is worker:
                del self.workers[key]

    def unload(self, name: str) -> bool:
        with self.lock:
            worker = self.workers.get(self.canonical(name))
            if worker is None:
                return False
            self._unload(worker)
            return True

    def reap(self) -> None:
        """Unload models idle longer than their keep-alive."""
        now = time.monotonic()
        with self.lock:
            for worker in list(self.workers.values()):
                keep = worker.keep_alive if worker.keep_alive is not None else self.config.keep_alive
                if keep >= 0 and worker.load_count == 0 and now - worker.last_used >= keep:
                    self._unload(worker)

    def loaded(self) -> list[Worker]:
        with self.lock:
            return [w for w in self.workers.values() if w.loaded.is_set() and w.load_error is None]

    def close(self) -> None:
        with self.lock:
            for worker in list(self.workers.values()):
                self._unload(worker)

"""llama.cpp's log lines, kept instead of printed: echoed with ``G4_LLAMA_LOG=1``, quoted on failure."""

from __future__ import annotations

import ctypes
import os

import llama_cpp  # before numpy: a numpy-first import crashed a CUDA build at model load
import llama_cpp.mtmd_cpp as mtmd


class LlamaLog:
    """One instance for the process: llama.cpp keeps the callback pointer for good, so the ctypes
    callback must never be garbage-collected."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.echo = False

        @llama_cpp.llama_log_callback
        def on_log(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            self.lines.append(text.decode("utf-8", "replace"))
            del self.lines[:-1000]
            if self.echo:
                os.write(2, text)

        self.callback = on_log

    def install(self, echo: bool | None = None) -> LlamaLog:
        """Route llama.cpp's and mtmd's logs here (``echo`` defaults to ``G4_LLAMA_LOG``)."""
        self.echo = bool(os.environ.get("G4_LLAMA_LOG")) if echo is None else echo
        llama_cpp.llama_log_set(self.callback, ctypes.c_void_p(0))
        mtmd.mtmd_log_set(self.callback, ctypes.c_void_p(0))
        mtmd.mtmd_helper_log_set(self.callback, ctypes.c_void_p(0))
        return self

    def last_error(self) -> str:
        for line in reversed(self.lines):
            if "error" in line.lower() or "failed" in line.lower():
                return line.strip()
        return ""


LOG = LlamaLog()

"""What owns a llama.cpp object: ``close()`` frees it, and ``with`` closes it."""

from __future__ import annotations

from typing import Any


class Handle:
    """A context manager around ``close()`` (idempotent in every subclass)."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

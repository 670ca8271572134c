"""Typed access to a request's JSON body: every wrong type or value is a 400 naming the field."""

from __future__ import annotations

from typing import Any

from g4cli.errors import UsageError


class BadRequest(UsageError):
    """A request the server refuses (HTTP 400); ``param`` names the field at fault."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


class Body:
    def __init__(self, data: Any, path: str = "") -> None:
        if not isinstance(data, dict):
            raise BadRequest(f"{path or 'the request body'} must be a JSON object", param=path or None)
        self.data, self.path = data, path

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        value = self.data.get(key)
        if value is None:
            if required:
                raise BadRequest(f"{self._name(key)} is required", param=self._name(key))
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise BadRequest(f"{self._name(key)} must be {names}, got {type(value).__name__}", param=self._name(key))
        return value

    def number(self, key: str, lo: float | None = None, hi: float | None = None) -> float | None:
        value = self.get(key, float)
        if value is not None and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            rng = (
                f"[{lo}, {hi}]" if lo is not None and hi is not None else (f">= {lo}" if lo is not None else f"<= {hi}")
            )
            raise BadRequest(f"{self._name(key)} must be {rng}, got {value}", param=self._name(key))
        return float(value) if value is not None else None

    def integer(self, key: str, lo: int | None = None) -> int | None:
        value = self.get(key, int)
        if value is not None and lo is not None and value < lo:
            raise BadRequest(f"{self._name(key)} must be >= {lo}, got {value}", param=self._name(key))
        return value

    def sub(self, key: str) -> Body | None:
        value = self.data.get(key)
        return None if value is None else Body(value, self._name(key))

    def items(self, key: str) -> list[Any]:
        return self.get(key, list, [])

    def strings(self, key: str) -> list[str]:
        """A string or a list of strings (``stop``)."""
        value = self.data.get(key)
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise BadRequest(f"{self._name(key)} must be a string or a list of strings", param=self._name(key))

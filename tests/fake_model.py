"""A scripted stand-in for a loaded model (as simonw/llm's MockModel), for fast Session and REPL
unit tests. It follows the ``ChatModel`` protocol; the real-model tests stay."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from g4cli.chat.conversation import Event, Stats, Turn
from g4cli.chat.media import Media
from g4cli.chat.runtime.model import require
from g4cli.chat.settings import Sampling


@dataclass
class FakeModel:
    """Answers with ``replies`` in turn; a token is a word; a media item costs ``media_tokens``."""

    replies: list[str] = field(default_factory=lambda: ["ok"])
    n_ctx: int = 4096
    capabilities: set[str] = field(default_factory=lambda: {"vision", "audio"})
    media_tokens: int = 100
    name: str = "fake"
    seen: list[list[Turn]] = field(default_factory=list)  # the turns of every generate call

    def require(self, capability: str, detail: str = "") -> None:
        require(capability, self.capabilities, self.name, None, detail)

    def check_media(self, media: list[Media]) -> None:
        for m in media:
            self.require("vision" if m.kind == "image" else "audio", m.name)

    def prompt_tokens(self, turns: list[Turn], think: bool = False) -> int:
        return sum(len(t.text.split()) + 4 + self.media_tokens * len(t.media) for t in turns) + 3

    def generate(
        self, turns: list[Turn], sampling: Sampling | None = None, stats: Stats | None = None
    ) -> Iterator[Event]:
        sampling = sampling or Sampling()
        stats = stats if stats is not None else Stats()
        self.seen.append(list(turns))
        stats.prompt_tokens = stats.prompt_eval_tokens = self.prompt_tokens(turns)
        words = self.replies[(len(self.seen) - 1) % len(self.replies)].split(" ")
        limit = sampling.max_tokens or len(words)
        for i, word in enumerate(words[:limit]):
            stats.gen_tokens += 1
            yield Event("text", word if i == 0 else " " + word)
        yield Event("done", finish="length" if limit < len(words) else "stop", stats=stats)

    def describe(self) -> dict[str, object]:
        return {"arch": "fake", "layers": 0, "width": 0, "trained_ctx": self.n_ctx}

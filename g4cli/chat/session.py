"""A chat session: the conversation, its settings and attachments, around a loaded model.

The REPL, one-shot/pipe mode and ``g4 doctor`` all go through ``Session.send``; it streams
``Event``s and records the turn only when it finishes (or is interrupted), so a failure leaves
the conversation as it was.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from g4cli.chat import media as media_mod
from g4cli.chat.conversation import ChatModel, Event, Stats, Turn
from g4cli.chat.settings import Sampling
from g4cli.errors import G4Error, MediaError, RuntimeFailure, UsageError

SAVE_VERSION = 1
ANSWER_RESERVE = 1024  # tokens kept free for the answer when fitting a long conversation


@dataclass
class Reply:
    """What one ``send`` produced."""

    text: str = ""
    thought: str = ""
    finish: str | None = None
    stats: Stats = field(default_factory=Stats)
    interrupted: bool = False


class Session:
    def __init__(self, model: ChatModel, *, system: str | None = None, sampling: Sampling | None = None) -> None:
        self.model = model
        self.system = system
        self.sampling = sampling or Sampling()
        self.turns: list[Turn] = []
        self.pending: list[media_mod.Media] = []  # attachments for the next message
        self.last_stats: Stats | None = None

    # --- attachments -----------------------------------------------------------------------

    def attach(self, source: str | Path, kind: str | None = None, stdin: bytes | None = None) -> media_mod.Media:
        """Decode an attachment for the next message; refuse what the model cannot take."""
        m = media_mod.load(source, kind, stdin=stdin)  # type: ignore[arg-type]
        self.attach_media(m)
        return m

    def attach_media(self, m: media_mod.Media) -> None:
        self.model.check_media([m])
        self.pending.append(m)

    # --- the conversation ------------------------------------------------------------------

    def _all_turns(self, extra: list[Turn]) -> list[Turn]:
        head = [Turn("system", self.system)] if self.system else []
        return head + self.turns + extra

    def fit(self, turns: list[Turn]) -> tuple[list[Turn], int]:
        """Drop the oldest turns (never the system prompt or the last one) until the prompt and
        room for the answer fit the context; returns the turns kept and how many were dropped."""
        n_ctx = self.model.n_ctx
        reserve = min(self.sampling.max_tokens or ANSWER_RESERVE, ANSWER_RESERVE, n_ctx // 4)
        turns = list(turns)
        dropped = 0
        while True:
            n = self.model.prompt_tokens(turns, self.sampling.think)
            if n + reserve <= n_ctx:
                return turns, dropped
            first = 1 if turns and turns[0].role == "system" else 0
            if len(turns) - first <= 1:
                raise RuntimeFailure(
                    f"the message ({n} tokens) does not fit the context ({n_ctx} tokens); use --ctx to enlarge it"
                )
            del turns[first]
            dropped += 1

    def send(self, text: str, reply: Reply | None = None) -> Iterator[Event]:
        """Send a user message (with the pending attachments) and stream the answer.

        The exchange is added to the conversation when the stream ends; if it is interrupted
        (Ctrl-C, or the stream is closed early), the partial answer is kept, and so are its
        stats (marked interrupted). ``reply`` (optional) collects the result.
        """
        reply = reply if reply is not None else Reply()
        user = Turn("user", text, list(self.pending))
        turns, dropped = self.fit(self._all_turns([user]))
        reply.stats.dropped_turns = dropped
        if dropped:
            yield Event("notice", f"context full: dropped the {dropped} oldest turn(s)")
        try:
            for ev in self.model.generate(turns, self.sampling, reply.stats):
                if ev.kind == "text":
                    reply.text += ev.text
                elif ev.kind == "thought":
                    reply.thought += ev.text
                elif ev.kind == "done":
                    reply.finish = ev.finish
                yield ev
        except (KeyboardInterrupt, GeneratorExit):  # Ctrl-C, or the reader stopped reading
            reply.interrupted, reply.finish = True, "interrupted"
            reply.stats.interrupted = True
            self.last_stats = reply.stats
            if reply.text or reply.thought:
                self._record(user, reply, dropped)
            raise
        self._record(user, reply, dropped)

    def _record(self, user: Turn, reply: Reply, dropped: int) -> None:
        del self.turns[:dropped]  # what the fit dropped is forgotten here too (the system prompt is apart)
        self.turns += [user, Turn("assistant", reply.text, thought=reply.thought or None)]
        self.pending = []
        self.last_stats = reply.stats

    def regen(self) -> str:
        """Remove the last answer; return the user message to send again (its media re-pended)."""
        if len(self.turns) < 2 or self.turns[-1].role != "assistant":
            raise UsageError("nothing to regenerate yet")
        self.turns.pop()
        user = self.turns.pop()
        self.pending = list(user.media) + self.pending
        return user.text

    def clear(self) -> None:
        self.turns, self.pending = [], []

    # --- save / load -----------------------------------------------------------------------

    def to_json(self, model_name: str) -> dict[str, Any]:
        return {
            "g4_conversation": SAVE_VERSION,
            "model": model_name,
            "system": self.system,
            "settings": self.sampling.saved(),
            "turns": [
                {
                    "role": t.role,
                    "text": t.text,
                    **({"thought": t.thought} if t.thought else {}),
                    "attachments": [{"kind": m.kind, "path": _abs(m.name), "sha256": m.sha256} for m in t.media],
                }
                for t in self.turns
            ],
        }

    def save(self, path: Path, model_name: str) -> None:
        from g4cli import fsutil

        fsutil.write_json(Path(path).expanduser(), self.to_json(model_name), error=G4Error)

    def load(self, path: Path) -> list[str]:
        """Replace the conversation with a saved one; returns warnings (attachments not restored).

        Attachments are re-read from their paths and must still have the saved sha256.
        Nothing changes if the file is unreadable.
        """
        path = Path(path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise G4Error(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise G4Error(f"{path}: not a saved conversation ({e})") from None
        if not isinstance(data, dict) or data.get("g4_conversation") != SAVE_VERSION:
            raise G4Error(f"{path}: not a g4 conversation file")
        warnings: list[str] = []
        turns: list[Turn] = []
        try:
            for t in data["turns"]:
                if t["role"] not in ("user", "assistant") or not isinstance(t["text"], str):
                    raise ValueError("bad turn")
                restored = []
                for a in t.get("attachments", []):
                    try:
                        m = media_mod.load(a["path"], a["kind"])
                    except MediaError as e:
                        warnings.append(f"attachment not restored: {e}")
                        continue
                    if m.sha256 != a["sha256"]:
                        warnings.append(f"attachment not restored: {a['path']} has changed since it was saved")
                        continue
                    restored.append(m)
                turns.append(Turn(t["role"], t["text"], restored, t.get("thought")))
            settings = Sampling(**{k: v for k, v in data.get("settings", {}).items() if k in Sampling().saved()})
            system = data.get("system")
        except (KeyError, TypeError, ValueError) as e:
            raise G4Error(f"{path}: malformed conversation file ({e})") from None
        self.turns, self.pending, self.sampling = turns, [], settings
        self.system = system if isinstance(system, str) else None
        return warnings


def _abs(name: str) -> str:
    return name if name == "<stdin>" else str(Path(name).expanduser().resolve())

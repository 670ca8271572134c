"""The interactive chat: readline input with history, slash commands, streamed answers.

Ctrl-C stops the answer being written and returns to the prompt; Ctrl-D or /bye leaves.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from g4cli.errors import G4Error, UsageError

if TYPE_CHECKING:
    from g4cli.chat.select import Choice
    from g4cli.chat.session import Session
    from g4cli.chat.settings import ChatOptions

PROMPT, MORE = ">>> ", "... "
HELP = """\
/help, /?            this help
/bye, /exit          leave (Ctrl-D too)
/clear               forget the conversation
/image PATH          attach an image to the next message (Tab completes paths)
/audio PATH          attach an audio file to the next message
/mic                 record from the microphone and send it (with any text after /mic)
/system TEXT         set the system prompt (empty: remove it)
/set [KEY VALUE]     temperature, top_p, top_k, min_p, repeat_penalty, seed, max_tokens, think on|off,
                     image_tokens N
/show                model and settings
/stats               timings of the last answer
/regen               answer the last message again
/save FILE, /load FILE   the conversation as JSON (attachments by path and sha256)
\"\"\"                  start or end a multi-line message
Paths of image or audio files typed or dropped into a message are attached."""
COMMANDS = ["/help", "/?", "/bye", "/exit", "/clear", "/image", "/audio", "/mic", "/system", "/set", "/show",
            "/stats", "/regen", "/save", "/load"]  # fmt: skip
PATH_COMMANDS = ("/image", "/audio", "/save", "/load")


def history_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "g4" / "history"


class LineReader:
    """input() with GNU readline: history across runs, Tab completion of commands and paths."""

    def __init__(self, history: bool) -> None:
        self.history = history and not os.environ.get("G4_NO_HISTORY")
        try:
            import readline
        except ImportError:  # pragma: no cover - readline is there on Linux/macOS Pythons
            self.readline = None
            return
        self.readline = readline
        readline.set_completer_delims(" \t\n")
        readline.set_completer(self._complete)
        readline.parse_and_bind("tab: complete")
        readline.parse_and_bind("set enable-bracketed-paste on")
        if self.history:
            try:
                readline.read_history_file(history_path())
            except (FileNotFoundError, OSError):
                pass

    def _complete(self, text: str, state: int) -> str | None:
        line = self.readline.get_line_buffer() if self.readline else ""
        words = line.split()
        if not words or (len(words) == 1 and not line.endswith(" ")):
            options = [c + " " for c in COMMANDS if c.startswith(text)]
        elif words[0] in PATH_COMMANDS:
            options = [p + ("/" if os.path.isdir(p) else "") for p in glob.glob(os.path.expanduser(text) + "*")]
        else:
            options = []
        return options[state] if state < len(options) else None

    def read(self) -> str | None:
        """One message (a command, a line, or a \"\"\" block); None at end of input (Ctrl-D)."""
        try:
            line = input(PROMPT)
        except EOFError:
            return None
        if line.lstrip().startswith('"""'):
            first = line.lstrip()[3:]
            if first.endswith('"""') and len(first) >= 3:
                return first[:-3]
            lines = [first] if first else []
            while True:
                try:
                    more = input(MORE)
                except EOFError:
                    return "\n".join(lines)
                if more.rstrip().endswith('"""'):
                    lines.append(more.rstrip()[:-3])
                    return "\n".join(lines).strip("\n")
                lines.append(more)
        return line

    def save(self) -> None:
        if self.readline is not None and self.history:
            path = history_path()
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.readline.set_history_length(2000)
                self.readline.write_history_file(path)
            except OSError:
                pass


CANDIDATE = re.compile(r"'[^']+'|\"[^\"]+\"|(?:\\ |\S)+")


def attached_paths(text: str) -> tuple[str, list[Path]]:
    """Split off words that are paths to existing image/audio files (typed, or dropped into the
    terminal: quoted or with backslash-escaped spaces); the rest of the text is kept as typed."""
    from g4cli.chat.media import AUDIO_SUFFIXES, IMAGE_SUFFIXES

    found: list[Path] = []
    kept: list[str] = []
    last = 0
    for m in CANDIDATE.finditer(text):
        word = m.group(0)
        raw = word[1:-1] if word[0] in "'\"" and word[-1] == word[0] and len(word) > 1 else word.replace("\\ ", " ")
        path = Path(os.path.expanduser(raw))
        if path.suffix.lower() in IMAGE_SUFFIXES | AUDIO_SUFFIXES and path.is_file():
            found.append(path)
            kept.append(text[last : m.start()])
            last = m.end()
    if not found:
        return text, []
    kept.append(text[last:])
    return re.sub(r"[ \t]{2,}", " ", "".join(kept)).strip(), found


class Repl:
    def __init__(self, session: Session, choice: Choice, opts: ChatOptions, err: Any = None) -> None:
        from g4cli.render import err_console

        self.session, self.choice, self.opts = session, choice, opts
        self.console = err or err_console()
        self.handlers: dict[str, Callable[[str], bool | None]] = {
            "/help": self.cmd_help, "/?": self.cmd_help, "/bye": self.cmd_bye, "/exit": self.cmd_bye,
            "/clear": self.cmd_clear, "/image": self.cmd_image, "/audio": self.cmd_audio, "/mic": self.cmd_mic,
            "/system": self.cmd_system, "/set": self.cmd_set, "/show": self.cmd_show, "/stats": self.cmd_stats,
            "/regen": self.cmd_regen, "/save": self.cmd_save, "/load": self.cmd_load,
        }  # fmt: skip

    def say(self, text: str, style: str = "dim") -> None:
        self.console.print(text, style=style, markup=False, highlight=False)

    def error(self, e: G4Error) -> None:
        self.console.print(f"Error: {e.message}" + (f" ({e.hint})" if e.hint else ""), style="red", markup=False)

    # --- the loop ----------------------------------------------------------------------------

    def run(self, reader: LineReader) -> None:
        self.say(f"{self.choice.name} · /help for commands · Ctrl-D or /bye to leave")
        try:
            while True:
                try:
                    line = reader.read()
                except KeyboardInterrupt:
                    sys.stderr.write("\n")
                    continue
                if line is None:
                    sys.stderr.write("\n")
                    return
                if not line.strip():
                    continue
                try:
                    if line.startswith("/") and self.command(line.strip()):
                        return
                    if not line.startswith("/"):
                        self.message(line)
                except G4Error as e:
                    self.error(e)
                except KeyboardInterrupt:  # Ctrl-C anywhere in a command: back to the prompt
                    self.say("(stopped)")
        finally:
            reader.save()

    def command(self, line: str) -> bool:
        """Run a slash command; True means leave."""
        name, _, arg = line.partition(" ")
        handler = self.handlers.get(name)
        if handler is None:
            from difflib import get_close_matches

            close = get_close_matches(name, COMMANDS, n=1)
            raise UsageError(
                f"unknown command {name}" + (f"; did you mean {close[0]}?" if close else "; /help lists them")
            )
        return bool(handler(arg.strip()))

    def message(self, text: str) -> None:
        text, paths = attached_paths(text)
        for p in paths:
            m = self.session.attach(p)
            self.say(f"attached {m.describe()}")
        self.respond(text)

    def respond(self, text: str) -> None:
        """Send a message and show the reply (Ctrl-C stops it; what was said is kept)."""
        from g4cli.chat.session import Reply
        from g4cli.chat.show import print_stats, stream_reply

        reply = Reply()
        try:
            stream_reply(self.session, text, reply, show_thoughts=True, notice=lambda t: self.say(t, "yellow"))
        finally:
            if self.opts.verbose:
                print_stats(reply.stats)
        if reply.finish == "length":
            self.say("(stopped at --max-tokens)")
        elif reply.finish == "context":
            self.say("(stopped: the context is full)")

    # --- commands ------------------------------------------------------------------------------

    def cmd_help(self, _: str) -> None:
        self.say(HELP, "")

    def cmd_bye(self, _: str) -> bool:
        return True

    def cmd_clear(self, _: str) -> None:
        self.session.clear()
        self.say("conversation cleared")

    def _attach(self, arg: str, kind: str) -> None:
        if not arg:
            raise UsageError(f"/{kind} needs a path")
        path = os.path.expanduser(shlex.split(arg)[0] if arg[0] in "'\"" else arg)
        m = self.session.attach(path, kind)
        self.say(f"attached {m.describe()} — it goes with your next message")

    def cmd_image(self, arg: str) -> None:
        self._attach(arg, "image")

    def cmd_audio(self, arg: str) -> None:
        self._attach(arg, "audio")

    def cmd_mic(self, arg: str) -> None:
        from g4cli.chat import mic

        self.session.model.require("audio")  # before anything is recorded
        clip = mic.record_for_chat(self.opts.mic)
        self.session.attach_media(clip)
        self.say(f"recorded {clip.describe()}")
        self.respond(arg)

    def cmd_system(self, arg: str) -> None:
        self.session.system = arg or None
        self.say("system prompt set" if arg else "system prompt removed")

    def cmd_set(self, arg: str) -> None:
        from g4cli.chat.settings import image_tokens_setting

        s, model = self.session.sampling, self.session.model
        if not arg:
            budget = f"  image_tokens={model.image_tokens}" if "vision" in model.capabilities else ""
            self.say(s.describe() + budget, "")
            return
        key, _, value = arg.partition(" ")
        if key.replace("-", "_") == "image_tokens":  # a load setting: the model re-creates its projector
            n = image_tokens_setting(value)
            model.require("vision")
            model.set_image_tokens(n)
            self.say(f"image_tokens = {n} (images are read again at the new budget)")
            return
        self.say(f"{key} = {s.set(key, value)}")

    def cmd_show(self, _: str) -> None:
        m = self.session.model
        d = m.describe()
        lines = [
            f"model      {self.choice.name}",
            f"file       {self.choice.gguf}",
            f"projector  {self.choice.mmproj or 'none'}",
            f"can take   text{''.join(', ' + c for c in sorted(m.capabilities))}",
            f"arch       {d['arch']}, {d['layers']} layers, {d['width']} wide",
            f"context    {m.n_ctx} tokens (trained {d['trained_ctx']})",
            f"system     {self.session.system or '(none)'}",
            "settings   " + self.session.sampling.describe(),
        ]
        self.say("\n".join(lines), "")

    def cmd_stats(self, _: str) -> None:
        from g4cli.chat.show import print_stats

        if self.session.last_stats is None:
            self.say("no answer yet")
        else:
            print_stats(self.session.last_stats)

    def cmd_regen(self, _: str) -> None:
        self.respond(self.session.regen())

    def cmd_save(self, arg: str) -> None:
        if not arg:
            raise UsageError("/save needs a file name")
        self.session.save(Path(arg), self.choice.name)
        self.say(f"saved {len(self.session.turns)} turns to {arg}")

    def cmd_load(self, arg: str) -> None:
        if not arg:
            raise UsageError("/load needs a file name")
        for warning in self.session.load(Path(arg)):
            self.say(warning, "yellow")
        self.say(f"loaded {len(self.session.turns)} turns from {arg}")


def run(choice: Choice, opts: ChatOptions) -> None:
    from g4cli.chat.load import loaded
    from g4cli.chat.session import Session

    reader = LineReader(opts.history)
    with loaded(choice, opts.load, needs=opts.needs, verbose=opts.verbose) as model:
        session = Session(model, system=opts.system, sampling=opts.sampling)
        for path in opts.image:
            session.attach(path, "image")
        for path in opts.audio:
            session.attach(path, "audio")
        Repl(session, choice, opts).run(reader)

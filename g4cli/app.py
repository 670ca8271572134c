"""The ``g4`` command: registers the commands and maps every error to one line + exit code."""

from __future__ import annotations

import os
import sys

import typer

from g4cli.commands import chat as chat_cmd
from g4cli.commands import convert as convert_cmd
from g4cli.commands import devices as devices_cmd
from g4cli.commands import doctor as doctor_cmd
from g4cli.commands import list as list_cmd
from g4cli.commands import pull as pull_cmd
from g4cli.commands import quality as quality_cmd
from g4cli.commands import rm as rm_cmd
from g4cli.commands import rpc_server as rpc_server_cmd
from g4cli.commands import serve as serve_cmd
from g4cli.commands import show as show_cmd
from g4cli.errors import G4Error

app = typer.Typer(
    name="g4",
    help=(
        "Run Google's Gemma 4 models locally: pull, convert, quantize, and chat with text, images,\n"
        "audio files and the microphone. Answers go to stdout, everything else to stderr.\n\n"
        "Examples:\n\n"
        "\b\n"
        "  g4 pull e4b                               # download + quantize google/gemma-4-E4B-it\n"
        "  g4 chat                                   # the REPL (the latest pulled model)\n"
        '  g4 chat e4b --image photo.jpg "What is this?"\n'
        '  cat notes.txt | g4 chat e4b "summarize" > summary.txt\n'
        "  g4 chat e4b --mic                         # speak; the answer is printed\n"
        "  g4 serve e4b                              # OpenAI + Ollama APIs on :11435\n"
        "  g4 list; g4 show e4b; g4 rm e4b\n"
        "  g4 convert ./gemma-4-E2B-it --quant q8_0  # a local checkpoint -> GGUF\n"
        "  g4 doctor                                 # check this install (and its GPUs), no download\n"
        "  g4 rpc-server                             # lend this machine's GPUs to g4 chat --rpc"
    ),
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command("chat")(chat_cmd.chat)
app.command("pull", no_args_is_help=True)(pull_cmd.pull)
app.command("list")(list_cmd.list)
app.command("show", no_args_is_help=True)(show_cmd.show)
app.command("rm", no_args_is_help=True)(rm_cmd.rm)
app.command("quality", no_args_is_help=True)(quality_cmd.quality)
app.command("convert", no_args_is_help=True)(convert_cmd.convert)
app.command("serve")(serve_cmd.serve)
app.command("doctor")(doctor_cmd.doctor)
app.command("devices")(devices_cmd.devices)
app.command("rpc-server")(rpc_server_cmd.rpc_server)


@app.callback()
def _root() -> None:
    """Run Google's Gemma 4 models locally."""


def main() -> None:
    """Entry point. Typer handles usage errors (exit 2) and Ctrl-C (exit 130); a domain error
    becomes one ``Error: ...`` line on stderr with its exit code (traceback with G4_DEBUG=1)."""
    try:
        app()
    except G4Error as e:
        if os.environ.get("G4_DEBUG"):
            raise
        sys.stderr.write(f"Error: {e.message}" + (f" ({e.hint})" if e.hint else "") + "\n")
        sys.stderr.flush()
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        raise SystemExit(130) from None
    except BrokenPipeError:
        # the reader went away (`g4 ... | head`): exit quietly, like other Unix tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(141) from None


if __name__ == "__main__":
    main()

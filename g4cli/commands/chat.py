"""``g4 chat``: the REPL on a terminal; one answer for a prompt argument or a pipe."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from g4cli.options import (
    BatchInvariantOpt,
    ChatThreadsOpt,
    DrafterOpt,
    DraftMaxOpt,
    DraftOpt,
    FlashAttnOpt,
    GpuLayersOpt,
    ImageTokensOpt,
    KvTypeOpt,
    MainGpuOpt,
    RpcOpt,
    SplitModeOpt,
    TensorSplitOpt,
)


def chat(  # long: one parameter per option, as Typer declares them; the body only builds ChatOptions
    model: Annotated[
        str | None,
        typer.Argument(
            metavar="MODEL",
            help="A pulled model (e4b, e4b:q8_0) or a GGUF path. Default: the configured or latest.",
            show_default=False,
        ),
    ] = None,
    prompt: Annotated[
        str | None, typer.Argument(metavar="PROMPT", help="Answer this once and exit.", show_default=False)
    ] = None,
    image: Annotated[
        list[str] | None, typer.Option("--image", "-i", metavar="PATH", help="Attach an image (repeatable; - = stdin).")
    ] = None,
    audio: Annotated[
        list[str] | None,
        typer.Option("--audio", "-a", metavar="PATH", help="Attach an audio file (repeatable; - = stdin)."),
    ] = None,
    mic: Annotated[bool, typer.Option("--mic", help="Record one utterance from the microphone and send it.")] = False,
    system: Annotated[str | None, typer.Option("--system", "-s", help="System prompt.")] = None,
    think: Annotated[
        bool, typer.Option("--think", help="Let the model think first (thinking goes to stderr).")
    ] = False,
    temperature: Annotated[
        float | None, typer.Option("--temp", help="Sampling temperature (default 1.0; 0 = greedy).")
    ] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling (default 0.95).")] = None,
    top_k: Annotated[int | None, typer.Option("--top-k", help="Top-k sampling (default 64; 0 = off).")] = None,
    min_p: Annotated[float | None, typer.Option("--min-p", help="Min-p sampling (default 0 = off).")] = None,
    repeat_penalty: Annotated[
        float | None, typer.Option("--repeat-penalty", help="Repetition penalty (1 = off).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Random seed for reproducible sampling.")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", "-n", help="Stop after this many tokens.")] = None,
    ctx: Annotated[int | None, typer.Option("--ctx", help="Context size in tokens (default 8192).")] = None,
    gpu_layers: GpuLayersOpt = "auto",
    split_mode: SplitModeOpt = "layer",
    tensor_split: TensorSplitOpt = None,
    main_gpu: MainGpuOpt = 0,
    threads: ChatThreadsOpt = None,
    flash_attn: FlashAttnOpt = "auto",
    kv_type: KvTypeOpt = "f16",
    image_tokens: ImageTokensOpt = None,
    rpc: RpcOpt = None,
    draft: DraftOpt = "auto",
    draft_max: DraftMaxOpt = 3,
    drafter: DrafterOpt = None,
    batch_invariant: BatchInvariantOpt = False,
    mmproj: Annotated[Path | None, typer.Option("--mmproj", help="Projector GGUF for a model given as a path.")] = None,
    schema: Annotated[
        str | None,
        typer.Option("--schema", metavar="FILE|JSON", help="Answer with JSON valid against this JSON Schema."),
    ] = None,
    output_format: Annotated[
        str | None, typer.Option("--format", metavar="json", help="Answer with a JSON object (any shape).")
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object (answer, thinking, tokens, timings).")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Load time, tokens/s, time to first token, memory.")
    ] = False,
    input_device: Annotated[
        str | None, typer.Option("--input-device", help="Microphone: name or index (g4 devices).")
    ] = None,
    silence: Annotated[
        float, typer.Option("--silence", help="Microphone: stop after this many seconds of silence.")
    ] = 1.5,
    max_seconds: Annotated[float, typer.Option("--max-seconds", help="Microphone: longest recording.")] = 30.0,
    save_audio: Annotated[
        Path | None, typer.Option("--save-audio", help="Microphone: keep the recording as WAV.")
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Never answer through a running g4 serve (G4_HOST); load the model here.")
    ] = False,
    no_history: Annotated[
        bool, typer.Option("--no-history", help="Do not read or write the REPL history file.")
    ] = False,
) -> None:
    """Chat with a model: a REPL on a terminal, one answer in a pipe or with a PROMPT.

    The answer alone goes to stdout (no spinner, no colours when piped); everything else goes
    to stderr. Piped input is placed before PROMPT. In the REPL type /help for commands;
    paths of images or audio files typed or dropped into a message are attached.

    Examples:

    \b
      g4 chat                                   # REPL with the default model
      g4 chat e4b --image photo.jpg "What is in this picture?"
      cat notes.txt | g4 chat e4b "summarize" > summary.txt
      g4 chat e2b --audio meeting.m4a "List the action items" --json
      g4 chat e4b --mic                         # speak, get the answer on stdout
      g4 chat e4b --schema person.json "Who wrote Faust?"   # JSON valid against the schema
      g4 chat e4b --local "hi"                  # never through a running g4 serve
      g4 chat 31b --rpc 127.0.0.1:50052 "hi"    # layers on a g4 rpc-server too (ssh -L to reach it)
      g4 chat 31b --tensor-split 3,1 -v "hi"    # two GPUs, 3:1; -v prints the split
      g4 chat e4b --draft off "hi"              # without the assistant drafter
    """
    import llama_cpp  # noqa: F401  -- first, ahead of numpy (see g4cli/chat/runtime/model.py)

    from g4cli.chat import oneshot
    from g4cli.chat.select import choose, split_args
    from g4cli.chat.settings import (
        ChatOptions,
        LoadOptions,
        MicOptions,
        Sampling,
        gpu_layers_value,
        response_format,
        tensor_split_value,
    )
    from g4cli.errors import UsageError

    given = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": min_p}
    given["repeat_penalty"] = repeat_penalty
    opts = ChatOptions(
        sampling=Sampling(
            **{k: v for k, v in given.items() if v is not None}, seed=seed, max_tokens=max_tokens, think=think
        ),
        load=LoadOptions(
            ctx=ctx,
            threads=threads,
            gpu_layers=gpu_layers_value(gpu_layers),
            split_mode=split_mode,
            tensor_split=tensor_split_value(tensor_split),
            main_gpu=main_gpu,
            mmproj=mmproj,
            flash_attn=flash_attn,
            kv_type=kv_type,
            image_tokens=image_tokens,
            rpc=rpc,
            draft=draft,
            draft_max=draft_max,
            drafter=drafter,
            batch_invariant=batch_invariant,
        ),
        mic=MicOptions(input_device=input_device, silence=silence, max_seconds=max_seconds, save_audio=save_audio),
        image=image or [],
        audio=audio or [],
        record=mic,
        system=system,
        json=json_out,
        verbose=verbose,
        history=not no_history,
        local=local,
        response_format=response_format(schema, output_format),
    ).validate()
    model, prompt = split_args(model, prompt)  # `g4 chat "question"`: the default model answers
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and prompt is None and not json_out and not mic
    if interactive:
        from g4cli.chat import repl

        repl.run(choose(model, mmproj), opts)
        return
    if json_out and sys.stdout.isatty() and prompt is None and sys.stdin.isatty() and not mic:
        raise UsageError("--json needs a PROMPT or piped input")
    oneshot.one_shot(model, prompt, opts)

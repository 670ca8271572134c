"""``g4 serve``: the OpenAI and Ollama APIs on g4's runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from g4cli.options import (
    BatchInvariantOpt,
    ChatThreadsOpt,
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

DEFAULT_PORT = 11435


def serve(  # long: one parameter per option, as Typer declares them; the body only builds the settings
    models: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[MODEL]...", help="Models to load at start (pulled names or GGUF paths).", show_default=False
        ),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = DEFAULT_PORT,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="G4_API_KEY",
            help="Require Authorization: Bearer KEY (or G4_API_KEY).",
            show_default=False,
        ),
    ] = None,
    parallel: Annotated[
        int, typer.Option("--parallel", help="Answers decoded at once per model (continuous batching).")
    ] = 1,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Requests waiting per model beyond --parallel; then 503.")
    ] = 16,
    ctx: Annotated[int | None, typer.Option("--ctx", help="Context per conversation in tokens (default 8192).")] = None,
    keep_alive: Annotated[
        str, typer.Option("--keep-alive", help="Unload a model idle this long (5m, 1h, 0, -1 = never).")
    ] = "5m",
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
    batch_invariant: BatchInvariantOpt = False,
    max_body: Annotated[int, typer.Option("--max-body", metavar="MB", help="Largest request body in MB.")] = 64,
    max_memory: Annotated[
        float | None,
        typer.Option("--max-memory", metavar="GB", help="Memory the loaded models may take (default: what is free)."),
    ] = None,
    allow_files: Annotated[
        Path | None, typer.Option("--allow-files", metavar="DIR", help="Let requests name image/audio files in DIR.")
    ] = None,
    allow_remote_media: Annotated[
        bool, typer.Option("--allow-remote-media", help="Fetch http(s) image URLs that requests name.")
    ] = False,
    log_format: Annotated[str, typer.Option("--log-format", help="Request log on stderr: text or json.")] = "text",
) -> None:
    """Serve models over HTTP: the OpenAI API (/v1) and the Ollama API (/api).

    Several conversations share one loaded model (--parallel N decodes N answers in the same
    steps); a request that extends an earlier conversation evaluates only its new tokens.
A model's assistant drafter (pulled beside it) drafts tokens that the model verifies in the
same steps: the same answers, fewer model passes (--draft off to decode without it).
    Models named here load at start; others load from g4's store on first use and unload after
    --keep-alive idle. Binds 127.0.0.1 unless told otherwise; with --api-key every route but
    /health needs `Authorization: Bearer KEY`. One log line per request goes to stderr.

    Examples:

    \b
      g4 serve e4b                               # http://127.0.0.1:11435
      g4 serve e4b 31b --parallel 4 --api-key secret
      g4 serve e4b --draft on --draft-max 4       # refuse to start without e4b's drafter
      g4 serve 31b --rpc 127.0.0.1:50052,127.0.0.1:50053   # layers on two g4 rpc-servers
      curl http://127.0.0.1:11435/v1/chat/completions \\
           -d '{"model": "e4b", "messages": [{"role": "user", "content": "Hi"}]}'
      OLLAMA_HOST=127.0.0.1:11435 ollama run e4b  # Ollama's own CLI and apps

    The openai client (Python):

    \b
      from openai import OpenAI
      client = OpenAI(base_url="http://127.0.0.1:11435/v1", api_key="unused")
      r = client.chat.completions.create(model="e4b", messages=[{"role": "user", "content": "Hi"}])

    Open WebUI: set the OpenAI API URL to http://HOST:11435/v1 (Settings > Connections), or

    \b
      docker run -p 3000:8080 -e OPENAI_API_BASE_URL=http://host.docker.internal:11435/v1 \\
           ghcr.io/open-webui/open-webui
    """
    from g4cli.chat.settings import LoadOptions, gpu_layers_value, tensor_split_value
    from g4cli.errors import UsageError
    from g4cli.serve import run
    from g4cli.serve.ollama_api import keep_alive as duration

    if parallel < 1 or parallel > 64:
        raise UsageError("--parallel must be in 1..64")
    if max_queue < 0:
        raise UsageError("--max-queue must be >= 0")
    if log_format not in ("text", "json"):
        raise UsageError("--log-format must be text or json")
    if allow_files is not None and not allow_files.is_dir():
        raise UsageError(f"--allow-files {allow_files}: not a directory")
    try:
        keep = duration(keep_alive)
    except Exception:
        raise UsageError(f"--keep-alive {keep_alive!r}: use a duration like 5m, 30s, 1h, 0 or -1") from None
    load = LoadOptions(
        ctx=ctx,
        threads=threads,
        gpu_layers=gpu_layers_value(gpu_layers),
        split_mode=split_mode,
        tensor_split=tensor_split_value(tensor_split),
        main_gpu=main_gpu,
        flash_attn=flash_attn,
        kv_type=kv_type,
        image_tokens=image_tokens,
        rpc=rpc,
        draft=draft,
        draft_max=draft_max,
        batch_invariant=batch_invariant,
    ).validate()
    run.serve(
        models or [],
        load=load,
        host=host,
        port=port,
        api_key=api_key,
        parallel=parallel,
        max_queue=max_queue,
        keep_alive=float(keep if keep is not None else 300),
        max_body=max_body << 20,
        max_memory=int(max_memory * 1e9) if max_memory else None,
        allow_files=allow_files,
        allow_remote_media=allow_remote_media,
        log_json=log_format == "json",
    )

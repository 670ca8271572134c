"""``g4 rpc-server``: lend this machine's devices to a g4 elsewhere (llama.cpp's RPC backend)."""

from __future__ import annotations

from typing import Annotated

import typer

INSECURE_FLAG = "--insecure-remote-access"


def rpc_server(
    host: Annotated[str, typer.Option("--host", help="IPv4 address to bind (loopback unless told otherwise).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="Port to listen on.")] = 50052,
    device: Annotated[
        list[str] | None,
        typer.Option(
            "--device", "-d", metavar="NAME[,NAME]", help="Devices to serve (default: every GPU, else the CPU)."
        ),
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", min=1, help="CPU threads (default: the physical cores).")
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            INSECURE_FLAG,
            help="Allow a non-loopback --host. The RPC protocol has no authentication or encryption: anyone "
            "who reaches the port can use this machine's devices and memory. Prefer an ssh tunnel.",
        ),
    ] = False,
) -> None:
    """Serve this machine's GPUs (or CPU) to `g4 chat/serve --rpc`, through llama.cpp's RPC backend.

    The model's layers are sent here by the client; nothing is read from this machine's disk.
    One client at a time. Binds 127.0.0.1: reach it from another machine through an ssh
    tunnel (on the client: ssh -N -L 50052:127.0.0.1:50052 gpu-box). Needs llama-cpp-python
    built with -DGGML_RPC=on.

    Examples:

    \b
      g4 rpc-server                             # 127.0.0.1:50052, every GPU (or the CPU)
      g4 rpc-server --port 50053 --device CUDA1 # a second server for the second GPU
      g4 chat e4b --rpc 127.0.0.1:50052,127.0.0.1:50053 "hi"   # on the client
    """
    from g4cli.chat.runtime import rpc
    from g4cli.chat.runtime.hardware import physical_cores
    from g4cli.errors import UsageError

    if not rpc.is_loopback(host) and not insecure:
        raise UsageError(
            f"--host {host} would expose an unauthenticated, unencrypted RPC server to the network",
            hint=f"bind 127.0.0.1 and use an ssh tunnel, or add {INSECURE_FLAG} on a network you trust",
        )
    names = [n.strip() for spec in device or [] for n in spec.split(",") if n.strip()]
    rpc.serve(host, port, names, threads or physical_cores())

"""Start the server: resolve and load the named models, then run uvicorn until Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from g4cli.chat.settings import LoadOptions
from g4cli.errors import G4Error
from g4cli.render import info, warn

REAP_EVERY = 1.0  # seconds between keep-alive checks


def _loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    models: list[str],
    *,
    load: LoadOptions,
    host: str,
    port: int,
    api_key: str | None,
    parallel: int,
    max_queue: int,
    keep_alive: float,
    max_body: int,
    max_memory: int | None,
    allow_files: Path | None,
    allow_remote_media: bool,
    log_json: bool,
) -> None:
    import uvicorn

    from g4cli.chat.select import choose
    from g4cli.serve.app import Server, Settings
    from g4cli.serve.media_in import MediaPolicy
    from g4cli.serve.pool import Pool, ServeConfig

    fixed = [choose(m) for m in models]
    config = ServeConfig(
        load=load, parallel=parallel, max_queue=max_queue, keep_alive=keep_alive, max_memory=max_memory
    )
    pool = Pool(config, fixed)
    media = MediaPolicy(allow_files=allow_files, allow_remote=allow_remote_media)
    server = Server(pool, Settings(api_key=api_key, max_body=max_body, media=media, log_json=log_json))
    app = server.app()

    @contextlib.asynccontextmanager
    async def lifespan(_app: object) -> AsyncIterator[None]:
        reaper = asyncio.create_task(_reap(pool))
        info(f"g4 serve: listening on http://{_url_host(host)}:{port} (OpenAI API at /v1, Ollama API at /api)")
        try:
            yield
        finally:
            reaper.cancel()
            pool.close()

    app.router.lifespan_context = lifespan
    if not _loopback(host) and not api_key:
        warn(f"listening on {host} without --api-key: anyone who can reach this port can use the models")
    sock = _bind(host, port)  # bound before the models load: "listening" means it is
    try:
        for name in pool.fixed:  # load what was named at start, before taking requests
            try:
                pool.load_now(name)
            except G4Error as e:
                e.message = f"{name}: {e.message}"
                raise
    except BaseException:
        pool.close()
        sock.close()
        raise
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=3)
    uvicorn.Server(config).run(sockets=[sock])


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise G4Error(f"cannot listen on {host}:{port}: {e.strerror or e}", hint="choose another --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


async def _reap(pool: object) -> None:
    while True:
        await asyncio.sleep(REAP_EVERY)
        pool.reap()  # type: ignore[attr-defined]

"""Real ``g4 rpc-server`` processes on 127.0.0.1 for the RPC and offload tests."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.conftest import g4_executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One ``g4 rpc-server`` process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            # the client's thread count (both default to the physical cores): llama.cpp's CPU results
            # for a long ubatch (an image) differ with the number of threads, not with the hop
            [*g4_executable(), "rpc-server", "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rpc-server exited: {self.proc.stderr.read().decode()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("rpc-server did not start listening")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture(name="servers")
def servers_fixture() -> Iterator[list[Server]]:
    pair = [Server(), Server()]
    try:
        yield pair
    finally:
        for s in pair:
            s.stop()

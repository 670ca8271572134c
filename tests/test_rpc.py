"""llama.cpp's RPC backend through g4: real ``g4 rpc-server`` processes on 127.0.0.1, real chats.

Needs llama-cpp-python built with -DGGML_RPC=on (CI builds it so); skipped otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import llama_cpp
import pytest

from tests.conftest import FAMILIES, g4_executable
from tests.rpc_servers import free_port, servers_fixture  # noqa: F401  -- the servers fixture

pytestmark = pytest.mark.skipif(not llama_cpp.llama_supports_rpc(), reason="llama.cpp built without RPC")

PROMPT = "Tell me about the sea."


def answer(run_g4: Callable, model: Path, *extra: object) -> dict:
    r = run_g4("chat", model, "--temp", "0", "-n", "48", "--json", *extra, PROMPT)
    assert r.returncode == 0, r.err
    return json.loads(r.out)


@pytest.mark.parametrize("family", FAMILIES)
def test_split_across_two_servers_matches_local(family: str, gguf: Callable, run_g4: Callable, servers) -> None:
    """Greedy answers are the same tokens with every layer on the two servers, and with the
    layers split between this process's CPU and the two servers, as with none of them."""
    model = gguf(family, "Q8_0")
    rpc = ",".join(s.endpoint for s in servers)
    local = answer(run_g4, model)
    assert local["tokens"]["generated"] > 8  # a real answer to compare
    for layers in ("99", "3"):
        remote = answer(run_g4, model, "--rpc", rpc, "--gpu-layers", layers)
        assert remote["response"] == local["response"], f"--gpu-layers {layers}"
        assert remote["tokens"] == local["tokens"]
    assert all(s.alive() for s in servers)


def test_an_image_through_the_servers_matches_local(gguf: Callable, run_g4: Callable, media_dir, servers) -> None:
    """The projector goes to the first RPC device with the layers (mtmd's use_gpu): the same answer."""
    model, photo = gguf("e2b", "Q8_0"), media_dir["photo"]
    local = answer(run_g4, model, "--image", photo)
    remote = answer(run_g4, model, "--image", photo, "--rpc", ",".join(s.endpoint for s in servers))
    assert local["tokens"]["prompt"] > 70  # the image's tokens are in
    assert remote["response"] == local["response"] and remote["tokens"] == local["tokens"]


def test_layers_really_go_to_the_servers(gguf: Callable, run_g4: Callable, servers) -> None:
    """llama.cpp's own log: model, KV and compute buffers on both RPC devices."""
    rpc = ",".join(s.endpoint for s in servers)
    r = run_g4(
        "chat", gguf("31b", "Q8_0"), "--rpc", rpc, "--gpu-layers", "99", "-n", "4", "hi", env={"G4_LLAMA_LOG": "1"}
    )
    assert r.returncode == 0, r.err[-2000:]
    for s in servers:
        assert f"[{s.endpoint}] model buffer size" in r.err
        assert f"[{s.endpoint}] compute buffer size" in r.err
    assert "using device RPC0" in r.err and "using device RPC1" in r.err


def test_verbose_prints_the_split(gguf: Callable, run_g4: Callable, servers) -> None:
    """--gpu-layers auto (the default) puts every layer on the two servers, by their free memory."""
    rpc = ",".join(s.endpoint for s in servers)
    r = run_g4("chat", gguf("e2b", "Q8_0"), "--rpc", rpc, "-n", "4", "-v", "hi")
    assert r.returncode == 0, r.err
    assert "11/11 layers on RPC0 (6) + RPC1 (5), KV on GPU, " in r.err


def test_serve_with_rpc_answers_and_holds_its_file_descriptors(gguf: Callable, servers, tmp_path: Path) -> None:
    """g4 serve --rpc: the socket watcher must not leak (it looks at every fd twice a second)."""
    import urllib.request

    port = free_port()
    proc = subprocess.Popen(
        [*g4_executable(), "serve", str(gguf("e2b", "Q8_0")), "--port", str(port),
         "--rpc", ",".join(s.endpoint for s in servers)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                models = json.load(urllib.request.urlopen(f"{base}/v1/models", timeout=2))
                break
            except OSError:
                time.sleep(0.1)
        body = {"model": models["data"][0]["id"], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        req = urllib.request.Request(f"{base}/v1/chat/completions", json.dumps(body).encode(), method="POST")
        answer = json.load(urllib.request.urlopen(req, timeout=60))
        assert answer["usage"]["completion_tokens"] > 0
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        time.sleep(3)  # six rounds of the watcher
        assert len(os.listdir(f"/proc/{proc.pid}/fd")) == fds
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def _chat_until_output(model: Path, rpc: str, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(
        [
            *g4_executable(),
            "chat",
            str(model),
            "--rpc",
            rpc,
            "--gpu-layers",
            "99",
            "--temp",
            "0",
            "-n",
            "100000",
            PROMPT,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    first = proc.stdout.read(1)  # the answer has started: the servers are computing it
    assert first, proc.stderr.read().decode()
    time.sleep(0.5)
    return proc


def _finish(proc: subprocess.Popen, within: float) -> tuple[int, list[str], float]:
    t0 = time.monotonic()
    try:
        _, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"g4 chat still running {within:.0f} s after its server failed (a hang)")
    return proc.returncode, [line for line in err.decode().splitlines() if line.strip()], time.monotonic() - t0


def test_server_killed_mid_answer_is_one_error(gguf: Callable, run_g4: Callable, servers) -> None:
    """SIGKILL one server while it computes: exit 1 and one line naming it, soon; the other
    server keeps running and serves the next client."""
    model = gguf("31b", "F32")  # greedy on these random weights runs to the token limit
    proc = _chat_until_output(model, ",".join(s.endpoint for s in servers))
    servers[1].proc.kill()
    code, lines, took = _finish(proc, within=30)
    assert code == 1
    assert lines == [lines[0]] and lines[0].startswith("Error: the RPC server ")
    assert servers[1].endpoint in lines[0] and "went away" in lines[0]
    assert took < 30
    assert servers[0].alive()
    again = answer(run_g4, gguf("31b", "Q8_0"), "--rpc", servers[0].endpoint, "--gpu-layers", "99")
    assert again["tokens"]["generated"] > 0


def test_server_frozen_mid_answer_times_out(gguf: Callable, servers) -> None:
    """SIGSTOP one server (the kernel still holds its connections open: no error reaches the
    client, which without a timeout waits forever): exit 1 after G4_RPC_TIMEOUT."""
    proc = _chat_until_output(gguf("31b", "F32"), ",".join(s.endpoint for s in servers), env={"G4_RPC_TIMEOUT": "3"})
    servers[1].proc.send_signal(signal.SIGSTOP)
    code, lines, _ = _finish(proc, within=30)
    assert code == 1
    assert len(lines) == 1 and "stopped answering for 3 s" in lines[0], lines


def test_unreachable_server_is_one_error(gguf: Callable, run_g4: Callable) -> None:
    port = free_port()
    r = run_g4("chat", gguf("31b", "Q8_0"), "--rpc", f"127.0.0.1:{port}", "-n", "4", "hi")
    assert r.returncode == 1
    assert r.err_lines == [
        f"Error: cannot reach the RPC server 127.0.0.1:{port} (Connection refused) "
        f"(start it there with: g4 rpc-server --port {port})"
    ]


@pytest.mark.parametrize("spec", ["nohost:", "127.0.0.1:99999", ",", "127.0.0.1:1,127.0.0.1:1"])
def test_bad_rpc_spec_is_a_usage_error(spec: str, run_g4: Callable) -> None:
    r = run_g4("chat", "--local", "--rpc", spec, "-n", "1", "hi")
    assert r.returncode == 2 and r.err.startswith("Error: --rpc"), r.err


def test_rpc_server_refuses_a_public_bind(run_g4: Callable) -> None:
    r = run_g4("rpc-server", "--host", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode == 2
    assert "--insecure-remote-access" in r.err and len(r.err_lines) == 1


def test_rpc_server_port_in_use(run_g4: Callable, servers) -> None:
    r = run_g4("rpc-server", "--port", str(servers[0].port))
    assert r.returncode == 1 and r.err_lines[-1].startswith(f"Error: cannot listen on 127.0.0.1:{servers[0].port}")


def test_rpc_server_unknown_device(run_g4: Callable) -> None:
    r = run_g4("rpc-server", "--port", str(free_port()), "--device", "CUDA7")
    assert r.returncode == 2 and "CUDA7: no such device" in r.err

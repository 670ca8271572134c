"""llama.cpp's RPC backend (ggml-rpc): serve this machine's devices, or use other machines'.

Measured with llama-cpp-python 0.3.36 (tests/test_rpc.py does it again): when a server dies
mid-answer, ggml-rpc calls ``GGML_ABORT`` ("Remote RPC server crashed or returned malformed
response"), which prints a gdb backtrace and kills the process with SIGABRT (exit 134); when a
server stops answering (a frozen process, a vanished host) the client waits in ``recv`` forever,
since ggml-rpc sets no timeout. So a client here

- checks each server with a TCP connection before ggml-rpc connects (ggml-rpc aborts on a
  refused connection too), and gives the handshake ``CONNECT_TIMEOUT`` seconds;
- puts a receive timeout (``G4_RPC_TIMEOUT``, default ``RECV_TIMEOUT`` s: longer than one
  batch takes on a slow server) and TCP keepalive on every socket ggml-rpc opens to them (a
  watcher thread finds them in /proc/self/fd or /dev/fd), so that a silent server becomes a
  failed ``recv``, which ggml-rpc turns into its abort;
- replaces that abort (``ggml_set_abort_callback``) by one ``Error:`` line naming the server
  that went away, and exit code 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import ipaddress
import os
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass

import llama_cpp

from g4cli.errors import RuntimeFailure, UsageError

DEFAULT_PORT = 50052  # llama.cpp's rpc-server default
CONNECT_TIMEOUT = 10.0  # seconds for the TCP probe and ggml-rpc's handshake
RECV_TIMEOUT = 120.0  # seconds a server may take to answer one request (G4_RPC_TIMEOUT)
KEEPALIVE = (10, 5, 3)  # idle s, interval s, probes: a vanished host is noticed in ~25 s
WATCH_EVERY = 0.5  # seconds between looks for new ggml-rpc sockets
REBUILD_HINT = 'reinstall llama-cpp-python with CMAKE_ARGS="-DGGML_RPC=on" (see README: GPU and several machines)'


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_endpoints(spec: str) -> list[Endpoint]:
    """``host:port[,host:port]`` (the port defaults to 50052) -> endpoints, in order."""
    out: list[Endpoint] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        host, sep, port = part.rpartition(":")
        if not sep:
            host, port = part, str(DEFAULT_PORT)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--rpc {part!r}: expected HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}")
        ep = Endpoint(host.strip("[]"), int(port))
        if ep in out:
            raise UsageError(f"--rpc names {ep} twice")
        out.append(ep)
    if not out:
        raise UsageError("--rpc needs at least one HOST:PORT")
    return out


def require_rpc() -> None:
    """One line when this llama.cpp build has no RPC backend."""
    if not llama_cpp.llama_supports_rpc():
        raise RuntimeFailure("this llama-cpp-python was built without RPC support", hint=REBUILD_HINT)
    from g4cli.chat.runtime import ggml_api

    if ggml_api.rpc is None:
        raise RuntimeFailure("libggml-rpc is missing beside llama_cpp", hint=REBUILD_HINT)


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


# --- the client: register servers, guard their sockets -------------------------------------------

_REGISTERED: dict[Endpoint, int] = {}  # endpoint -> devices it added (ggml keeps registries for good)
_GUARD: dict[str, object] = {}


def connect(endpoints: list[Endpoint]) -> list[str]:
    """Register each server's devices with ggml (before a model loads, so that its layers can
    go there); the device names (``RPC0``, ...). A server that cannot be reached is an error."""
    require_rpc()
    from g4cli.chat.runtime import ggml_api

    _install_guard()
    for ep in endpoints:
        if ep in _REGISTERED:
            continue
        _probe(ep)
        done: list[int] = []

        def add(ep: Endpoint = ep, done: list[int] = done) -> None:
            reg = ggml_api.rpc.ggml_backend_rpc_add_server(str(ep).encode())
            if reg:
                ggml_api.ggml.ggml_backend_register(reg)
            done.append(int(ggml_api.base.ggml_backend_reg_dev_count(reg)) if reg else 0)

        worker = threading.Thread(target=add, name=f"rpc-connect {ep}", daemon=True)
        worker.start()
        worker.join(CONNECT_TIMEOUT)
        if not done:  # ggml-rpc holds its registry lock meanwhile: nothing more can be done here
            raise RuntimeFailure(
                f"the RPC server {ep} accepted the connection but did not answer within {CONNECT_TIMEOUT:.0f} s",
                hint="is it serving another client? one g4 rpc-server serves one client at a time",
            )
        if done[0] == 0:
            raise RuntimeFailure(f"the RPC server {ep} offers no device")
        _REGISTERED[ep] = done[0]
    return rpc_device_names()


def rpc_device_names() -> list[str]:
    from g4cli.chat.runtime.devices import list_devices

    return [d.name for d in list_devices() if d.rpc]


def _probe(ep: Endpoint) -> None:
    try:
        with socket.create_connection((ep.host, ep.port), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__ if not isinstance(e, TimeoutError) else "timed out"
        raise RuntimeFailure(
            f"cannot reach the RPC server {ep} ({reason})",
            hint=f"start it there with: g4 rpc-server --port {ep.port}",
        ) from None


def recv_timeout() -> float:
    raw = os.environ.get("G4_RPC_TIMEOUT")
    try:
        return max(1.0, float(raw)) if raw else RECV_TIMEOUT
    except ValueError:
        raise UsageError(f"G4_RPC_TIMEOUT={raw!r}: expected seconds") from None


def _install_guard() -> None:
    """Once per process: the abort callback and the socket watcher."""
    if _GUARD:
        return
    from g4cli.chat.runtime import ggml_api

    @ggml_api.ABORT_CALLBACK
    def on_abort(message: bytes | None) -> None:  # on ggml-rpc's thread; abort() would follow
        text = (message or b"").decode("utf-8", "replace").split(": ", 1)[-1].strip()
        who = _who_went_away() if "RPC" in text else "llama.cpp aborted"
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os.write(2, f"Error: {who} (llama.cpp: {text})\n".encode())
        os._exit(1)

    _GUARD["callback"] = on_abort  # ggml keeps the pointer: never collected
    ggml_api.base.ggml_set_abort_callback(on_abort)
    timeout = recv_timeout()
    watcher = threading.Thread(target=_watch_sockets, args=(timeout,), name="rpc-sockets", daemon=True)
    watcher.start()
    _GUARD["watcher"] = watcher


def _who_went_away() -> str:
    """Which registered server no longer takes connections (a killed one refuses at once)."""
    time.sleep(0.3)  # a killed server's kernel closes the connection before its listening socket
    gone = []
    for ep in _REGISTERED:
        try:
            with socket.create_connection((ep.host, ep.port), timeout=2.0):
                pass
        except OSError:
            gone.append(str(ep))
    if gone:
        return f"the RPC server {', '.join(gone)} went away: it no longer takes connections"
    servers = " or ".join(map(str, _REGISTERED))
    return f"an RPC server ({servers}) stopped answering for {recv_timeout():.0f} s (G4_RPC_TIMEOUT)"


@functools.cache
def _address(host: str) -> str:
    """The IPv4 address ggml-rpc connects to (it resolves with gethostbyname)."""
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def _fd_dir() -> str | None:
    return next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)


def _watch_sockets(timeout: float) -> None:
    """Give every TCP socket to a registered server a receive timeout and keepalive."""
    seen: set[int] = set()
    fd_dir = _fd_dir()
    if fd_dir is None:
        return
    while True:
        peers = {(_address(ep.host), ep.port) for ep in list(_REGISTERED)}
        try:
            fds = [int(n) for n in os.listdir(fd_dir)]
        except OSError:
            fds = []
        for fd in fds:
            with contextlib.suppress(OSError, ValueError):
                st = os.fstat(fd)
                if not stat.S_ISSOCK(st.st_mode) or st.st_ino in seen or not peers:
                    continue
                dup = os.dup(fd)
                try:
                    s = socket.socket(fileno=dup)
                except OSError:
                    os.close(dup)
                    raise
                with s:  # closes the duplicate only: options belong to the socket, which stays open
                    if s.type == socket.SOCK_STREAM and s.getpeername()[:2] in peers:
                        _set_timeouts(s, timeout)
                        seen.add(st.st_ino)
        time.sleep(WATCH_EVERY)


def _set_timeouts(s: socket.socket, timeout: float) -> None:
    seconds = int(timeout)
    tv = ctypes.c_long * 2  # struct timeval {tv_sec, tv_usec}
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bytes(tv(seconds, int((timeout - seconds) * 1e6))))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bytes(tv(seconds, int((timeout - seconds) * 1e6))))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle, interval, count = KEEPALIVE
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPALIVE", idle), ("TCP_KEEPINTVL", interval)):
        if hasattr(socket, name):
            s.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    if hasattr(socket, "TCP_KEEPCNT"):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux: data unacknowledged this long fails the send
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(timeout * 1000))


# --- the server --------------------------------------------------------------------------------


def serve(host: str, port: int, device_names: list[str], threads: int) -> None:
    """Serve this machine's devices to one RPC client at a time; returns only on failure."""
    require_rpc()
    from g4cli.chat.runtime import ggml_api
    from g4cli.chat.runtime.devices import list_devices, pick_server_devices

    llama_cpp.llama_backend_init()
    try:
        address = socket.gethostbyname(host)  # ggml-rpc binds an IPv4 address (inet_addr)
    except OSError:
        raise UsageError(f"--host {host}: not an IPv4 address or a name for one") from None
    with socket.socket() as probe:  # a clear error for a port in use (ggml-rpc only says "failed")
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as e:
            raise RuntimeFailure(f"cannot listen on {address}:{port} ({e.strerror})") from None
    devices = pick_server_devices(list_devices(), device_names)
    array = (ctypes.c_void_p * len(devices))(*[d.handle for d in devices])
    what = ", ".join(f"{d.name} ({d.description}, {d.free >> 20} MiB free)" for d in devices)
    sys.stderr.write(f"serving {what} on {address}:{port} to one client at a time; Ctrl-C stops\n")
    sys.stderr.flush()
    os.dup2(2, 1)  # ggml-rpc prints its banner and client lines with printf: keep them off stdout
    endpoint = f"{address}:{port}".encode()
    worker = threading.Thread(
        target=ggml_api.rpc.ggml_backend_rpc_start_server,
        args=(endpoint, None, threads, len(devices), array),
        name="rpc-server",
        daemon=True,  # it never returns; Ctrl-C ends the process around it
    )
    worker.start()
    while worker.is_alive():
        worker.join(0.5)
    raise RuntimeFailure(f"the RPC server on {address}:{port} stopped (see the lines above)")

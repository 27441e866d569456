"""Where the channel runs, by URL: connect (guest) and listen (host).

    tcp://HOST:PORT         TCP ([::1]:PORT for IPv6); PORT 0 listens on any
    unix:PATH               a Unix stream socket (QEMU's chardev socket
                            reaches a virtio-serial port through one)
    vsock://CID:PORT        AF_VSOCK (CID 2 is the host, 1 the guest itself
                            through vsock_loopback; `any` to listen on all)
    /dev/... or serial:PATH a character device (virtio-serial port, serial
                            line), set to raw mode, read and written as a
                            stream; "listening" on one reopens it after
                            each connection ends

Every connection gives a buffered binary reader and a `send` that writes
all of a buffer; `close` from another thread unblocks its reader.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import termios
import threading
import tty
from dataclasses import dataclass
from typing import BinaryIO

from recorder_tracer.errors import TracerError

READ_BUFFER = 1 << 20


@dataclass(frozen=True)
class Endpoint:
    """A parsed channel URL."""

    scheme: str             # tcp, unix, vsock, device
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"tcp://{host}:{self.port}"
        if self.scheme == "vsock":
            return f"vsock://{self.host}:{self.port}"
        if self.scheme == "unix":
            return f"unix:{self.path}"
        return self.path


def parse_url(text: str) -> Endpoint:
    """The endpoint a URL names; TracerError saying what is expected.

    >>> parse_url("tcp://127.0.0.1:7000"), parse_url("unix:/run/r.sock").path
    (Endpoint(scheme='tcp', host='127.0.0.1', port=7000, path=''), '/run/r.sock')
    >>> parse_url("vsock://2:7000").host
    '2'
    """
    expected = ("expected tcp://HOST:PORT, unix:PATH, vsock://CID:PORT or the "
                "path of a character device")
    if text.startswith(("tcp://", "vsock://")):
        scheme, _, rest = text.partition("://")
        host, _, port = rest.rpartition(":")
        host = host.strip("[]") if scheme == "tcp" else host
        if not host or not port.isdigit() or int(port) > 65535:
            raise TracerError(f"channel URL {text!r}: {expected}")
        if scheme == "vsock" and not (host.isdigit() or host == "any"):
            raise TracerError(f"channel URL {text!r}: the CID is a number or `any`")
        return Endpoint(scheme, host, int(port))
    if text.startswith("unix:") and len(text) > 5:
        return Endpoint("unix", path=text[5:])
    if text.startswith("serial:") and len(text) > 7:
        return Endpoint("device", path=text[7:])
    if text.startswith("/"):
        return Endpoint("device", path=text)
    raise TracerError(f"channel URL {text!r}: {expected}")


class Connection:
    """One open channel: `reader` for frames, `send` for bytes."""

    def __init__(self, reader: BinaryIO, peer: str, sock: socket.socket | None = None,
                 fd: int | None = None) -> None:
        self.reader = reader
        self.peer = peer
        self._sock = sock
        self._fd = fd
        self._send_lock = threading.Lock()
        self.closed = threading.Event()

    def send(self, data: bytes) -> None:
        """Write all of `data` (one frame or many); OSError if it breaks."""
        with self._send_lock:
            if self._sock is not None:
                self._sock.sendall(data)
                return
            assert self._fd is not None
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]

    def set_timeout(self, seconds: float | None) -> None:
        if self._sock is not None:
            self._sock.settimeout(seconds)

    def close(self) -> None:
        """Close both ways; a thread blocked reading gets EOF or an error."""
        if self.closed.is_set():
            return
        self.closed.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        with contextlib.suppress(OSError, ValueError):
            self.reader.close()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def _socket_connection(sock: socket.socket, peer: str) -> Connection:
    return Connection(sock.makefile("rb", buffering=READ_BUFFER), peer, sock=sock)


def connect(endpoint: Endpoint, timeout: float = 5.0) -> Connection:
    """Open the channel to `endpoint` (the guest's side); OSError if not."""
    if endpoint.scheme == "device":
        return open_device(endpoint.path)
    if endpoint.scheme == "tcp":
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    elif endpoint.scheme == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(endpoint.path)
        except OSError:
            sock.close()
            raise
    else:
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect((_cid(endpoint.host), endpoint.port))
        except OSError:
            sock.close()
            raise
    sock.settimeout(None)
    return _socket_connection(sock, str(endpoint))


def _cid(host: str) -> int:
    return socket.VMADDR_CID_ANY if host == "any" else int(host)


def open_device(path: str) -> Connection:
    """A character device as a connection, in raw mode if it is a tty."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if not stat.S_ISCHR(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a character device")
        if os.isatty(fd):
            tty.setraw(fd, termios.TCSANOW)
        reader = os.fdopen(os.dup(fd), "rb", buffering=READ_BUFFER)
    except BaseException:
        os.close(fd)
        raise
    return Connection(reader, path, fd=fd)


class Listener:
    """Accepts connections on one endpoint (the collector's side)."""

    def __init__(self, endpoint: Endpoint, backlog: int = 64) -> None:
        self.endpoint = endpoint
        self._sock: socket.socket | None = None
        self._device_free = threading.Event()
        self._device_free.set()
        self._closed = threading.Event()
        try:
            if endpoint.scheme == "tcp":
                family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
                self._sock = socket.socket(family, socket.SOCK_STREAM)
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._sock.bind((endpoint.host, endpoint.port))
            elif endpoint.scheme == "unix":
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                with contextlib.suppress(FileNotFoundError):
                    if stat.S_ISSOCK(os.lstat(endpoint.path).st_mode):
                        os.unlink(endpoint.path)    # a previous collector's
                self._sock.bind(endpoint.path)
            elif endpoint.scheme == "vsock":
                self._sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
                self._sock.bind((_cid(endpoint.host), endpoint.port))
            else:
                if not stat.S_ISCHR(os.stat(endpoint.path).st_mode):
                    raise OSError(f"{endpoint.path} is not a character device")
            if self._sock is not None:
                self._sock.listen(backlog)
        except OSError as error:
            if self._sock is not None:
                self._sock.close()
            raise TracerError(f"cannot listen on {endpoint}: "
                              f"{error.strerror or error}") from None

    def url(self) -> str:
        """The URL a guest connects to (the real port when 0 was asked)."""
        if self._sock is not None and self.endpoint.scheme == "tcp":
            host = self.endpoint.host
            return str(Endpoint("tcp", host, self._sock.getsockname()[1]))
        return str(self.endpoint)

    def accept(self) -> Connection | None:
        """The next connection; None once closed."""
        if self._sock is None:      # a device: one connection at a time
            self._device_free.wait()
            if self._closed.is_set():
                return None
            self._device_free.clear()
            try:
                connection = open_device(self.endpoint.path)
            except OSError:
                self._device_free.set()
                self._closed.wait(1.0)
                return None if self._closed.is_set() else self.accept()
            threading.Thread(target=self._release_when_closed, args=(connection,),
                             daemon=True).start()
            return connection
        try:
            sock, address = self._sock.accept()
        except OSError:
            return None
        if self.endpoint.scheme == "tcp":
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else (
            address or str(self.endpoint))
        return _socket_connection(sock, str(peer))

    def _release_when_closed(self, connection: Connection) -> None:
        connection.closed.wait()
        self._device_free.set()

    def close(self) -> None:
        self._closed.set()
        self._device_free.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
            if self.endpoint.scheme == "unix":
                with contextlib.suppress(OSError):
                    os.unlink(self.endpoint.path)

# -*- test-case-name: tests.e2e.test_reverse -*-
"""
A small HTTP/1.1 real server for the reverse-mode end-to-end tests, run as a
child process (standard library only, so it never shares txgate's code):

    python reverse_backend.py --port 0 --cert server.pem --key server.key \\
        --log requests.jsonl --name rs1

It prints one JSON line C{{"listening": PORT}} on stdout once it accepts, and
appends one JSON line per event to C{--log}: C{"opened"}/C{"closed"} per
connection, C{"request"} per request head it read (whatever its framing, so a
request that should never have arrived is on record), C{"bad-framing"} when it
could not find the end of a body, C{"ws-frame"} per WebSocket frame. Every
event names its connection by the client's port (C{"conn"}).

Routes (every response carries C{X-Real-Server: NAME}):

 - C{/healthcheck.html}: 200.
 - C{/echo}: 200, JSON of the request line, headers, body length and connection.
 - C{/poll?seconds=N}: 200 after N seconds (a long poll).
 - C{/ws}: a WebSocket handshake (101 with the right C{Sec-WebSocket-Accept}),
   then every data frame is echoed back; a close frame is answered and ends it.
 - C{/upgrade-any}: with any C{Upgrade} header, 101 and then every byte
   received is logged (C{"tunnel-bytes"}); without one, 200.
 - C{/ntlm}: an NTLM exchange. No C{Authorization}: 401 C{WWW-Authenticate:
   NTLM}. A type-1 message: 401 with a type-2 challenge (which curl accepts).
   A type-3 message on the connection that got the challenge: 200 naming the
   user; on any other connection: 401, "not the connection that started the
   handshake" (a proxy that spread the exchange over two connections fails).
 - anything else: 404.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import threading
import time
import urllib.parse

MAX_HEAD = 65536
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B85"
NTLM_SIGNATURE = b"NTLMSSP\x00"
NOT_SAME_CONNECTION = b"not the connection that started the handshake\n"


class _Closed(Exception):
    """The client went away (or sent something we cannot frame)."""


class Backend:
    """The listening socket, the log and the settings shared by connections."""

    def __init__(self, name: str, log_path: str, context: ssl.SSLContext | None) -> None:
        self.name = name
        self.context = context
        self._log = open(log_path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def log(self, **event: object) -> None:
        event["time"] = time.time()
        line = json.dumps(event, sort_keys=True)
        with self._lock:
            self._log.write(line + "\n")
            self._log.flush()

    def serve(self, listener: socket.socket) -> None:
        while True:
            sock, peer = listener.accept()
            threading.Thread(target=self._connection, args=(sock, peer), daemon=True).start()

    def _connection(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        conn = peer[1]
        try:
            if self.context is not None:
                sock.settimeout(30)
                sock = self.context.wrap_socket(sock, server_side=True)
                sock.settimeout(None)
        except (OSError, ssl.SSLError) as e:
            self.log(event="tls-failed", conn=conn, peer=f"{peer[0]}:{peer[1]}", error=str(e))
            sock.close()
            return
        self.log(event="opened", conn=conn, peer=f"{peer[0]}:{peer[1]}")
        connection = _Connection(self, sock, conn)
        try:
            connection.run()
        except (_Closed, OSError, ssl.SSLError):
            pass
        finally:
            self.log(event="closed", conn=conn, requests=connection.requests)
            try:
                sock.close()
            except OSError:
                pass


class _Connection:
    """One client connection: requests one after another (keep-alive)."""

    def __init__(self, backend: Backend, sock: socket.socket, conn: int) -> None:
        self.backend = backend
        self.sock = sock
        self.conn = conn
        self.buffer = b""
        self.requests = 0
        self.ntlm_challenged = False

    # ------------------------------------------------------------ reading

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise _Closed()
        self.buffer += data

    def _read_head(self) -> bytes | None:
        while True:
            ends = [i for i in (self.buffer.find(b"\r\n\r\n"), self.buffer.find(b"\n\n")) if i >= 0]
            if ends:
                end = min(ends)
                size = 4 if self.buffer[end : end + 4] == b"\r\n\r\n" else 2
                head, self.buffer = self.buffer[:end], self.buffer[end + size :]
                return head
            if len(self.buffer) > MAX_HEAD:
                return None
            try:
                self._fill()
            except _Closed:
                if self.buffer.strip():
                    self.backend.log(event="partial-head", conn=self.conn, data=self.buffer[:2000].decode("latin-1"))
                raise

    def _read_exact(self, n: int, keep: bool) -> bytes:
        out = bytearray()
        while n > 0:
            if not self.buffer:
                self._fill()
            piece, self.buffer = self.buffer[:n], self.buffer[n:]
            n -= len(piece)
            if keep:
                out += piece
        return bytes(out)

    def _read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_HEAD:
                raise _Closed()
            self._fill()
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.rstrip(b"\r")

    def _read_body(self, headers: list[tuple[str, str]]) -> int | None:
        """Read (and discard) the body; its length, or C{None} if unframeable."""
        names = [n.lower() for n, _ in headers]
        if "transfer-encoding" in names:
            total = 0
            while True:
                line = self._read_line().split(b";")[0].strip()
                try:
                    size = int(line, 16)
                except ValueError:
                    return None
                if size == 0:
                    while self._read_line():
                        pass
                    return total
                self._read_exact(size, keep=False)
                total += size
                self._read_line()
        lengths = [v for n, v in headers if n.lower() == "content-length"]
        if not lengths:
            return 0
        try:
            length = int(lengths[0])
        except ValueError:
            return None
        self._read_exact(length, keep=False)
        return length

    # ------------------------------------------------------------ writing

    def _respond(self, status: str, body: bytes, extra: list[tuple[str, str]] = (), close: bool = False) -> None:
        head = [f"HTTP/1.1 {status}", f"X-Real-Server: {self.backend.name}", f"Content-Length: {len(body)}"]
        head += [f"{n}: {v}" for n, v in extra]
        if close:
            head.append("Connection: close")
        self.sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    # ------------------------------------------------------------ requests

    def run(self) -> None:
        while True:
            head = self._read_head()
            if head is None:
                self.backend.log(event="head-too-large", conn=self.conn)
                self._respond("431 Request Header Fields Too Large", b"", close=True)
                return
            lines = [line.rstrip(b"\r").decode("latin-1") for line in head.split(b"\n")]
            request_line, header_lines = lines[0], lines[1:]
            parts = request_line.split(" ")
            method, target, version = (parts + ["", "", ""])[:3]
            headers = []
            for line in header_lines:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
            self.requests += 1
            self.backend.log(
                event="request", conn=self.conn, method=method, target=target, version=version,
                request_line=request_line, headers=headers,
            )
            body_length = self._read_body(headers)
            if body_length is None:
                self.backend.log(event="bad-framing", conn=self.conn, target=target)
                self._respond("400 Bad Request", b"bad framing\n", close=True)
                return
            lower = {n.lower(): v for n, v in headers}
            close = lower.get("connection", "").lower() == "close" or version == "HTTP/1.0"
            if not self._dispatch(method, target, version, headers, lower, body_length, close):
                return
            if close:
                return

    def _dispatch(
        self, method: str, target: str, version: str, headers: list[tuple[str, str]],
        lower: dict[str, str], body_length: int, close: bool,
    ) -> bool:
        """Answer one request; C{False} when the connection is done."""
        url = urllib.parse.urlsplit(target)
        path, query = url.path, urllib.parse.parse_qs(url.query)
        if path == "/healthcheck.html":
            self._respond("200 OK", b"OK\n", [("Content-Type", "text/plain")], close)
        elif path == "/echo":
            body = json.dumps({
                "method": method, "target": target, "version": version, "headers": headers,
                "body_length": body_length, "conn": self.conn, "server": self.backend.name,
            }).encode()
            self._respond("200 OK", body, [("Content-Type", "application/json")], close)
        elif path == "/poll":
            seconds = float(query.get("seconds", ["1"])[0])
            time.sleep(seconds)
            self._respond("200 OK", f"polled {seconds:g} s\n".encode(), [("Content-Type", "text/plain")], close)
        elif path == "/ws":
            return self._websocket(lower)
        elif path == "/upgrade-any":
            return self._upgrade_any(lower, close)
        elif path == "/ntlm":
            self._ntlm(lower.get("authorization", ""), close)
        else:
            self._respond("404 Not Found", b"no such route\n", [("Content-Type", "text/plain")], close)
        return True

    # ------------------------------------------------------------ NTLM

    def _ntlm(self, authorization: str, close: bool) -> None:
        scheme, _, token = authorization.partition(" ")
        message = b""
        if scheme.lower() == "ntlm":
            try:
                message = base64.b64decode(token.strip(), validate=True)
            except ValueError:
                message = b""
        kind = struct.unpack_from("<I", message, 8)[0] if message[:8] == NTLM_SIGNATURE and len(message) >= 12 else 0
        plain = [("Content-Type", "text/plain")]
        if kind == 1:
            self.ntlm_challenged = True
            self.backend.log(event="ntlm-type1", conn=self.conn)
            challenge = base64.b64encode(_type2()).decode()
            self._respond("401 Unauthorized", b"challenge\n", [("WWW-Authenticate", f"NTLM {challenge}"), *plain], close)
        elif kind == 3 and self.ntlm_challenged:
            domain, user = _type3_names(message)
            self.ntlm_challenged = False
            self.backend.log(event="ntlm-type3", conn=self.conn, user=user, domain=domain, same_connection=True)
            body = json.dumps({"user": user, "domain": domain, "conn": self.conn}).encode()
            self._respond("200 OK", body, [("Content-Type", "application/json")], close)
        elif kind == 3:
            domain, user = _type3_names(message)
            self.backend.log(event="ntlm-type3", conn=self.conn, user=user, domain=domain, same_connection=False)
            self._respond("401 Unauthorized", NOT_SAME_CONNECTION, [("WWW-Authenticate", "NTLM"), *plain], close)
        else:
            self._respond("401 Unauthorized", b"authenticate\n", [("WWW-Authenticate", "NTLM"), *plain], close)

    # ------------------------------------------------------------ any Upgrade

    def _upgrade_any(self, lower: dict[str, str], close: bool) -> bool:
        """
        Say yes to whatever C{Upgrade} asks for (a careless real server, as
        in h2c smuggling), then log every byte that arrives: what a client
        could send past the proxy's checks.
        """
        token = lower.get("upgrade", "")
        if not token:
            self._respond("200 OK", b"no upgrade asked\n", [("Content-Type", "text/plain")], close)
            return True
        self.sock.sendall(
            f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {token}\r\nConnection: Upgrade\r\n"
            f"X-Real-Server: {self.backend.name}\r\n\r\n".encode("latin-1")
        )
        while True:
            if not self.buffer:
                self._fill()
            data, self.buffer = self.buffer, b""
            self.backend.log(event="tunnel-bytes", conn=self.conn, data=data[:2000].decode("latin-1"))

    # ------------------------------------------------------------ WebSocket

    def _websocket(self, lower: dict[str, str]) -> bool:
        key = lower.get("sec-websocket-key", "")
        if "websocket" not in lower.get("upgrade", "").lower() or not key:
            self._respond("400 Bad Request", b"not a websocket handshake\n", close=True)
            return False
        accept = base64.b64encode(hashlib.sha1(key.encode() + WS_GUID).digest()).decode()
        self.sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\nX-Real-Server: {self.backend.name}\r\n\r\n"
            ).encode()
        )
        while True:
            b0, b1 = self._read_exact(2, keep=True)
            opcode, masked, length = b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._read_exact(2, keep=True))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._read_exact(8, keep=True))[0]
            mask = self._read_exact(4, keep=True) if masked else b"\0\0\0\0"
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(self._read_exact(length, keep=True)))
            self.backend.log(event="ws-frame", conn=self.conn, opcode=opcode, length=length, masked=bool(masked))
            reply_opcode = {9: 10}.get(opcode, opcode)
            self.sock.sendall(_ws_frame(reply_opcode, payload))
            if opcode == 8:
                return False


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        size = bytes([n])
    elif n < 65536:
        size = bytes([126]) + struct.pack(">H", n)
    else:
        size = bytes([127]) + struct.pack(">Q", n)
    return bytes([0x80 | opcode]) + size + payload


def _type2() -> bytes:
    """An NTLM type-2 (challenge) message: Unicode, NTLM, target CORP, no target info."""
    target = "CORP".encode("utf-16-le")
    flags = 0x00000001 | 0x00000004 | 0x00000200 | 0x00008000 | 0x00010000  # unicode, request target, NTLM, always sign, target type domain
    return (
        NTLM_SIGNATURE
        + struct.pack("<I", 2)
        + struct.pack("<HHI", len(target), len(target), 48)
        + struct.pack("<I", flags)
        + os.urandom(8)
        + b"\0" * 8
        + struct.pack("<HHI", 0, 0, 48 + len(target))
        + target
    )


def _type3_names(message: bytes) -> tuple[str, str]:
    """C{(domain, user)} from an NTLM type-3 (authenticate) message."""

    def field(offset: int, unicode: bool) -> str:
        length, _, start = struct.unpack_from("<HHI", message, offset)
        raw = message[start : start + length]
        return raw.decode("utf-16-le" if unicode else "latin-1", "replace")

    try:
        flags = struct.unpack_from("<I", message, 60)[0] if len(message) >= 64 else 1
        unicode = bool(flags & 1)
        return field(28, unicode), field(36, unicode)
    except struct.error:
        return "", ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cert", help="PEM certificate chain; without it, plain HTTP")
    parser.add_argument("--key")
    parser.add_argument("--log", required=True)
    parser.add_argument("--name", default="backend")
    options = parser.parse_args(argv)
    context = None
    if options.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(options.cert, options.key)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((options.host, options.port))
    listener.listen(128)
    backend = Backend(options.name, options.log, context)
    print(json.dumps({"listening": listener.getsockname()[1]}), flush=True)
    backend.serve(listener)


if __name__ == "__main__":
    main()

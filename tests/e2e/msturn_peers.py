"""
Peers that speak [MS-TURN] over TCP with the pseudo-TLS handshake, for the
end-to-end tests (no public client or server speaks it on Linux).

    python -m tests.e2e.msturn_peers server --host 0.0.0.0 --port 3478 [--once]
    python -m tests.e2e.msturn_peers client --host 10.200.2.2 --port 443

The client sends the 50-byte pseudo-TLS ClientHello ([MS-TURN] 2.1.1),
checks the 83-byte ServerHello + ServerHelloDone, then exchanges framed
messages ([MS-TURN] 2.1.4: type, 0x00, 2-byte length): an Allocate request
(TURN control, type 0x02) carrying MAGIC-COOKIE first and MS-Version, whose
answer must echo its transaction id, then end-to-end data (type 0x03)
echoed back. It prints one JSON line with what it saw and exits 0 only if
every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import threading

CLIENT_HELLO_HEAD = bytes.fromhex("160301002d010000290301")
CLIENT_HELLO_TAIL = bytes.fromhex("00" "00020018" "0100")
SERVER_HELLO_HEAD = bytes.fromhex("160301004e020000460301")
MAGIC_COOKIE = 0x72C64BC6
ALLOCATE_REQUEST = 0x0003
ALLOCATE_RESPONSE = 0x0103
CONTROL, DATA = 0x02, 0x03


def client_hello() -> bytes:
    """The 50-byte pseudo-TLS ClientHello with a fresh random."""
    hello = CLIENT_HELLO_HEAD + os.urandom(32) + CLIENT_HELLO_TAIL
    assert len(hello) == 50
    return hello


def server_hello() -> bytes:
    """The 83-byte ServerHello + ServerHelloDone, in one record."""
    reply = (
        SERVER_HELLO_HEAD
        + os.urandom(32)
        + b"\x20"
        + os.urandom(32)
        + b"\x00\x18"
        + b"\x00"
        + bytes.fromhex("0e000000")
    )
    assert len(reply) == 83
    return reply


def is_server_hello(data: bytes) -> bool:
    return len(data) == 83 and data.startswith(SERVER_HELLO_HEAD) and data[43] == 0x20 and data[76:83] == bytes.fromhex("0018000e000000")


def frame(kind: int, payload: bytes) -> bytes:
    return struct.pack("!BBH", kind, 0, len(payload)) + payload


def turn_message(message_type: int, transaction: bytes, attributes: list[tuple[int, bytes]]) -> bytes:
    body = b""
    for kind, value in attributes:
        padding = b"\x00" * (-len(value) % 4)
        body += struct.pack("!HH", kind, len(value)) + value + padding
    return struct.pack("!HH", message_type, len(body)) + transaction + body


def read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    kind, _, length = struct.unpack("!BBH", read_exact(sock, 4))
    return kind, read_exact(sock, length)


def run_client(host: str, port: int, timeout: float = 10.0) -> dict[str, object]:
    result: dict[str, object] = {"ok": False}
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(client_hello())
        reply = read_exact(sock, 83)
        result["server_hello"] = is_server_hello(reply)
        transaction = os.urandom(16)
        allocate = turn_message(
            ALLOCATE_REQUEST,
            transaction,
            [(0x000F, struct.pack("!I", MAGIC_COOKIE)), (0x8008, struct.pack("!I", 2))],
        )
        sock.sendall(frame(CONTROL, allocate))
        kind, answer = read_frame(sock)
        message_type = struct.unpack("!H", answer[:2])[0]
        result["control"] = kind == CONTROL and message_type == ALLOCATE_RESPONSE and answer[4:20] == transaction
        payload = os.urandom(1000)
        sock.sendall(frame(DATA, payload))
        kind, echoed = read_frame(sock)
        result["data"] = kind == DATA and echoed == payload
    result["ok"] = bool(result["server_hello"] and result["control"] and result["data"])
    return result


def serve_one(conn: socket.socket) -> None:
    with conn:
        hello = read_exact(conn, 50)
        if not (hello.startswith(CLIENT_HELLO_HEAD) and hello.endswith(CLIENT_HELLO_TAIL)):
            return
        conn.sendall(server_hello())
        while True:
            try:
                kind, payload = read_frame(conn)
            except ConnectionError:
                return
            if kind == CONTROL:
                transaction = payload[4:20]
                answer = turn_message(ALLOCATE_RESPONSE, transaction, [(0x000F, struct.pack("!I", MAGIC_COOKIE))])
                conn.sendall(frame(CONTROL, answer))
            elif kind == DATA:
                conn.sendall(frame(DATA, payload))
            else:
                return


def run_server(host: str, port: int, once: bool) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(16)
        print(json.dumps({"listening": listener.getsockname()[1]}), flush=True)
        while True:
            conn, _ = listener.accept()
            if once:
                serve_one(conn)
                return
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MS-TURN pseudo-TLS test peers")
    parser.add_argument("role", choices=("client", "server"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--once", action="store_true", help="server: serve one connection, then exit")
    args = parser.parse_args(argv)
    if args.role == "server":
        run_server(args.host, args.port, args.once)
        return 0
    try:
        result = run_client(args.host, args.port)
    except (OSError, ConnectionError, struct.error) as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

import socket, sys, threading
lport, uport, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", lport)); ls.listen(1)
c, _ = ls.accept()
u = socket.create_connection(("127.0.0.1", uport))
log = {"c2s": b"", "s2c": b""}
def pump(a, b, key):
    while True:
        d = a.recv(65536)
        if not d:
            try: b.shutdown(socket.SHUT_WR)
            except OSError: pass
            break
        log[key] += d
        b.sendall(d)
t1 = threading.Thread(target=pump, args=(c, u, "c2s")); t2 = threading.Thread(target=pump, args=(u, c, "s2c"))
t1.start(); t2.start(); t1.join(timeout=15); t2.join(timeout=15)
open(out + ".c2s", "wb").write(log["c2s"]); open(out + ".s2c", "wb").write(log["s2c"])

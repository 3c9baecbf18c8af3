#!/usr/bin/python3
"""A small HTTP/1.1 server on 127.0.0.1 for spec/http_spec.lua.

Usage: http_server.py [--unix PATH]

Prints one line on stdout: "PORT PID CLOSED_PORT", where CLOSED_PORT is a
loopback port that was bound and released (nothing listens there). With
--unix the same endpoints are also served on a unix socket at PATH. The
server exits when killed or when its parent process goes away.

Endpoints:
  /hello             200 "hello world" (text/plain, X-Test: yes)
  /status/N          status N with body "status N"
  /redirect/N?to=P   status N (301, 302, ...) with Location: P (default /hello)
  /loop              302 to /loop, forever
  /slow?secs=S       waits S seconds (default 5) before answering "slow done";
                     notices a client that goes away meanwhile (see /stats)
  /stats             "active=A aborted=B started=C open=P1,P2,...": /slow requests
                     running, given up by their client, and started so far; the
                     client ports of the TCP connections open now
  /big?size=N        N bytes (default 12 MiB) streamed with a Content-Length
  /echo              any method: the request body back, with X-Method: METHOD
                     and X-Req-<Name>: value for every request header
  /chunked           a chunked body "chunk-1 chunk-2 chunk-3 "
  /dup               two X-Dup headers, "a" and "b"
  /whoami            the client's port (tells connections apart)
  /close             closes the connection without a response
"""
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()
STATS = {"active": 0, "aborted": 0, "started": 0}
OPEN = set()  # client ports of open TCP connections


def client_gone(sock):
    """True when the peer closed its side (readable with nothing to read)."""
    try:
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet
        pass

    def address_string(self):
        return "client"

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def handle_any(self):
        url = urlsplit(self.path)
        q = parse_qs(url.query)
        path = url.path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if path == "/hello":
            self.reply(200, b"hello world", [("Content-Type", "text/plain"), ("X-Test", "yes")])
        elif path.startswith("/status/"):
            n = int(path.split("/")[2])
            self.reply(n, b"status %d" % n, [("Content-Type", "text/plain")])
        elif path.startswith("/redirect/"):
            n = int(path.split("/")[2])
            to = q.get("to", ["/hello"])[0]
            self.reply(n, b"moved", [("Location", to)])
        elif path == "/loop":
            self.reply(302, b"again", [("Location", "/loop")])
        elif path == "/slow":
            self.slow(float(q.get("secs", ["5"])[0]))
        elif path == "/stats":
            with LOCK:
                s = "active=%(active)d aborted=%(aborted)d started=%(started)d" % STATS
                s += " open=" + ",".join(str(p) for p in sorted(OPEN) if p)
            self.reply(200, s.encode())
        elif path == "/big":
            self.big(int(q.get("size", [str(12 * 1024 * 1024)])[0]))
        elif path == "/echo":
            headers = [("X-Method", self.command)]
            for k, v in self.headers.items():
                headers.append(("X-Req-" + k, v))
            self.reply(200, body, headers)
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(1, 4):
                data = b"chunk-%d " % i
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(0.01)
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/dup":
            self.reply(200, b"dup", [("X-Dup", "a"), ("X-Dup", "b")])
        elif path == "/whoami":
            port = self.client_address[1] if isinstance(self.client_address, tuple) else 0
            self.reply(200, str(port).encode())
        elif path == "/close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        else:
            self.reply(404, b"no such endpoint")

    def slow(self, secs):
        with LOCK:
            STATS["active"] += 1
            STATS["started"] += 1
        try:
            end = time.monotonic() + secs
            while time.monotonic() < end:
                if client_gone(self.connection):
                    with LOCK:
                        STATS["aborted"] += 1
                    self.close_connection = True
                    return
                time.sleep(0.02)
            self.reply(200, b"slow done")
        finally:
            with LOCK:
                STATS["active"] -= 1

    def big(self, size):
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        chunk = b"x" * 65536
        left = size
        while left > 0:
            n = min(left, len(chunk))
            self.wfile.write(chunk[:n])
            left -= n

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = handle_any

    def handle(self):
        port = self.client_address[1] if isinstance(self.client_address, tuple) else 0
        with LOCK:
            OPEN.add(port)
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with LOCK:
                OPEN.discard(port)


class TcpHandler(Handler):
    # Headers and body go out in separate writes: without this, Nagle and the
    # client's delayed ACK add 40 ms to many requests.
    disable_nagle_algorithm = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):  # client went away: fine
        pass


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass


def watch_parent(ppid):
    while os.getppid() == ppid:
        time.sleep(0.2)
    os._exit(0)


def main():
    unix_path = None
    if len(sys.argv) == 3 and sys.argv[1] == "--unix":
        unix_path = sys.argv[2]
    srv = Server(("127.0.0.1", 0), TcpHandler)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed_port = s.getsockname()[1]
    s.close()
    if unix_path:
        if os.path.exists(unix_path):
            os.unlink(unix_path)
        usrv = UnixServer(unix_path, Handler)
        threading.Thread(target=usrv.serve_forever, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    print(srv.server_address[1], os.getpid(), closed_port, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if unix_path and os.path.exists(unix_path):
            os.unlink(unix_path)


if __name__ == "__main__":
    main()

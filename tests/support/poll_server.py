#!/usr/bin/python3
"""An HTTP/1.1 server on 127.0.0.1 for spec/watch_http_spec.lua (the URL
poller) and spec/http_stream_spec.lua (streamed bodies).

Usage: poll_server.py

Prints one line on stdout: "PORT PID". Exits when killed or when its parent
process goes away.

Documents a poller fetches (state set by the test):
  GET  /doc/NAME          the document's current answer: its status, body
                          (or `size` bytes of "x"), after `delay` seconds
  POST /_set/NAME         JSON {"status": 200, "body": "...", "size": N,
                          "delay": S}; missing keys keep their value
  GET  /_hits/NAME        JSON {"hits": N, "headers": {last request's headers},
                          "times": [monotonic time of each GET]}

Streams (chunked unless said otherwise):
  /stream?n=N&interval=S  N chunks "line I\\n", S seconds apart (default 3, 0.01)
  /stream/stamp?n=N&interval=S  N lines "SEQ WALLTIME\\n", WALLTIME taken just
                          before each write (for latency figures)
  /stream/cut?n=N         N chunks, then the connection is cut (no last chunk)
  /stream/flood?size=N&id=ID  N bytes of "y" as fast as the client takes them;
                          /_written/ID tells how many were written so far
  /stream/hold            the headers, then nothing until the client goes away
  /stream/nohead          no response at all until the client goes away
  /stream/early           a 103 Early Hints interim response, then /stream's body
  /stream/length          a body with Content-Length (not chunked), in 3 writes
  /redirect?to=PATH       302 to PATH
  /gone                   /_gone tells how many /stream/hold and /stream/nohead
                          clients went away
"""
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

LOCK = threading.Lock()
DOCS = {}  # name -> {"status", "body", "size", "delay"}
HITS = {}  # name -> {"hits", "headers", "times"}
WRITTEN = {}  # flood id -> bytes written
GONE = {"count": 0}


def client_gone(sock):
    try:
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, fmt, *args):
        pass

    def reply(self, status, body=b"", ctype="text/plain"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def start_chunked(self, status=200):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def cut(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def wait_gone(self):
        while not client_gone(self.connection):
            time.sleep(0.02)
        with LOCK:
            GONE["count"] += 1
        self.close_connection = True

    def handle_any(self):
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if path.startswith("/doc/"):
            self.doc(path[5:])
        elif path.startswith("/_set/"):
            name = path[6:]
            new = json.loads(body or b"{}")
            with LOCK:
                d = DOCS.setdefault(name, {"status": 200, "body": "", "size": None, "delay": 0})
                d.update(new)
                if "body" in new:
                    d["size"] = new.get("size")
            self.reply(200, b"ok")
        elif path.startswith("/_hits/"):
            with LOCK:
                h = HITS.get(path[7:], {"hits": 0, "headers": {}, "times": []})
                data = json.dumps(h).encode()
            self.reply(200, data, "application/json")
        elif path.startswith("/_written/"):
            with LOCK:
                n = WRITTEN.get(path[10:], 0)
            self.reply(200, str(n).encode())
        elif path == "/_gone":
            with LOCK:
                n = GONE["count"]
            self.reply(200, str(n).encode())
        elif path == "/stream":
            self.start_chunked()
            self.lines(int(q.get("n", "3")), float(q.get("interval", "0.01")))
            self.chunk(b"")
        elif path == "/stream/stamp":
            self.start_chunked()
            interval = float(q.get("interval", "0.01"))
            for i in range(int(q.get("n", "10"))):
                self.chunk(b"%d %.6f\n" % (i, time.time()))
                time.sleep(interval)
            self.chunk(b"")
        elif path == "/stream/cut":
            self.start_chunked()
            self.lines(int(q.get("n", "3")), 0.01)
            self.cut()
        elif path == "/stream/flood":
            self.flood(int(q.get("size", str(64 << 20))), q.get("id", "flood"))
        elif path == "/stream/hold":
            self.start_chunked()
            self.wait_gone()
        elif path == "/stream/nohead":
            self.wait_gone()
        elif path == "/stream/early":
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            time.sleep(0.05)
            self.start_chunked()
            self.lines(3, 0.01)
            self.chunk(b"")
        elif path == "/stream/length":
            data = b"0123456789" * 3
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            for i in range(3):
                self.wfile.write(data[i * 10:(i + 1) * 10])
                time.sleep(0.02)
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", q.get("to", "/stream"))
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"moved")
        elif path.startswith("/status/"):
            n = int(path.split("/")[2])
            self.reply(n, b"status %d" % n)
        else:
            self.reply(404, b"no such endpoint")

    def lines(self, n, interval):
        for i in range(1, n + 1):
            self.chunk(b"line %d\n" % i)
            if interval > 0:
                time.sleep(interval)

    def doc(self, name):
        with LOCK:
            d = dict(DOCS.get(name, {"status": 404, "body": "no such document", "size": None,
                                     "delay": 0}))
            h = HITS.setdefault(name, {"hits": 0, "headers": {}, "times": []})
            h["hits"] += 1
            h["headers"] = dict(self.headers.items())
            h["times"].append(time.monotonic())
        if d.get("delay"):
            end = time.monotonic() + d["delay"]
            while time.monotonic() < end:
                if client_gone(self.connection):
                    self.close_connection = True
                    return
                time.sleep(0.02)
        if d.get("size") is not None:
            size = int(d["size"])
            self.send_response(d["status"])
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"x" * 65536
            left = size
            while left > 0:
                n = min(left, len(block))
                self.wfile.write(block[:n])
                left -= n
        else:
            self.reply(d["status"], d["body"].encode())

    def flood(self, size, fid):
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        block = b"y" * 65536
        left = size
        with LOCK:
            WRITTEN[fid] = 0
        while left > 0:
            n = min(left, len(block))
            self.wfile.write(block[:n])
            left -= n
            with LOCK:
                WRITTEN[fid] = size - left

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError):
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass


def watch_parent(ppid):
    while os.getppid() == ppid:
        time.sleep(0.2)
    os._exit(0)


def main():
    srv = Server(("127.0.0.1", 0), Handler)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    print(srv.server_address[1], os.getpid(), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Odd HTTP servers for the probe specs, all on loopback.

Prints one line "HTTP_PORT HTTPS_PORT HUNG_PORT CLOSED_PORT PID" once ready:
  HTTP_PORT   plain HTTP/1.1 on 127.0.0.1 (routes below)
  HTTPS_PORT  the same routes over TLS (only with --cert/--key, else 0)
  HUNG_PORT   a listening socket whose backlog is full and never accepted:
              a connect to it never completes
  CLOSED_PORT a port nothing listens on
Routes:
  /status/N          status N, body "status N"
  /redirect?to=U&code=C   a redirect (default 302) to U
  /chain/N           redirects to /chain/N-1 ... /chain/0 answers 200 "end of chain"
  /loop              redirects to itself
  /slow-header?secs=S     waits S seconds before the status line
  /slow-body?secs=S       headers and part of the body, then waits S seconds
  /big               a 1 MiB body
  /echo              200, the request line and headers as the body
  /hits              how many requests this server answered
The server exits when its parent process goes away.
"""
import argparse
import http.server
import os
import socket
import ssl
import threading
import time
import urllib.parse

HITS = [0]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        HITS[0] += 1
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        parts = u.path.strip("/").split("/")
        if parts[0] == "status":
            code = int(parts[1])
            self.reply(code, ("status %d" % code).encode())
        elif parts[0] == "redirect":
            self.reply(int(q.get("code", "302")), b"moved", [("Location", q["to"])])
        elif parts[0] == "chain":
            n = int(parts[1])
            if n == 0:
                self.reply(200, b"end of chain")
            else:
                self.reply(302, b"", [("Location", "/chain/%d" % (n - 1))])
        elif parts[0] == "loop":
            self.reply(302, b"", [("Location", "/loop")])
        elif parts[0] == "slow-header":
            time.sleep(float(q.get("secs", "2")))
            self.reply(200, b"late")
        elif parts[0] == "slow-body":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
            time.sleep(float(q.get("secs", "2")))
            self.wfile.write(b"y" * 90)
        elif parts[0] == "big":
            self.reply(200, b"b" * (1 << 20))
        elif parts[0] == "echo":
            text = self.requestline + "\n" + str(self.headers)
            self.reply(200, text.encode())
        elif parts[0] == "hits":
            self.reply(200, str(HITS[0]).encode())
        else:
            self.reply(404, b"not found")

    do_POST = do_GET


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def handle_error(self, request, client_address):
        pass  # clients that give up early are expected here


def hung_listener():
    """A socket with a full accept queue: further connects hang in SYN_SENT."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    fillers = []
    for _ in range(8):
        c = socket.socket()
        c.settimeout(0.3)
        try:
            c.connect(s.getsockname())
            fillers.append(c)
        except OSError:
            c.close()
            break
    return s, fillers


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def watch_parent(ppid):
    while os.getppid() == ppid:
        time.sleep(0.2)
    os._exit(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()
    plain = Server(("127.0.0.1", 0), Handler)
    servers = [plain]
    tls_port = 0
    if a.cert:
        tls = Server(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
        tls_port = tls.server_address[1]
        servers.append(tls)
    hung, fillers = hung_listener()
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    print(plain.server_address[1], tls_port, hung.getsockname()[1], closed_port(), os.getpid(),
          flush=True)
    while True:
        time.sleep(3600)
    del fillers


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""Self-check for tests/support/fake_cri.py.

Starts the fake server on a temporary unix socket (and once on loopback TCP)
and checks every behaviour twice over:

* with a real gRPC client (Debian's python3-grpcio, generic calls on raw
  bytes), which shows how an independent gRPC implementation reacts;
* with a bare HTTP/2 client built on python3-h2 that records the frames as
  they come off the socket, which shows the fault really is what it claims to
  be at the frame level (grpcio hides that).

Run: /usr/bin/python3 tests/support/fake_cri_selfcheck.py
Prints one line per check and "N passed, M failed"; exits non-zero on failure.

Note: grpcio channels are created with grpc.enable_retries=0.  With retries
on, grpcio 1.51 (Debian 12) kills the whole process (SIGILL in its retry
filter) when trailers lack grpc-status, see grpc/grpc issue 34683.
"""

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import json

os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # keep grpc core quiet

try:
    import grpc
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
except ImportError as e:
    sys.stderr.write("selfcheck: %s; need 'apt-get install -y python3-h2 "
                     "python3-grpcio' and /usr/bin/python3\n" % e)
    sys.exit(2)

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "fake_cri.py")
RS = "/runtime.v1.RuntimeService/"
IS = "/runtime.v1.ImageService/"
MiB = 1024 * 1024

# Expected encodings, written out by hand (independent of the server's encoder).
VERSION_BYTES = (b"\x0a\x05" b"0.1.0" b"\x12\x04" b"fake"
                 b"\x1a\x03" b"1.0" b"\x22\x02" b"v1")
EXEC_SYNC_BYTES = b"\x0a\x06" b"hello\n" b"\x12\x00" b"\x18\x03"
# created_at 1700000000000000000 as a varint
CREATED_AT_VARINT = b"\x80\x80\xa8\xb1\xe3\x9f\xe7\xcb\x17"


# pod_sandbox_status (4) = {id "sb1", metadata {name "web", uid "uid-1", namespace "default"}}
SANDBOX_STATUS = (b'"\x1c\n\x03sb1\x12\x15\n\x03web\x12\x05uid-1\x1a\x07default')


def event_bytes(i):
    varint = bytes([CREATED_AT_VARINT[0] + i]) + CREATED_AT_VARINT[1:]
    return (b"\x0a\x02c%d" % (i + 1) + bytes([0x10, i]) + b"\x18" + varint
            + SANDBOX_STATUS)


# ---------------------------------------------------------------------------
# Server process
# ---------------------------------------------------------------------------

class FakeServer:
    def __init__(self, workdir, tcp_port=None):
        self.sock_path = os.path.join(workdir, "cri.sock")
        self.record = os.path.join(workdir, "requests.jsonl")
        self.log_path = os.path.join(workdir, "server.log")
        args = [sys.executable, SERVER, "--record", self.record]
        if tcp_port is None:
            args += ["--unix", self.sock_path]
        else:
            args += ["--tcp", "127.0.0.1:%d" % tcp_port]
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                                     stderr=self.log, stdin=subprocess.DEVNULL)
        ready = [None]

        def read_ready():
            ready[0] = self.proc.stdout.readline()
        t = threading.Thread(target=read_ready, daemon=True)
        t.start()
        t.join(15)
        if ready[0] != b"READY\n":
            self.stop()
            raise RuntimeError("server did not print READY (got %r); log:\n%s"
                               % (ready[0], self.log_text()))

    def alive(self):
        return self.proc.poll() is None

    def log_text(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log_path, "r", errors="replace") as f:
            return f.read()

    def requests(self):
        with open(self.record) as f:
            return [json.loads(line) for line in f if line.strip()]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


# ---------------------------------------------------------------------------
# gRPC client helpers
# ---------------------------------------------------------------------------

def channel(target, own_connection=False):
    opts = [("grpc.enable_retries", 0), ("grpc.enable_http_proxy", 0)]
    if own_connection:
        opts.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.insecure_channel(target, options=opts)


def unary(target, path, timeout=5.0, request=b""):
    """Returns (code, details, response, elapsed)."""
    ch = channel(target)
    t0 = time.monotonic()
    try:
        resp = ch.unary_unary(path)(request, timeout=timeout)
        return grpc.StatusCode.OK, "", resp, time.monotonic() - t0
    except grpc.RpcError as e:
        return e.code(), e.details(), None, time.monotonic() - t0
    finally:
        ch.close()


# ---------------------------------------------------------------------------
# Bare HTTP/2 client: records frames exactly as received
# ---------------------------------------------------------------------------

class RawResult:
    def __init__(self):
        self.raw = bytearray()
        self.events = []
        self.protocol_error = None
        self.eof = False
        self.headers = None
        self.trailers = None
        self.data_frames = []
        self.ended = False

    def frames(self):
        """Split the received bytes into (type, flags, stream, payload)."""
        out, pos, raw = [], 0, bytes(self.raw)
        while pos + 9 <= len(raw):
            length = int.from_bytes(raw[pos:pos + 3], "big")
            ftype, flags = raw[pos + 3], raw[pos + 4]
            sid = struct.unpack(">I", raw[pos + 5:pos + 9])[0] & 0x7FFFFFFF
            out.append((ftype, flags, sid, raw[pos + 9:pos + 9 + length]))
            pos += 9 + length
        return out

    def body(self):
        return b"".join(self.data_frames)


def raw_call(sock_path, path, timeout=5.0, read_to_eof=False):
    res = RawResult()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(sock_path)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"),
                          (":path", path), (":authority", "localhost"),
                          ("content-type", "application/grpc"),
                          ("te", "trailers"), ("grpc-timeout", "5S")])
    conn.send_data(1, b"\x00\x00\x00\x00\x00", end_stream=True)
    s.sendall(conn.data_to_send())
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                data = s.recv(1 << 16)
            except socket.timeout:
                break
            except ConnectionResetError:
                res.eof = True
                break
            if not data:
                res.eof = True
                break
            res.raw += data
            if res.protocol_error is not None:
                continue  # keep reading raw bytes until EOF
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                res.protocol_error = e
                continue
            for ev in events:
                res.events.append(ev)
                if isinstance(ev, h2.events.ResponseReceived):
                    res.headers = list(ev.headers)
                elif isinstance(ev, h2.events.TrailersReceived):
                    res.trailers = list(ev.headers)
                elif isinstance(ev, h2.events.DataReceived):
                    res.data_frames.append(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length,
                                                   ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    res.ended = True
            out = conn.data_to_send()
            if out:
                try:
                    s.sendall(out)
                except OSError:
                    pass
            if res.ended and not read_to_eof:
                break
    finally:
        s.close()
    return res


FRAME_DATA, FRAME_HEADERS, FRAME_PING = 0x0, 0x1, 0x6
FLAG_END_STREAM = 0x1


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------

RESULTS = []


def check(name):
    def deco(fn):
        RESULTS.append((name, fn))
        return fn
    return deco


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def expect_code(got, allowed, details=""):
    expect(got in allowed, "got %s (%r), want one of %s"
           % (got, details, "/".join(c.name for c in allowed)))


class Ctx:
    server = None
    target = None


C = Ctx()
SC = grpc.StatusCode


@check("Version: OK with the exact VersionResponse bytes")
def _():
    code, det, resp, _ = unary(C.target, RS + "Version")
    expect_code(code, {SC.OK}, det)
    expect(resp == VERSION_BYTES, "response %r" % resp)


@check("Status: hangs, 0.5 s deadline gives DEADLINE_EXCEEDED")
def _():
    code, det, _, elapsed = unary(C.target, RS + "Status", timeout=0.5)
    expect_code(code, {SC.DEADLINE_EXCEEDED}, det)
    expect(0.4 <= elapsed < 3.0, "took %.2fs" % elapsed)


@check("Status: client's grpc-timeout recorded and logged, RST handled")
def _():
    reqs = [r for r in C.server.requests() if r["path"] == RS + "Status"]
    expect(reqs and reqs[-1]["grpc_timeout"], "no grpc-timeout in %r" % reqs)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        log = C.server.log_text()
        if "reset by client" in log:
            break
        time.sleep(0.05)
    expect("grpc-timeout=%s" % reqs[-1]["grpc_timeout"] in log,
           "grpc-timeout not in the stderr log")
    expect("reset by client" in log, "server did not log the RST_STREAM")


@check("ListContainers: 17 MiB message gives RESOURCE_EXHAUSTED")
def _():
    code, det, _, _ = unary(C.target, RS + "ListContainers")
    expect_code(code, {SC.RESOURCE_EXHAUSTED}, det)
    expect(str(17 * MiB) in det, "details %r" % det)


@check("ListContainers raw: 17 MiB in DATA frames within flow control")
def _():
    res = raw_call(C.server.sock_path, RS + "ListContainers", timeout=60)
    expect(res.protocol_error is None, "protocol error %r" % res.protocol_error)
    expect(res.ended, "stream did not end")
    body = res.body()
    expect(body[:5] == struct.pack(">BI", 0, 17 * MiB), "prefix %r" % body[:5])
    expect(len(body) == 5 + 17 * MiB, "body %d bytes" % len(body))
    # Container{id=...} inside ListContainersResponse field 1
    expect(body[5] == 0x0a, "first field tag %r" % body[5])
    biggest = max(len(d) for d in res.data_frames)
    expect(biggest <= 16384, "DATA frame of %d bytes > default max" % biggest)
    expect(dict(res.trailers or []).get("grpc-status") == "0",
           "trailers %r" % res.trailers)


@check("ListPodSandbox: malformed frame fails the call (grpcio: UNKNOWN)")
def _():
    code, det, _, _ = unary(C.target, RS + "ListPodSandbox")
    expect_code(code, {SC.UNKNOWN, SC.UNAVAILABLE, SC.INTERNAL}, det)


@check("ListPodSandbox raw: HEADERS, then PING of length 7, then EOF")
def _():
    res = raw_call(C.server.sock_path, RS + "ListPodSandbox", read_to_eof=True)
    frames = res.frames()
    types = [(t, sid) for t, _, sid, _ in frames]
    expect((FRAME_HEADERS, 1) in types, "no HEADERS on stream 1: %r" % types)
    ftype, flags, sid, payload = frames[-1]
    expect((ftype, sid, len(payload)) == (FRAME_PING, 0, 7),
           "last frame %r" % (frames[-1],))
    expect(types.index((FRAME_HEADERS, 1)) < len(frames) - 1,
           "bad PING not after HEADERS")
    expect(res.raw.endswith(b"\x00\x00\x07\x06\x00\x00\x00\x00\x00" + b"\x00" * 7),
           "raw tail %r" % bytes(res.raw[-16:]))
    expect(isinstance(res.protocol_error, h2.exceptions.ProtocolError),
           "h2 did not reject it: %r" % res.protocol_error)
    expect(res.eof, "connection not closed")


@check("ImageFsInfo: truncated message never delivered as a response")
def _():
    code, det, resp, _ = unary(C.target, IS + "ImageFsInfo")
    # grpcio 1.51 reports OK with no message (None); anything but a message
    # is acceptable here, the raw check below pins down the bytes.
    expect(resp is None, "got a response %r (%s)" % (resp, code))


@check("ImageFsInfo raw: prefix says 100, 10 bytes follow, grpc-status 0")
def _():
    res = raw_call(C.server.sock_path, IS + "ImageFsInfo")
    body = res.body()
    expect(body[:5] == b"\x00\x00\x00\x00\x64", "prefix %r" % body[:5])
    expect(len(body) == 15, "body %d bytes" % len(body))
    expect(res.ended and dict(res.trailers or []).get("grpc-status") == "0",
           "trailers %r" % res.trailers)


@check("ListImages: trailers without grpc-status give an error")
def _():
    code, det, _, _ = unary(C.target, IS + "ListImages")
    expect_code(code, {SC.UNKNOWN, SC.INTERNAL}, det)


@check("ListImages raw: message then END_STREAM trailers lacking grpc-status")
def _():
    res = raw_call(C.server.sock_path, IS + "ListImages")
    body = res.body()
    expect(len(body) > 5 and body[1:5] == struct.pack(">I", len(body) - 5),
           "body %r" % body[:16])
    expect(res.ended and res.trailers is not None, "no trailers")
    expect(all(not k.startswith("grpc-") for k, _ in res.trailers),
           "trailers %r" % res.trailers)


@check("PullImage: trailers-only gives NOT_FOUND with the message")
def _():
    code, det, _, _ = unary(C.target, IS + "PullImage")
    expect_code(code, {SC.NOT_FOUND}, det)
    expect(det == 'image "x" not found', "details %r" % det)


@check("PullImage raw: a single HEADERS frame with END_STREAM")
def _():
    res = raw_call(C.server.sock_path, IS + "PullImage")
    on_stream = [(t, f) for t, f, sid, _ in res.frames() if sid == 1]
    expect(on_stream == [(FRAME_HEADERS, FLAG_END_STREAM | 0x4)],
           "frames on stream 1: %r" % on_stream)
    hdrs = dict(res.headers or [])
    expect(hdrs.get(":status") == "200" and hdrs.get("grpc-status") == "5"
           and hdrs.get("content-type") == "application/grpc", "%r" % hdrs)


@check("GetContainerEvents: 3 events, about 50 ms apart, then OK")
def _():
    ch = channel(C.target)
    try:
        call = ch.unary_stream(RS + "GetContainerEvents")(b"", timeout=5)
        got, times = [], []
        for msg in call:
            got.append(msg)
            times.append(time.monotonic())
        expect(call.code() == SC.OK, "code %s" % call.code())
    finally:
        ch.close()
    expect(got == [event_bytes(i) for i in range(3)], "events %r" % got)
    gaps = [b - a for a, b in zip(times, times[1:])]
    expect(all(g >= 0.03 for g in gaps), "gaps %r" % gaps)


@check("ExecSync: reassembled from 1-byte frames, exact bytes")
def _():
    code, det, resp, _ = unary(C.target, RS + "ExecSync")
    expect_code(code, {SC.OK}, det)
    expect(resp == EXEC_SYNC_BYTES, "response %r" % resp)


@check("ExecSync raw: every DATA frame of the 17-byte message is 1 byte")
def _():
    res = raw_call(C.server.sock_path, RS + "ExecSync")
    sizes = [len(d) for d in res.data_frames]
    expect(sizes == [1] * 17, "DATA frame sizes %r" % sizes)
    expect(res.body() == struct.pack(">BI", 0, 12) + EXEC_SYNC_BYTES,
           "body %r" % res.body())


@check("RemoveContainer: HTTP 503 maps to UNAVAILABLE")
def _():
    code, det, _, _ = unary(C.target, RS + "RemoveContainer")
    expect_code(code, {SC.UNAVAILABLE}, det)


@check("RemoveContainer raw: :status 503 and no grpc-* headers")
def _():
    res = raw_call(C.server.sock_path, RS + "RemoveContainer")
    hdrs = dict(res.headers or [])
    expect(hdrs.get(":status") == "503", "%r" % hdrs)
    expect(not any(k.startswith("grpc-") for k in hdrs), "%r" % hdrs)
    expect(res.trailers is None and res.ended, "trailers %r" % res.trailers)


@check("StopContainer: abrupt close gives UNAVAILABLE")
def _():
    code, det, _, _ = unary(C.target, RS + "StopContainer")
    expect_code(code, {SC.UNAVAILABLE, SC.INTERNAL}, det)


@check("StopContainer raw: EOF with nothing sent on the stream")
def _():
    res = raw_call(C.server.sock_path, RS + "StopContainer", read_to_eof=True)
    expect(res.eof, "no EOF")
    on_stream = [f for f in res.frames() if f[2] == 1]
    expect(on_stream == [], "frames on stream 1: %r" % on_stream)


@check("unknown path: UNIMPLEMENTED 'unknown method'")
def _():
    code, det, _, _ = unary(C.target, "/runtime.v1.RuntimeService/NoSuchThing")
    expect_code(code, {SC.UNIMPLEMENTED}, det)
    expect(det == "unknown method", "details %r" % det)


@check("concurrent streams on one connection (mixed methods)")
def _():
    ch = channel(C.target)
    try:
        version = ch.unary_unary(RS + "Version")
        status = ch.unary_unary(RS + "Status")
        events = ch.unary_stream(RS + "GetContainerEvents")
        hang = status.future(b"", timeout=1.0)
        ev_call = events(b"", timeout=5)
        futs = [version.future(b"", timeout=5) for _ in range(20)]
        collected = []
        t = threading.Thread(target=lambda: collected.extend(ev_call))
        t.start()
        for f in futs:
            expect(f.result() == VERSION_BYTES, "bad Version response")
        t.join(5)
        expect(len(collected) == 3, "%d events" % len(collected))
        try:
            hang.result()
            raise AssertionError("Status answered")
        except grpc.RpcError as e:
            expect_code(e.code(), {SC.DEADLINE_EXCEEDED}, e.details())
    finally:
        ch.close()


@check("several connections at once, each served")
def _():
    before = {r["conn"] for r in C.server.requests()}
    results = [None] * 8

    def worker(i):
        ch = channel(C.target, own_connection=True)
        try:
            results[i] = ch.unary_unary(RS + "Version")(b"", timeout=5)
        except grpc.RpcError as e:
            results[i] = e.code()
        finally:
            ch.close()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    expect(all(r == VERSION_BYTES for r in results), "results %r" % results)
    new = {r["conn"] for r in C.server.requests()} - before
    expect(len(new) >= 8, "only %d new connections" % len(new))


@check("garbage and half-open clients only lose their own connection")
def _():
    junk = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    junk.settimeout(5)
    junk.connect(C.server.sock_path)
    junk.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.connect(C.server.sock_path)        # never sends anything
    try:
        got = b""
        while True:
            chunk = junk.recv(4096)
            if not chunk:
                break
            got += chunk
        # h2 answers a bad preface with SETTINGS + GOAWAY, then we close
        types = []
        pos = 0
        while pos + 9 <= len(got):
            types.append(got[pos + 3])
            pos += 9 + int.from_bytes(got[pos:pos + 3], "big")
        expect(0x7 in types, "no GOAWAY before close: %r" % got[:64])
        code, det, resp, _ = unary(C.target, RS + "Version")
        expect(code == SC.OK and resp == VERSION_BYTES, "%s %r" % (code, det))
    finally:
        junk.close()
        idle.close()


@check("server survived all faults and serves a new connection")
def _():
    expect(C.server.alive(), "server process exited")
    code, det, resp, _ = unary(C.target, RS + "Version")
    expect(code == SC.OK and resp == VERSION_BYTES, "%s %r" % (code, det))
    expect("Traceback" not in C.server.log_text(), "traceback in server log")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    passed = failed = 0
    with tempfile.TemporaryDirectory(prefix="fake_cri.") as tmp:
        C.server = FakeServer(tmp)
        C.target = "unix:" + C.server.sock_path
        try:
            for name, fn in RESULTS:
                try:
                    fn()
                    passed += 1
                    print("PASS  %s" % name)
                except Exception as e:
                    failed += 1
                    print("FAIL  %s: %s" % (name, e))
                sys.stdout.flush()
        finally:
            rc = C.server.stop()
            server_log = C.server.log_text()
        # SIGTERM handling
        name = "SIGTERM: exits 0 and removes the socket"
        if rc == 0 and not os.path.exists(C.server.sock_path):
            passed += 1
            print("PASS  %s" % name)
        else:
            failed += 1
            print("FAIL  %s: rc=%s, socket exists=%s"
                  % (name, rc, os.path.exists(C.server.sock_path)))

        # TCP listener
        name = ("TCP 127.0.0.1:PORT: Version, UNIMPLEMENTED, StopContainer "
                "abort (RST), then Version again")
        tdir = os.path.join(tmp, "tcp")
        os.mkdir(tdir)
        srv = None
        try:
            port = free_port()
            srv = FakeServer(tdir, tcp_port=port)
            target = "127.0.0.1:%d" % port
            code, det, resp, _ = unary(target, RS + "Version")
            expect(code == SC.OK and resp == VERSION_BYTES, "%s %r" % (code, det))
            code, det, _, _ = unary(target, "/x/Y")
            expect_code(code, {SC.UNIMPLEMENTED}, det)
            code, det, _, _ = unary(target, RS + "StopContainer")
            expect_code(code, {SC.UNAVAILABLE, SC.INTERNAL}, det)
            code, det, resp, _ = unary(target, RS + "Version")
            expect(code == SC.OK, "after abort: %s %r" % (code, det))
            passed += 1
            print("PASS  %s" % name)
        except Exception as e:
            failed += 1
            print("FAIL  %s: %s" % (name, e))
        finally:
            if srv is not None:
                srv.stop()

        if failed and os.environ.get("FAKE_CRI_SHOW_LOG", "1") != "0":
            sys.stderr.write("---- server log ----\n" + server_log[-20000:])
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

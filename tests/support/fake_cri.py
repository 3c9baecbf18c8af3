#!/usr/bin/python3
"""Fake CRI (runtime.v1) gRPC server that misbehaves on purpose.

A real containerd never sends a truncated gRPC message, a malformed HTTP/2
frame or trailers without grpc-status.  The kubelua tests need exactly those
situations, so this server answers a few CRI methods with well-defined faults
(see METHODS below).  It speaks HTTP/2 through python3-h2 and, where a fault
needs bytes that h2 refuses to produce, writes them straight to the socket.

Usage:
    /usr/bin/python3 tests/support/fake_cri.py --unix PATH
    /usr/bin/python3 tests/support/fake_cri.py --tcp 127.0.0.1:PORT
    (both may be given; PORT 0 picks a free port, logged on stderr)

Prints "READY" on stdout once every listener is up, logs to stderr, and exits
cleanly on SIGTERM or SIGINT.  With --record FILE, every request's headers are
also appended to FILE as one JSON object per line.

Needs Debian's python3-h2 (apt-get install -y python3-h2), run with
/usr/bin/python3.
"""

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import struct
import sys

try:
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.exceptions
    import h2.settings
except ImportError:  # pragma: no cover - environment problem, say so clearly
    sys.stderr.write("fake_cri: python3-h2 is missing; run "
                     "'apt-get install -y python3-h2' and use /usr/bin/python3\n")
    sys.exit(2)

log = logging.getLogger("fake_cri")

# ---------------------------------------------------------------------------
# Minimal protobuf encoding (only what the responses below need)
# ---------------------------------------------------------------------------

WT_VARINT = 0
WT_LEN = 2


def pb_varint(n):
    """Base-128 varint; negative numbers are encoded as 64-bit two's complement."""
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def pb_key(field, wire_type):
    return pb_varint((field << 3) | wire_type)


def pb_uint(field, value):
    """Varint field (int32/int64/uint64/bool/enum).  Emitted even when zero."""
    return pb_key(field, WT_VARINT) + pb_varint(value)


def pb_bytes(field, value):
    """Length-delimited field: bytes, string or an already encoded message."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return pb_key(field, WT_LEN) + pb_varint(len(value)) + value


pb_string = pb_bytes
pb_message = pb_bytes


def grpc_frame(message, compressed=0):
    """gRPC length-prefixed message: flag byte + 4-byte big-endian length."""
    return struct.pack(">BI", compressed, len(message)) + message


# ---------------------------------------------------------------------------
# Canned messages
# ---------------------------------------------------------------------------

MiB = 1024 * 1024
BIG_MESSAGE_SIZE = 17 * MiB           # larger than the client's 16 MiB limit
EVENT_BASE_NS = 1700000000000000000
EVENT_INTERVAL = 0.05                 # seconds between streamed events
TINY_FRAME_BYTES = 20                 # ExecSync: this many 1-byte DATA frames
TINY_FRAME_PAUSE = 0.002              # ...with this pause so they arrive apart
TRUNCATED_ANNOUNCED = 100             # ImageFsInfo: prefix says this many bytes
TRUNCATED_SENT = 10                   # ...but only this many follow


def version_response():
    # VersionResponse{version=1, runtime_name=2, runtime_version=3, runtime_api_version=4}
    return (pb_string(1, "0.1.0") + pb_string(2, "fake")
            + pb_string(3, "1.0") + pb_string(4, "v1"))


_big_cache = []


def big_list_containers_response():
    """ListContainersResponse{containers=[Container{id=<huge>}]}, exactly 17 MiB."""
    if _big_cache:
        return _big_cache[0]
    id_len = BIG_MESSAGE_SIZE
    while True:
        container_len = 1 + len(pb_varint(id_len)) + id_len
        total = 1 + len(pb_varint(container_len)) + container_len
        if total == BIG_MESSAGE_SIZE:
            break
        id_len -= total - BIG_MESSAGE_SIZE
    container = pb_string(1, b"c" * id_len)
    msg = pb_message(1, container)
    assert len(msg) == BIG_MESSAGE_SIZE
    _big_cache.append(msg)
    return msg


def image_fs_info_response(size):
    """A valid ImageFsInfoResponse padded (via the mountpoint) to `size` bytes."""
    def build(mount_len):
        usage = (pb_uint(1, EVENT_BASE_NS)                               # timestamp
                 + pb_message(2, pb_string(1, "/" + "m" * mount_len))    # fs_id
                 + pb_message(3, pb_uint(1, 123456789))                  # used_bytes
                 + pb_message(4, pb_uint(1, 4242)))                      # inodes_used
        return pb_message(1, usage)
    mount_len = 0
    while len(build(mount_len)) < size:
        mount_len += 1
    msg = build(mount_len)
    assert len(msg) == size, len(msg)
    return msg


def list_images_response():
    image = (pb_string(1, "sha256:" + "ab" * 32)
             + pb_string(2, "docker.io/library/busybox:latest")
             + pb_uint(4, 4261550))
    return pb_message(1, image)


def container_event(i):
    # ContainerEventResponse{container_id=1, container_event_type=2, created_at=3,
    #   pod_sandbox_status=4{id=1, metadata=2{name=1, uid=2, namespace=3}}}
    sandbox = pb_string(1, "sb1") + pb_message(
        2, pb_string(1, "web") + pb_string(2, "uid-1") + pb_string(3, "default"))
    return (pb_string(1, "c%d" % (i + 1)) + pb_uint(2, i)
            + pb_uint(3, EVENT_BASE_NS + i) + pb_message(4, sandbox))


def exec_sync_response():
    # ExecSyncResponse{stdout=1, stderr=2 (sent explicitly, empty), exit_code=3}
    return pb_bytes(1, b"hello\n") + pb_bytes(2, b"") + pb_uint(3, 3)


def grpc_message_encode(text):
    """Percent-encode a grpc-message value as the gRPC HTTP/2 spec asks."""
    out = []
    for b in text.encode("utf-8"):
        if 0x20 <= b <= 0x7E and b != 0x25:
            out.append(chr(b))
        else:
            out.append("%%%02X" % b)
    return "".join(out)


# ---------------------------------------------------------------------------
# HTTP/2 connection handling
# ---------------------------------------------------------------------------

class StreamGone(Exception):
    """The stream was reset by the peer or its connection went away."""


class Stream:
    def __init__(self, stream_id, headers):
        self.id = stream_id
        self.headers = headers
        self.body = bytearray()
        self.task = None
        self.reset = False

    @property
    def path(self):
        for name, value in self.headers:
            if name == ":path":
                return value
        return ""


class Server:
    """State shared by all connections."""

    def __init__(self, record_path=None):
        self.next_conn_id = 1
        self.connections = set()
        self.record_file = open(record_path, "a", buffering=1) if record_path else None

    def record(self, entry):
        if self.record_file:
            self.record_file.write(json.dumps(entry, sort_keys=True) + "\n")

    def close(self):
        for c in list(self.connections):
            c.shutdown("server stopping")
        if self.record_file:
            self.record_file.close()


class H2Protocol(asyncio.Protocol):
    """One client connection.  Every request runs as its own asyncio task."""

    def __init__(self, server):
        self.server = server
        self.id = server.next_conn_id
        server.next_conn_id += 1
        self.transport = None
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        self.streams = {}
        self.dead = False            # no more h2 traffic on this connection
        self.window_waiters = []
        self.write_ok = None         # asyncio.Event, cleared while paused

    # -- asyncio.Protocol ---------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        self.write_ok = asyncio.Event()
        self.write_ok.set()
        self.server.connections.add(self)
        peer = transport.get_extra_info("peername") or "unix"
        log.info("conn#%d: opened (peer %s)", self.id, peer)
        self.conn.local_settings = h2.settings.Settings(
            client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: MiB,
            })
        self.conn.initiate_connection()
        # Open the connection-level receive window as well.
        self.conn.increment_flow_control_window(16 * MiB)
        self.flush()

    def connection_lost(self, exc):
        log.info("conn#%d: closed (%s)", self.id, exc or "eof")
        self.dead = True
        self.server.connections.discard(self)
        self.wake_window_waiters()
        self.write_ok.set()
        for st in self.streams.values():
            if st.task and not st.task.done():
                st.task.cancel()

    def eof_received(self):
        log.info("conn#%d: peer sent EOF", self.id)
        return False  # let the transport close

    def pause_writing(self):
        self.write_ok.clear()

    def resume_writing(self):
        self.write_ok.set()

    def data_received(self, data):
        if self.dead:
            return  # after a deliberate fault we ignore whatever comes in
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.warning("conn#%d: client protocol error: %r; closing", self.id, e)
            pending = self.conn.data_to_send()
            if not pending:
                # h2 queues a GOAWAY for most errors but not for a bad
                # preface; send one ourselves so the peer learns why.
                try:
                    self.conn.close_connection(
                        error_code=h2.errors.ErrorCodes.PROTOCOL_ERROR)
                    pending = self.conn.data_to_send()
                except h2.exceptions.H2Error:
                    pass
            if pending and not self.transport.is_closing():
                self.transport.write(pending)
            self.shutdown("protocol error")
            return
        for ev in events:
            try:
                self.handle_event(ev)
            except Exception:
                log.exception("conn#%d: error handling %r", self.id, ev)
        self.flush()

    # -- h2 events ------------------------------------------------------------

    def handle_event(self, ev):
        if isinstance(ev, h2.events.RequestReceived):
            st = Stream(ev.stream_id, list(ev.headers))
            self.streams[ev.stream_id] = st
            self.log_request(st)
        elif isinstance(ev, h2.events.DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.body += ev.data
            try:
                self.conn.acknowledge_received_data(
                    ev.flow_controlled_length, ev.stream_id)
            except h2.exceptions.StreamClosedError:
                pass
        elif isinstance(ev, h2.events.StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None and st.task is None:
                self.start_handler(st)
        elif isinstance(ev, h2.events.StreamReset):
            st = self.streams.pop(ev.stream_id, None)
            log.info("conn#%d stream#%d: reset by client (error code %s)",
                     self.id, ev.stream_id, ev.error_code)
            if st is not None:
                st.reset = True
                if st.task and not st.task.done():
                    st.task.cancel()
            self.wake_window_waiters()
        elif isinstance(ev, (h2.events.WindowUpdated,
                             h2.events.RemoteSettingsChanged)):
            self.wake_window_waiters()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            log.info("conn#%d: GOAWAY from client (error %s, last stream %s)",
                     self.id, ev.error_code, ev.last_stream_id)
            self.flush()
            self.shutdown("client GOAWAY")
        elif isinstance(ev, h2.events.TrailersReceived):
            log.info("conn#%d stream#%d: request trailers %r",
                     self.id, ev.stream_id, ev.headers)
        # PING, SETTINGS and their ACKs are answered by h2 itself.

    def log_request(self, st):
        hdrs = dict(st.headers)
        timeout = hdrs.get("grpc-timeout")
        log.info("conn#%d stream#%d: request %s grpc-timeout=%s headers=%s",
                 self.id, st.id, st.path, timeout if timeout else "none",
                 json.dumps(st.headers))
        self.server.record({"conn": self.id, "stream": st.id, "path": st.path,
                            "grpc_timeout": timeout, "headers": st.headers})

    def start_handler(self, st):
        handler = METHODS.get(st.path, handle_unknown)
        log.info("conn#%d stream#%d: %s -> %s (request body %d bytes)",
                 self.id, st.id, st.path, handler.__name__, len(st.body))
        st.task = asyncio.ensure_future(self.run_handler(handler, st))

    async def run_handler(self, handler, st):
        try:
            await handler(self, st)
        except (StreamGone, asyncio.CancelledError):
            log.info("conn#%d stream#%d: handler stopped (stream gone)",
                     self.id, st.id)
        except h2.exceptions.StreamClosedError:
            log.info("conn#%d stream#%d: stream closed under the handler",
                     self.id, st.id)
        except Exception:
            log.exception("conn#%d stream#%d: handler crashed", self.id, st.id)
            self.try_reset(st.id)
        finally:
            if self.streams.get(st.id) is st and not st.reset:
                self.streams.pop(st.id, None)

    # -- helpers used by handlers ---------------------------------------------

    def flush(self):
        if self.transport is None or self.transport.is_closing():
            return
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def check(self, st):
        if self.dead or st.reset:
            raise StreamGone()

    def wake_window_waiters(self):
        waiters, self.window_waiters = self.window_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_window(self):
        fut = asyncio.get_running_loop().create_future()
        self.window_waiters.append(fut)
        await fut

    async def send_headers(self, st, headers, end_stream=False):
        self.check(st)
        self.conn.send_headers(st.id, headers, end_stream=end_stream)
        self.flush()
        await self.write_ok.wait()

    async def send_data(self, st, data, end_stream=False, max_chunk=None):
        """Send data respecting flow control and the peer's max frame size."""
        view = memoryview(data)
        pos = 0
        while True:
            self.check(st)
            remaining = len(view) - pos
            if remaining == 0 and not end_stream:
                return
            window = self.conn.local_flow_control_window(st.id)
            n = min(remaining, window, self.conn.max_outbound_frame_size)
            if max_chunk is not None:
                n = min(n, max_chunk)
            if n <= 0 and remaining > 0:
                await self.wait_window()
                continue
            last = pos + n == len(view)
            self.conn.send_data(st.id, bytes(view[pos:pos + n]),
                                end_stream=end_stream and last)
            pos += n
            self.flush()
            await self.write_ok.wait()
            if last:
                return
            await asyncio.sleep(0)   # let reads (WINDOW_UPDATE, RST) through

    async def send_trailers(self, st, status, message=None, extra=()):
        trailers = [("grpc-status", str(status))]
        if message is not None:
            trailers.append(("grpc-message", grpc_message_encode(message)))
        trailers.extend(extra)
        await self.send_headers(st, trailers, end_stream=True)

    def write_raw(self, data):
        """Bytes that bypass h2 entirely (h2's state no longer matches)."""
        self.dead = True
        if self.transport and not self.transport.is_closing():
            self.transport.write(data)

    def close_after_write(self):
        """Half-close our side after the pending bytes, then close.

        Shutting down only the write side lets the client read everything we
        wrote before it sees EOF, even over TCP where closing a socket with
        unread input would send an RST and could discard our last bytes.
        """
        self.dead = True
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.can_write_eof():
            t.write_eof()
            asyncio.get_running_loop().call_later(2.0, t.close)
        else:
            t.close()

    def abort(self):
        """Drop the connection at once, without flushing anything."""
        self.dead = True
        t = self.transport
        if t is None or t.is_closing():
            return
        sock = t.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # linger 0: the kernel sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            struct.pack("ii", 1, 0))
        t.abort()

    def try_reset(self, stream_id):
        if self.dead:
            return
        try:
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            self.flush()
        except h2.exceptions.H2Error:
            pass

    def shutdown(self, why):
        if self.transport and not self.transport.is_closing():
            log.info("conn#%d: closing (%s)", self.id, why)
            self.dead = True
            self.transport.close()


RESPONSE_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]


# ---------------------------------------------------------------------------
# Method handlers: (protocol, stream) -> coroutine
# ---------------------------------------------------------------------------

async def handle_version(p, st):
    """Well-behaved unary call."""
    await p.send_headers(st, RESPONSE_HEADERS)
    await p.send_data(st, grpc_frame(version_response()))
    await p.send_trailers(st, 0)


async def handle_status(p, st):
    """Never answers; the client's deadline has to fire and it RSTs the stream."""
    log.info("conn#%d stream#%d: Status will hang until the client gives up",
             p.id, st.id)
    await asyncio.Event().wait()   # cancelled on RST_STREAM or disconnect


async def handle_list_containers(p, st):
    """One valid 17 MiB message, sent within flow control."""
    msg = big_list_containers_response()
    await p.send_headers(st, RESPONSE_HEADERS)
    await p.send_data(st, grpc_frame(msg))
    await p.send_trailers(st, 0)


async def handle_list_pod_sandbox(p, st):
    """Headers, then a PING frame of length 7 (must be 8) on stream 0."""
    await p.send_headers(st, RESPONSE_HEADERS)
    payload = b"\x00" * 7
    # frame header: 24-bit length, type 0x6 (PING), flags 0, stream id 0
    bad_ping = struct.pack(">I", len(payload))[1:] + bytes([0x6, 0x0]) \
        + struct.pack(">I", 0) + payload
    log.info("conn#%d stream#%d: writing malformed PING (length 7) and closing",
             p.id, st.id)
    p.write_raw(bad_ping)
    p.close_after_write()


async def handle_image_fs_info(p, st):
    """Prefix announces 100 bytes, only 10 follow, then OK trailers."""
    msg = image_fs_info_response(TRUNCATED_ANNOUNCED)
    prefix = struct.pack(">BI", 0, TRUNCATED_ANNOUNCED)
    await p.send_headers(st, RESPONSE_HEADERS)
    await p.send_data(st, prefix + msg[:TRUNCATED_SENT])
    await p.send_trailers(st, 0)


async def handle_list_images(p, st):
    """A valid message, then trailers lacking grpc-status."""
    await p.send_headers(st, RESPONSE_HEADERS)
    await p.send_data(st, grpc_frame(list_images_response()))
    await p.send_headers(st, [("x-fake-cri", "trailers-without-grpc-status")],
                         end_stream=True)


async def handle_pull_image(p, st):
    """Trailers-only: one HEADERS frame with END_STREAM and grpc-status 5."""
    await p.send_headers(st, RESPONSE_HEADERS + [
        ("grpc-status", "5"),
        ("grpc-message", grpc_message_encode('image "x" not found')),
    ], end_stream=True)


async def handle_container_events(p, st):
    """Server streaming: three events 50 ms apart, then OK."""
    await p.send_headers(st, RESPONSE_HEADERS)
    for i in range(3):
        if i:
            await asyncio.sleep(EVENT_INTERVAL)
        await p.send_data(st, grpc_frame(container_event(i)))
    await p.send_trailers(st, 0)


async def handle_exec_sync(p, st):
    """The message is dribbled out as 1-byte DATA frames (first 20 bytes)."""
    frame = grpc_frame(exec_sync_response())
    await p.send_headers(st, RESPONSE_HEADERS)
    head, tail = frame[:TINY_FRAME_BYTES], frame[TINY_FRAME_BYTES:]
    for i in range(len(head)):
        await p.send_data(st, head[i:i + 1])
        await asyncio.sleep(TINY_FRAME_PAUSE)
    if tail:
        await p.send_data(st, tail)
    await p.send_trailers(st, 0)


async def handle_remove_container(p, st):
    """Plain HTTP 503 with a text body and no gRPC headers at all."""
    await p.send_headers(st, [(":status", "503"), ("content-type", "text/plain")])
    await p.send_data(st, b"service unavailable\n", end_stream=True)


async def handle_stop_container(p, st):
    """Drop the connection as soon as the request has been read."""
    log.info("conn#%d stream#%d: aborting the connection", p.id, st.id)
    p.abort()


async def handle_unknown(p, st):
    await p.send_headers(st, RESPONSE_HEADERS + [
        ("grpc-status", "12"),
        ("grpc-message", grpc_message_encode("unknown method")),
    ], end_stream=True)


RS = "/runtime.v1.RuntimeService/"
IS = "/runtime.v1.ImageService/"
METHODS = {
    RS + "Version": handle_version,
    RS + "Status": handle_status,
    RS + "ListContainers": handle_list_containers,
    RS + "ListPodSandbox": handle_list_pod_sandbox,
    IS + "ImageFsInfo": handle_image_fs_info,
    IS + "ListImages": handle_list_images,
    IS + "PullImage": handle_pull_image,
    RS + "GetContainerEvents": handle_container_events,
    RS + "ExecSync": handle_exec_sync,
    RS + "RemoveContainer": handle_remove_container,
    RS + "StopContainer": handle_stop_container,
}


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def parse_tcp(spec):
    host, sep, port = spec.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected HOST:PORT, got %r" % spec)
    host = host.strip("[]")
    try:
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            "only loopback addresses are allowed, got %r" % host)
    return host, int(port)


async def serve(args):
    loop = asyncio.get_running_loop()
    server = Server(args.record)
    listeners = []
    factory = lambda: H2Protocol(server)  # noqa: E731

    if args.unix:
        if os.path.exists(args.unix):
            os.unlink(args.unix)
        listeners.append(await loop.create_unix_server(factory, args.unix))
        log.info("listening on unix:%s", args.unix)
    if args.tcp:
        host, port = args.tcp
        srv = await loop.create_server(factory, host, port, reuse_address=True)
        listeners.append(srv)
        for sock in srv.sockets:
            addr = sock.getsockname()
            log.info("listening on tcp %s:%d", addr[0], addr[1])

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    big_list_containers_response()  # build the 17 MiB body up front
    sys.stdout.write("READY\n")
    sys.stdout.flush()

    await stop.wait()
    log.info("signal received, shutting down")
    for srv in listeners:
        srv.close()
    server.close()
    for srv in listeners:
        await srv.wait_closed()
    if args.unix:
        try:
            os.unlink(args.unix)
        except FileNotFoundError:
            pass


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--unix", metavar="PATH", help="listen on a unix socket")
    ap.add_argument("--tcp", metavar="127.0.0.1:PORT", type=parse_tcp,
                    help="listen on a loopback TCP address")
    ap.add_argument("--record", metavar="FILE",
                    help="append each request's headers to FILE as JSON lines")
    ap.add_argument("--quiet", action="store_true", help="log warnings only")
    args = ap.parse_args(argv)
    if not args.unix and not args.tcp:
        ap.error("give --unix PATH and/or --tcp 127.0.0.1:PORT")

    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s.%(msecs)03d fake_cri[%(process)d] %(message)s",
        datefmt="%H:%M:%S")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

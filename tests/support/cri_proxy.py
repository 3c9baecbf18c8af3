#!/usr/bin/python3
"""Fault-injecting CRI proxy: sits between a CRI client and a real runtime.

    client (kubelua agent / CLI) --unix--> cri_proxy.py --unix--> containerd

Every RPC is forwarded unchanged (headers, messages, trailers; unary and
server-streaming alike) unless a fault rule in the control file matches it.
This is the pattern of kubelet's test/e2e_node/criproxy_test.go, done one
layer lower so that faults a gRPC library would never produce (a cut
message, garbage, a dropped connection) are possible too.

Usage:
    /usr/bin/python3 tests/support/cri_proxy.py --listen PROXY.sock \
        --upstream /path/containerd.sock --control faults.json [--log calls.jsonl]

Prints "READY" on stdout once the control file has been applied (listening,
or not when it says "down"), logs to stderr, exits cleanly on SIGTERM/SIGINT.

Control file (JSON, re-read when it changes: polled every 50 ms and checked
before each call, so replace it atomically with a rename):

    {"gen": 3,                      # echoed in the log once applied
     "down": false,                 # true: stop accepting (listener closed,
                                    #   socket removed, connections cut)
     "faults": [                    # first matching rule wins
       {"method": "ExecSync",       # RPC name, full path, or "*"
        "match": "marker",          # optional: substring of the request message
        "not_match": "text",        # optional: only requests without this substring
        "empty_request": true,      # optional: only requests with an empty message
        "count": 2,                 # optional: only the next N matching calls
        "delay": 5.0,               # wait before forwarding (combines with the rest)
        "status": 14, "message": "x"  # answer with this gRPC status, no forwarding
        "drop": "before" | "after"  # cut the connection: before forwarding, or
                                    #   after half the response message was sent
        "truncate": "trailers" | "eof"  # forward, then send the length prefix
                                    #   and half the message, then OK trailers
                                    #   (or END_STREAM without trailers)
        "garbage": 64,              # forward, then replace the first response
                                    #   message by N random bytes (true: same size)
        "inflate": 17825792         # forward, then pad a List* response (repeated
                                    #   field 1 whose entries have their id in field
                                    #   1: ListContainers, ListPodSandbox,
                                    #   ListImages) to at least N bytes by
                                    #   repeating the real entries with new ids
       }]}

Call log (--log, JSON lines): {"event": "begin", "conn", "stream", "method",
"path", "start", "fault", "rule"} when a call arrives and {"event": "call",
... the same ..., "end", "outcome"} when it is over. "start" and "end" are
CLOCK_MONOTONIC seconds (the clock kubelua's task.monotime reads), "fault"
the actions of the rule that matched (or null), "rule" its 1-based index in
"faults" (or null). "outcome" is "status N" (the grpc-status the client
got, forwarded or injected), "reset" (the client cancelled, e.g. at its
deadline), "dropped", "truncated", "garbage", "inflated to N bytes",
"connection closed" (the client went away) or "upstream gone". Also {"event": "control", "gen", "down"} when a control file has been
applied, and {"event": "conn", "conn"} for each accepted connection.

Why raw HTTP/2 (python3-h2 on asyncio) rather than grpcio: grpcio's server
can add delays and statuses, but it cannot send a length prefix that lies,
a message that is not protobuf, or close the connection in the middle of a
response; and a grpcio client upstream would decode and re-frame what
containerd says. With h2 on both sides the proxy passes HTTP/2 streams
through frame by frame and rewrites only the calls a rule selects. Each
client connection gets its own upstream connection, so a dropped client
connection never disturbs the others.

Needs Debian's python3-h2 (tests/support/deps.sh installs it).
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import struct
import sys
import time

try:
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.exceptions
    import h2.settings
except ImportError:  # pragma: no cover - environment problem, say so clearly
    sys.stderr.write("cri_proxy: python3-h2 is missing; run "
                     "'apt-get install -y python3-h2' and use /usr/bin/python3\n")
    sys.exit(2)

log = logging.getLogger("cri_proxy")

MiB = 1024 * 1024
WINDOW = 4 * MiB
STATUS_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13,
    "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
# Hop-by-hop headers never forwarded (HTTP/2 forbids most of them anyway).
HOP_HEADERS = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}


def now():
    return time.monotonic()


# ---------------------------------------------------------------------------
# gRPC framing and the little protobuf the faults need
# ---------------------------------------------------------------------------

def grpc_frame(message):
    return struct.pack(">BI", 0, len(message)) + message


def split_messages(data):
    """Complete gRPC messages in data (bytes), and the undecodable rest."""
    out, pos = [], 0
    while len(data) - pos >= 5:
        n = struct.unpack(">I", data[pos + 1:pos + 5])[0]
        if len(data) - pos - 5 < n:
            break
        out.append(data[pos + 5:pos + 5 + n])
        pos += 5 + n
    return out, data[pos:]


def pb_varint(n):
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def read_varint(buf, pos):
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def pb_fields(buf):
    """Yield (field, wire_type, raw bytes of the whole field, payload)."""
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = read_varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            _, pos = read_varint(buf, pos)
            payload = None
        elif wt == 1:
            pos += 8
            payload = None
        elif wt == 5:
            pos += 4
            payload = None
        elif wt == 2:
            n, pos = read_varint(buf, pos)
            payload = buf[pos:pos + n]
            pos += n
        else:
            raise ValueError("unsupported wire type %d" % wt)
        yield field, wt, buf[start:pos], payload


def pb_len_field(field, payload):
    return pb_varint(field << 3 | 2) + pb_varint(len(payload)) + payload


def inflate_list(message, target):
    """Repeat the entries of a List* response (field 1, each with its id in
    its own field 1) under fresh ids until the message has >= target bytes."""
    entries, rest = [], []
    for field, wt, raw, payload in pb_fields(message):
        if field == 1 and wt == 2:
            entries.append(payload)
        else:
            rest.append(raw)
    if not entries:  # an empty list: invent one entry that is only an id
        entries = [pb_len_field(1, b"0" * 64)]
    # each entry without its id, so new ids can be put in front; ids are
    # 64 hex digits (as containerd's), so an entry's framing is fixed
    bodies = [b"".join(raw for f, _, raw, _ in pb_fields(e) if f != 1) for e in entries]
    heads = [pb_varint(1 << 3 | 2) + pb_varint(2 + 64 + len(b)) + b"\x0a\x40" for b in bodies]
    sizes = [len(h) + 64 + len(b) for h, b in zip(heads, bodies)]
    per_round = sum(sizes)
    rounds = max(0, target - len(message) + per_round - 1) // per_round
    parts = [message]
    serial = 0
    for _ in range(rounds):
        for h, b in zip(heads, bodies):
            parts.append(h + b"%064x" % (0xfa117 << 200 | serial) + b)
            serial += 1
    return b"".join(parts)


def garbage_bytes(n):
    """n random bytes that no protobuf decoder accepts: the first byte is a
    key with field number 0 and wire type 7, both invalid."""
    n = max(1, n)
    return b"\x07" + os.urandom(n - 1)


def grpc_message_encode(text):
    out = []
    for b in text.encode("utf-8"):
        out.append(chr(b) if 0x20 <= b <= 0x7E and b != 0x25 else "%%%02X" % b)
    return "".join(out)


# ---------------------------------------------------------------------------
# Fault rules
# ---------------------------------------------------------------------------

ACTIONS = ("delay", "status", "drop", "truncate", "garbage", "inflate")
RULE_KEYS = set(ACTIONS) | {"method", "match", "not_match", "empty_request", "count", "message"}


class Rule:
    def __init__(self, spec):
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise ValueError("unknown rule keys: %s" % ", ".join(sorted(unknown)))
        self.method = spec.get("method", "*")
        self.match = spec.get("match")
        self.match_b = self.match.encode("utf-8") if self.match is not None else None
        self.not_match = spec.get("not_match")
        self.not_match_b = self.not_match.encode("utf-8") if self.not_match is not None else None
        self.empty_request = spec.get("empty_request", False)
        self.left = spec.get("count")
        self.delay = float(spec.get("delay", 0))
        status = spec.get("status")
        if isinstance(status, str):
            status = STATUS_CODES[status]
        self.status = status
        self.message = spec.get("message", "injected by cri_proxy")
        drop = spec.get("drop")
        self.drop = "after" if drop is True else drop
        if self.drop not in (None, "before", "after"):
            raise ValueError("drop must be true, \"before\" or \"after\"")
        trunc = spec.get("truncate")
        self.truncate = "trailers" if trunc is True else trunc
        if self.truncate not in (None, "trailers", "eof"):
            raise ValueError("truncate must be true, \"trailers\" or \"eof\"")
        self.garbage = spec.get("garbage")
        inflate = spec.get("inflate")
        self.inflate = 17 * MiB if inflate is True else inflate

    def matches(self, path, request):
        if self.left is not None and self.left <= 0:
            return False
        if self.method != "*" and self.method != path and self.method != path.rsplit("/", 1)[-1]:
            return False
        if self.empty_request and request:
            return False
        if self.match_b is not None and self.match_b not in request:
            return False
        if self.not_match_b is not None and self.not_match_b in request:
            return False
        return True

    def names(self):
        out = []
        for a in ACTIONS:
            v = getattr(self, a)
            if v not in (None, 0, 0.0, False):
                out.append(a)
        return ",".join(out)

    @property
    def rewrites_response(self):
        return self.drop == "after" or self.truncate or self.garbage or self.inflate


# ---------------------------------------------------------------------------
# HTTP/2 plumbing shared by both sides
# ---------------------------------------------------------------------------

class H2Side(asyncio.Protocol):
    """An h2 connection on an asyncio transport, with flow-controlled sends."""

    client_side = False

    def __init__(self):
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=self.client_side, header_encoding="utf-8",
            validate_inbound_headers=False, normalize_inbound_headers=False))
        self.transport = None
        self.dead = False
        self.window_waiters = []
        self.write_ok = asyncio.Event()
        self.write_ok.set()

    def connection_made(self, transport):
        self.transport = transport
        self.conn.local_settings = h2.settings.Settings(
            client=self.client_side, initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
            })
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(64 * MiB)
        self.flush()

    def pause_writing(self):
        self.write_ok.clear()

    def resume_writing(self):
        self.write_ok.set()

    def flush(self):
        if self.transport is None or self.transport.is_closing() or self.dead:
            return
        data = self.conn.data_to_send()
        if data:
            self.transport.write(data)

    def feed(self, data):
        if self.dead:
            return []
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.warning("%s: protocol error %r; closing", self, e)
            self.flush()
            self.close()
            return []
        for ev in events:
            if isinstance(ev, h2.events.DataReceived):
                try:
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                except h2.exceptions.StreamClosedError:
                    pass
            if isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged,
                               h2.events.StreamReset)):
                self.wake_window_waiters()
        return events

    def wake_window_waiters(self):
        waiters, self.window_waiters = self.window_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def send_headers(self, sid, headers, end_stream=False):
        if self.dead:
            raise ConnectionError("connection gone")
        self.conn.send_headers(sid, headers, end_stream=end_stream)
        self.flush()
        await self.write_ok.wait()

    async def send_data(self, sid, data, end_stream=False):
        view, pos = memoryview(data), 0
        while True:
            if self.dead:
                raise ConnectionError("connection gone")
            remaining = len(view) - pos
            if remaining == 0 and not end_stream:
                return
            n = min(remaining, self.conn.local_flow_control_window(sid),
                    self.conn.max_outbound_frame_size)
            if n <= 0 and remaining > 0:
                fut = asyncio.get_running_loop().create_future()
                self.window_waiters.append(fut)
                await fut
                continue
            last = pos + n == len(view)
            self.conn.send_data(sid, bytes(view[pos:pos + n]), end_stream=end_stream and last)
            pos += n
            self.flush()
            await self.write_ok.wait()
            if last:
                return
            await asyncio.sleep(0)

    def reset(self, sid, code=h2.errors.ErrorCodes.CANCEL):
        if self.dead:
            return
        try:
            self.conn.reset_stream(sid, code)
            self.flush()
        except h2.exceptions.H2Error:
            pass

    def close(self):
        if self.transport and not self.transport.is_closing():
            self.transport.close()
        self.dead = True
        self.wake_window_waiters()
        self.write_ok.set()

    def abort(self):
        """Cut the connection now, without a GOAWAY."""
        self.dead = True
        if self.transport and not self.transport.is_closing():
            self.transport.abort()
        self.wake_window_waiters()
        self.write_ok.set()


class Upstream(H2Side):
    """Client connection to the runtime; each stream feeds an asyncio.Queue."""

    client_side = True

    def __init__(self, owner):
        super().__init__()
        self.owner = owner
        self.queues = {}

    def __repr__(self):
        return "upstream#%d" % self.owner.id

    def data_received(self, data):
        for ev in self.feed(data):
            q = self.queues.get(getattr(ev, "stream_id", None))
            if isinstance(ev, h2.events.ResponseReceived):
                # stream_ended: a trailers-only answer (status in the headers)
                q and q.put_nowait(("headers", (ev.headers, ev.stream_ended is not None)))
            elif isinstance(ev, h2.events.TrailersReceived):
                q and q.put_nowait(("trailers", ev.headers))
            elif isinstance(ev, h2.events.DataReceived):
                q and q.put_nowait(("data", ev.data))
            elif isinstance(ev, h2.events.StreamEnded):
                q and q.put_nowait(("end", None))
                self.queues.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.StreamReset):
                q and q.put_nowait(("reset", ev.error_code))
                self.queues.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                log.info("%r: GOAWAY from the runtime (%s)", self, ev.error_code)
        self.flush()

    def connection_lost(self, exc):
        self.dead = True
        self.wake_window_waiters()
        self.write_ok.set()
        for q in self.queues.values():
            q.put_nowait(("gone", str(exc or "eof")))
        self.queues.clear()
        self.owner.upstream_lost()

    async def open_stream(self, headers, body):
        sid = self.conn.get_next_available_stream_id()
        q = asyncio.Queue()
        self.queues[sid] = q
        await self.send_headers(sid, headers)
        await self.send_data(sid, body, end_stream=True)
        return sid, q


class Call:
    def __init__(self, sid, headers):
        self.id = sid
        self.headers = headers
        self.body = bytearray()
        self.task = None
        self.up_sid = None
        self.reset_by_client = False
        self.path = dict(headers).get(":path", "")


class Downstream(H2Side):
    """One client connection; each call runs as its own task."""

    def __init__(self, proxy):
        super().__init__()
        self.proxy = proxy
        self.id = proxy.next_conn
        proxy.next_conn += 1
        self.calls = {}
        self.upstream = None
        self.upstream_ready = None

    def __repr__(self):
        return "conn#%d" % self.id

    def connection_made(self, transport):
        super().connection_made(transport)
        self.proxy.conns.add(self)
        self.proxy.record({"event": "conn", "conn": self.id})
        self.upstream_ready = asyncio.ensure_future(self.connect_upstream())

    async def connect_upstream(self):
        loop = asyncio.get_running_loop()
        try:
            _, self.upstream = await loop.create_unix_connection(
                lambda: Upstream(self), self.proxy.upstream_path)
        except OSError as e:
            log.warning("%r: cannot reach the runtime at %s: %s; dropping the client",
                        self, self.proxy.upstream_path, e)
            self.abort()
            return None
        return self.upstream

    def upstream_lost(self):
        # The runtime went away: so does this client's connection, as it
        # would if the client talked to the runtime directly.
        if not self.dead:
            log.info("%r: the runtime closed its connection; closing the client's", self)
            self.close()

    def data_received(self, data):
        for ev in self.feed(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.calls[ev.stream_id] = Call(ev.stream_id, ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                c = self.calls.get(ev.stream_id)
                if c:
                    c.body += ev.data
            elif isinstance(ev, h2.events.StreamEnded):
                c = self.calls.get(ev.stream_id)
                if c and c.task is None:
                    c.task = asyncio.ensure_future(self.run_call(c))
            elif isinstance(ev, h2.events.StreamReset):
                c = self.calls.pop(ev.stream_id, None)
                if c:
                    c.reset_by_client = True
                    if c.task and not c.task.done():
                        c.task.cancel()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.close()
        self.flush()

    def connection_lost(self, exc):
        self.dead = True
        self.wake_window_waiters()
        self.write_ok.set()
        self.proxy.conns.discard(self)
        for c in list(self.calls.values()):
            if c.task and not c.task.done():
                c.task.cancel()
        if self.upstream_ready and not self.upstream_ready.done():
            self.upstream_ready.cancel()
        if self.upstream:
            self.upstream.close()

    # -- one call -------------------------------------------------------------

    async def run_call(self, c):
        request = bytes(c.body[5:]) if len(c.body) >= 5 else b""
        rule = self.proxy.rule_for(c.path, request)
        rec = {"event": "begin", "conn": self.id, "stream": c.id,
               "method": c.path.rsplit("/", 1)[-1], "path": c.path, "start": now(),
               "fault": rule.names() if rule else None, "rule": rule.index if rule else None}
        self.proxy.record(rec)
        rec = dict(rec, event="call", outcome=None)
        try:
            rec["outcome"] = await self.serve(c, rule)
        except asyncio.CancelledError:
            rec["outcome"] = "reset" if c.reset_by_client else "connection closed"
            if c.up_sid is not None and self.upstream:
                self.upstream.reset(c.up_sid)
        except (ConnectionError, h2.exceptions.H2Error, OSError) as e:
            rec["outcome"] = "connection closed: %s" % e
        except Exception as e:  # a bug here must show, not hang the client
            log.exception("%r stream#%d: proxy error", self, c.id)
            rec["outcome"] = "proxy error: %r" % e
            self.reset(c.id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        finally:
            rec["end"] = now()
            self.proxy.record(rec)
            if self.calls.get(c.id) is c:
                del self.calls[c.id]

    async def serve(self, c, rule):
        if rule and rule.delay:
            await asyncio.sleep(rule.delay)
        if rule and rule.status is not None:
            await self.send_headers(c.id, [
                (":status", "200"), ("content-type", "application/grpc"),
                ("grpc-status", str(rule.status)),
                ("grpc-message", grpc_message_encode(rule.message))], end_stream=True)
            return "status %d" % rule.status
        if rule and rule.drop == "before":
            self.abort()
            return "dropped"
        up = await asyncio.shield(self.upstream_ready)
        if up is None or up.dead:
            self.abort()
            return "upstream gone"
        headers = [(k, v) for k, v in c.headers if k.lower() not in HOP_HEADERS]
        c.up_sid, q = await up.open_stream(headers, bytes(c.body))
        if rule and rule.rewrites_response:
            return await self.rewrite(c, q, rule)
        return await self.pass_through(c, q)

    async def pass_through(self, c, q):
        status = None
        while True:
            kind, v = await q.get()
            if kind == "headers":
                headers, ends = v
                status = dict(headers).get("grpc-status", status)
                await self.send_headers(c.id, headers, end_stream=ends)
                if ends:
                    await self.drain_end(q)
                    return "status %s" % status
            elif kind == "data":
                await self.send_data(c.id, v)
            elif kind == "trailers":
                status = dict(v).get("grpc-status")
                await self.send_headers(c.id, v, end_stream=True)
                await self.drain_end(q)
                return "status %s" % status
            elif kind == "end":
                await self.send_data(c.id, b"", end_stream=True)
                return "ended without trailers"
            elif kind == "reset":
                self.reset(c.id)
                return "upstream reset %s" % v
            elif kind == "gone":
                self.abort()
                return "upstream gone"

    @staticmethod
    async def drain_end(q):
        kind, _ = await q.get()
        assert kind in ("end", "gone", "reset"), kind

    async def rewrite(self, c, q, rule):
        """Collect the whole response, then answer with the rule's version."""
        headers, data, trailers = None, bytearray(), None
        while True:
            kind, v = await q.get()
            if kind == "headers":
                headers = v[0]
            elif kind == "data":
                data += v
            elif kind == "trailers":
                trailers = v
            elif kind == "end":
                break
            elif kind == "reset":
                self.reset(c.id)
                return "upstream reset %s" % v
            elif kind == "gone":
                self.abort()
                return "upstream gone"
        msgs, _ = split_messages(bytes(data))
        status = (dict(trailers or []).get("grpc-status") or dict(headers or []).get("grpc-status"))
        if not msgs or trailers is None:  # an error status: nothing to rewrite
            await self.send_headers(c.id, headers, end_stream=trailers is None)
            if trailers is not None:
                await self.send_data(c.id, bytes(data))
                await self.send_headers(c.id, trailers, end_stream=True)
            return "status %s (not rewritten)" % status
        first, rest = msgs[0], b"".join(grpc_frame(m) for m in msgs[1:])
        await self.send_headers(c.id, headers)
        if rule.drop == "after":
            await self.send_data(c.id, grpc_frame(first)[:5 + len(first) // 2])
            await asyncio.sleep(0.05)  # let the half message reach the client first
            self.abort()
            return "dropped"
        if rule.truncate:
            cut = grpc_frame(first)[:5 + len(first) // 2]
            if rule.truncate == "eof":
                await self.send_data(c.id, cut, end_stream=True)
            else:
                await self.send_data(c.id, cut)
                await self.send_headers(c.id, trailers, end_stream=True)
            return "truncated"
        if rule.garbage:
            n = len(first) if rule.garbage is True else int(rule.garbage)
            await self.send_data(c.id, grpc_frame(garbage_bytes(n)) + rest)
            await self.send_headers(c.id, trailers, end_stream=True)
            return "garbage"
        key = (first, int(rule.inflate))
        if self.proxy.inflated[0] != key:  # the same list again: reuse it
            self.proxy.inflated = (key, inflate_list(first, int(rule.inflate)))
        big = self.proxy.inflated[1]
        await self.send_data(c.id, grpc_frame(big) + rest)
        await self.send_headers(c.id, trailers, end_stream=True)
        return "inflated to %d bytes" % len(big)


# ---------------------------------------------------------------------------
# The proxy: listener, control file, log
# ---------------------------------------------------------------------------

class Proxy:
    def __init__(self, args):
        self.listen_path = args.listen
        self.upstream_path = args.upstream
        self.control_path = args.control
        self.log_file = open(args.log, "a", buffering=1) if args.log else None
        self.next_conn = 1
        self.conns = set()
        self.server = None
        self.rules = []
        self.down = False
        self.control_sig = None
        self.pending_gen = None
        self.inflated = (None, None)
        self.state_dirty = False

    def record(self, entry):
        if self.log_file:
            self.log_file.write(json.dumps(entry, sort_keys=True) + "\n")

    def rule_for(self, path, request):
        self.reload()
        for r in self.rules:
            if r.matches(path, request):
                if r.left is not None:
                    r.left -= 1
                return r
        return None

    def reload(self):
        """Re-read the control file if it changed; apply it."""
        if not self.control_path:
            return False
        try:
            st = os.stat(self.control_path)
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            sig = None
        if sig == self.control_sig:
            return False
        self.control_sig = sig
        spec = {}
        if sig is not None:
            try:
                with open(self.control_path) as f:
                    spec = json.load(f)
                self.rules = [Rule(r) for r in spec.get("faults", [])]
                for i, r in enumerate(self.rules):
                    r.index = i + 1
            except (ValueError, KeyError, TypeError) as e:
                log.error("control file %s: %s (keeping the previous rules)", self.control_path, e)
                self.record({"event": "control", "error": str(e), "gen": None})
                return False
        else:
            self.rules = []
        self.down = bool(spec.get("down", False))
        self.pending_gen = spec.get("gen")
        self.state_dirty = True  # watch() applies "down" and logs the generation
        log.info("control: gen %s, down=%s, %d rule(s)", self.pending_gen, self.down, len(self.rules))
        return True

    async def apply_state(self):
        if self.down and self.server:
            self.server.close()
            self.server = None
            try:
                os.unlink(self.listen_path)
            except FileNotFoundError:
                pass
            for c in list(self.conns):
                c.abort()
            log.info("down: listener closed, %s removed, connections cut", self.listen_path)
        elif not self.down and not self.server:
            if os.path.exists(self.listen_path):
                os.unlink(self.listen_path)
            self.server = await asyncio.get_running_loop().create_unix_server(
                lambda: Downstream(self), self.listen_path)
            log.info("listening on %s -> %s", self.listen_path, self.upstream_path)
        self.state_dirty = False
        self.record({"event": "control", "gen": self.pending_gen, "down": self.down})

    async def watch(self):
        while True:
            self.reload()
            if self.state_dirty:
                await self.apply_state()
            await asyncio.sleep(0.05)

    async def run(self):
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self.reload()
        await self.apply_state()
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        watcher = asyncio.ensure_future(self.watch())
        await stop.wait()
        watcher.cancel()
        if self.server:
            self.server.close()
        for c in list(self.conns):
            c.close()
        try:
            os.unlink(self.listen_path)
        except FileNotFoundError:
            pass
        log.info("stopped")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, metavar="PATH", help="unix socket to serve")
    ap.add_argument("--upstream", required=True, metavar="PATH", help="the runtime's unix socket")
    ap.add_argument("--control", metavar="FILE", help="JSON fault rules, re-read on change")
    ap.add_argument("--log", metavar="FILE", help="append one JSON line per call")
    ap.add_argument("--quiet", action="store_true", help="log warnings only")
    args = ap.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s.%(msecs)03d cri_proxy[%(process)d] %(message)s", datefmt="%H:%M:%S")
    asyncio.run(Proxy(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""A stand-in for systemd's notification socket, for specs.

    notify_recv.py ADDR OUT [SECONDS]

Binds an AF_UNIX SOCK_DGRAM socket at ADDR (a path, or "@name" for an
abstract name), then appends each datagram it receives to OUT as one line
(newlines inside the datagram written as "|"), with the sender's pid from
SCM_CREDENTIALS first: "<pid> READY=1|STATUS=...". Prints "ready" once
bound. Exits after SECONDS (default 120) or on a datagram "QUIT".
"""
import os
import socket
import struct
import sys
import time

addr, out = sys.argv[1], sys.argv[2]
limit = float(sys.argv[3]) if len(sys.argv) > 3 else 120.0
bind = "\0" + addr[1:] if addr.startswith("@") else addr
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind(bind)
print("ready", flush=True)
end = time.monotonic() + limit
try:
    while time.monotonic() < end:
        s.settimeout(max(0.05, end - time.monotonic()))
        try:
            msg, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            break
        pid = 0
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", data[:12])[0]
        text = msg.decode("utf-8", "replace")
        if text == "QUIT":
            break
        with open(out, "a") as f:
            f.write("%d %s\n" % (pid, text.replace("\n", "|")))
finally:
    s.close()
    if not addr.startswith("@"):
        try:
            os.unlink(addr)
        except OSError:
            pass

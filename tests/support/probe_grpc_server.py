#!/usr/bin/python3
"""gRPC servers for the probe specs, on 127.0.0.1 (plaintext).

Prints "HEALTH_PORT BARE_PORT HUNG_PORT CLOSED_PORT PID" once ready:
  HEALTH_PORT  implements grpc.health.v1.Health/Check by hand (no generated
               code): service "" and "app" are SERVING, "down" NOT_SERVING,
               "unknown" answers SERVICE_UNKNOWN, "missing" fails with
               NOT_FOUND, "hang" waits 5 s before answering SERVING
  BARE_PORT    a gRPC server without the health service (UNIMPLEMENTED)
  HUNG_PORT    a listening socket with a full, never-accepted backlog
  CLOSED_PORT  nothing listens there
The server exits when its parent process goes away.
"""
import os
import socket
import threading
import time
from concurrent import futures

import grpc

STATUS = {"": 1, "app": 1, "down": 2, "unknown": 3}


def decode_service(data):
    # HealthCheckRequest: field 1 (service), wire type 2; nothing else is sent
    if not data:
        return ""
    assert data[0] == 0x0A, data
    n, i, shift = 0, 1, 0
    while True:
        b = data[i]
        n |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if b < 0x80:
            break
    return data[i:i + n].decode()


def encode_status(status):
    return bytes([0x08, status]) if status else b""


def check(service, context):
    if service == "hang":
        time.sleep(5)
        return 1
    if service == "missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return STATUS.get(service, 3)


def hung_listener():
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


def watch_parent(ppid):
    while os.getppid() == ppid:
        time.sleep(0.2)
    os._exit(0)


def main():
    handler = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(
            check, request_deserializer=decode_service, response_serializer=encode_status),
    })
    health = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    health.add_generic_rpc_handlers((handler,))
    hport = health.add_insecure_port("127.0.0.1:0")
    bare = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    bport = bare.add_insecure_port("127.0.0.1:0")
    health.start()
    bare.start()
    hung, fillers = hung_listener()
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed = s.getsockname()[1]
    s.close()
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    print(hport, bport, hung.getsockname()[1], closed, os.getpid(), flush=True)
    while True:
        time.sleep(3600)
    del fillers


if __name__ == "__main__":
    main()

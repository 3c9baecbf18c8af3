#!/usr/bin/python3
"""A fake Kubernetes API server for the kubelua.k8s specs (stdlib only).

Usage: fake_apiserver.py --dir DIR --token TOKEN [--plain] [--bookmark-interval S]

At start it makes a CA, a server certificate for 127.0.0.1/localhost, a client
certificate (CN kubelua-client, O system:nodes) and an unrelated second CA with
the openssl CLI, in DIR: ca.crt ca.key server.crt server.key client.crt
client.key other-ca.crt. Then it serves HTTPS (HTTP with --plain) on a free
port of 127.0.0.1 and prints one line, "PORT PID". It exits when killed or
when its parent process goes away.

What it follows of the real API server (core/v1 only):
  * discovery: /api, /apis, /api/v1, /version, /healthz (legacy discovery
    only: aggregated-discovery Accept headers get the legacy documents, as
    from an old server);
  * pods, configmaps, secrets (namespaced), namespaces and nodes (cluster
    scope): list (all namespaces or one), get, create (201), update (PUT),
    patch (merge, strategic merge - approximated: lists of objects merged by
    their usual key, `$patch: delete` - and JSON patch), delete; the pods'
    `status` subresource;
  * one global resourceVersion counter; every write bumps it and is kept in an
    event log; lists carry metadata.resourceVersion; limit/continue paging over
    a snapshot;
  * labelSelector (=, ==, !=, in, notin, exists, !exists) and fieldSelector
    (=, ==, != on the fields the real server supports for each resource;
    others are a 400 "field label not supported");
  * watch (?watch=1|true): a chunked response, one JSON event per chunk and
    line; resourceVersion unset or "0" starts with ADDED for every object,
    otherwise the log after that version is replayed; objects moving into or
    out of a selector give ADDED / DELETED; allowWatchBookmarks=true gets a
    BOOKMARK every --bookmark-interval seconds (default 60) and on demand;
    timeoutSeconds ends the watch cleanly; a version older than the
    compacted log gets an ERROR event with a 410 Expired Status (or, with
    gone_mode "http", an HTTP 410);
  * errors as metav1.Status objects with reason and code;
  * authentication: "Authorization: Bearer TOKEN" or a client certificate
    signed by the CA; anything else is a 401;
  * kubectl's server-side printing: Accept "...;as=Table;v=v1;g=meta.k8s.io"
    gets a meta.k8s.io/v1 Table (lists, gets and watch events).
Not followed: admission, validation beyond names, defaults, graceful pod
deletion (deletes are immediate), status kept as given on create, server-side
apply, protobuf, other API groups.

Control endpoints for tests (no authentication; 127.0.0.1 only):
  POST /_control/disconnect      cut every open watch (no last chunk, no TLS close)
  POST /_control/close           end every open watch cleanly
  POST /_control/bookmark        a BOOKMARK now on every watch that allows them
  POST /_control/inject?then=cut|end|none   write the body as-is into every
                                 watch (one chunk), then cut, end or go on
  POST /_control/expire          an ERROR event with a 410 Status on every
                                 watch, then end them
  POST /_control/compact         forget the event log (older versions get 410)
  POST /_control/config          JSON {"gone_mode": "event"|"http",
                                 "bookmark_interval": S, "fail": [{"path":
                                 substring, "method": M, "status": N, "count": C}]}
  GET  /_control/stats           JSON {"rv", "watches", "requests": [{method,
                                 path, query, auth, status}], "writes":
                                 [[rv, type, walltime], ...]}
  POST /_control/reset           clear the request and write logs
"""
import argparse
import base64
import copy
import json
import os
import queue
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

RESOURCES = {
    "pods": {"kind": "Pod", "namespaced": True, "short": ["po"],
             "fields": ["metadata.name", "metadata.namespace", "spec.nodeName",
                        "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                        "status.phase", "status.podIP", "status.nominatedNodeName"]},
    "configmaps": {"kind": "ConfigMap", "namespaced": True, "short": ["cm"],
                   "fields": ["metadata.name", "metadata.namespace"]},
    "secrets": {"kind": "Secret", "namespaced": True, "short": [],
                "fields": ["metadata.name", "metadata.namespace", "type"]},
    "namespaces": {"kind": "Namespace", "namespaced": False, "short": ["ns"],
                   "fields": ["metadata.name", "status.phase"]},
    "nodes": {"kind": "Node", "namespaced": False, "short": ["no"],
              "fields": ["metadata.name", "spec.unschedulable"]},
}
VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]
# Strategic merge keys of the lists this fake knows (others are replaced).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
              "volumes": "name", "env": "name", "volumeMounts": "mountPath",
              "ports": "containerPort", "imagePullSecrets": "name",
              "ownerReferences": "uid", "conditions": "type"}
LOG_MAX = 10000


class ApiError(Exception):
    def __init__(self, code, reason, message, details=None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details


def status_obj(code, reason, message, details=None):
    s = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
         "message": message, "reason": reason, "code": code}
    if details:
        s["details"] = details
    return s


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def parse_time(s):
    try:
        return time.mktime(time.strptime(s, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except (ValueError, TypeError):
        return None


def human_age(secs):
    s = int(max(secs, 0))
    if s < 120:
        return "%ds" % s
    m = s // 60
    if m < 10:
        return "%dm%ds" % (m, s % 60)
    if m < 180:
        return "%dm" % m
    h = m // 60
    if h < 8:
        return "%dh%dm" % (h, m % 60)
    if h < 48:
        return "%dh" % h
    d = h // 24
    if d < 8:
        return "%dd%dh" % (d, h % 24)
    return "%dd" % d


# ---------------------------------------------------------------- selectors

def split_top(s, sep=","):
    """Split on sep outside parentheses."""
    out, depth, cur = [], 0, ""
    for c in s:
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        if c == sep and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += c
    out.append(cur)
    return [p.strip() for p in out if p.strip()]


def parse_label_selector(s):
    reqs = []
    for part in split_top(s or ""):
        if " notin " in part or " in " in part:
            neg = " notin " in part
            key, vals = part.split(" notin " if neg else " in ", 1)
            vals = vals.strip()
            if not (vals.startswith("(") and vals.endswith(")")):
                raise ApiError(400, "BadRequest", "unable to parse requirement: %s" % part)
            values = {v.strip() for v in vals[1:-1].split(",") if v.strip()}
            reqs.append(("notin" if neg else "in", key.strip(), values))
        elif "!=" in part:
            k, v = part.split("!=", 1)
            reqs.append(("!=", k.strip(), v.strip()))
        elif "==" in part:
            k, v = part.split("==", 1)
            reqs.append(("=", k.strip(), v.strip()))
        elif "=" in part:
            k, v = part.split("=", 1)
            reqs.append(("=", k.strip(), v.strip()))
        elif part.startswith("!"):
            reqs.append(("!exists", part[1:].strip(), None))
        else:
            reqs.append(("exists", part, None))
    return reqs


def labels_match(reqs, obj):
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for op, k, v in reqs:
        have = k in labels
        val = labels.get(k)
        if op == "=" and val != v:
            return False
        if op == "!=" and have and val == v:
            return False
        if op == "in" and (not have or val not in v):
            return False
        if op == "notin" and have and val in v:
            return False
        if op == "exists" and not have:
            return False
        if op == "!exists" and have:
            return False
    return True


def parse_field_selector(s, resource):
    reqs = []
    allowed = RESOURCES[resource]["fields"]
    for part in split_top(s or ""):
        if "!=" in part:
            k, v, op = *part.split("!=", 1), "!="
        elif "==" in part:
            k, v, op = *part.split("==", 1), "="
        elif "=" in part:
            k, v, op = *part.split("=", 1), "="
        else:
            raise ApiError(400, "BadRequest", "invalid selector: '%s'; can't understand '%s'" % (s, part))
        k = k.strip()
        if k not in allowed:
            raise ApiError(400, "BadRequest", 'field label not supported: %s' % k)
        reqs.append((op, k, v.strip()))
    return reqs


def field_value(obj, path):
    cur = obj
    for p in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(p)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def fields_match(reqs, obj):
    for op, k, v in reqs:
        have = field_value(obj, k)
        if op == "=" and have != v:
            return False
        if op == "!=" and have == v:
            return False
    return True


# ------------------------------------------------------------------ patches

def merge_patch(orig, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(orig) if isinstance(orig, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def strategic_patch(orig, patch, field=None):
    if isinstance(patch, dict):
        if patch.get("$patch") == "replace":
            p = dict(patch)
            p.pop("$patch")
            return copy.deepcopy(p)
        out = copy.deepcopy(orig) if isinstance(orig, dict) else {}
        for k, v in patch.items():
            if k.startswith("$"):
                continue
            if v is None:
                out.pop(k, None)
            else:
                out[k] = strategic_patch(out.get(k), v, k)
        return out
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(orig, list):
        key = MERGE_KEYS[field]
        out = copy.deepcopy(orig)
        for item in patch:
            if not isinstance(item, dict) or key not in item:
                return copy.deepcopy(patch)
            idx = next((i for i, o in enumerate(out)
                        if isinstance(o, dict) and o.get(key) == item[key]), None)
            if item.get("$patch") == "delete":
                if idx is not None:
                    out.pop(idx)
            elif idx is None:
                out.append(strategic_patch(None, item))
            else:
                out[idx] = strategic_patch(out[idx], item)
        return out
    return copy.deepcopy(patch)


def pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", "invalid JSON pointer %r" % path)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc, ops):
    doc = copy.deepcopy(doc)
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch must be an array of operations")

    def parent(parts):
        cur = doc
        for p in parts[:-1]:
            if isinstance(cur, list):
                cur = cur[int(p)]
            elif isinstance(cur, dict) and p in cur:
                cur = cur[p]
            else:
                raise ApiError(422, "Invalid", "path not found: /%s" % "/".join(parts))
        return cur

    def get(parts):
        cur = doc
        for p in parts:
            if isinstance(cur, list):
                cur = cur[int(p)]
            else:
                cur = cur[p]
        return cur

    def remove(parts):
        par = parent(parts)
        if isinstance(par, list):
            return par.pop(int(parts[-1]))
        return par.pop(parts[-1])

    def add(parts, value):
        par = parent(parts)
        if isinstance(par, list):
            if parts[-1] == "-":
                par.append(value)
            else:
                par.insert(int(parts[-1]), value)
        else:
            par[parts[-1]] = value

    for op in ops:
        try:
            kind, parts = op["op"], pointer(op["path"])
            if kind == "add":
                add(parts, copy.deepcopy(op["value"]))
            elif kind == "remove":
                remove(parts)
            elif kind == "replace":
                get(parts)
                remove(parts)
                add(parts, copy.deepcopy(op["value"]))
            elif kind == "move":
                add(parts, remove(pointer(op["from"])))
            elif kind == "copy":
                add(parts, copy.deepcopy(get(pointer(op["from"]))))
            elif kind == "test":
                if get(parts) != op["value"]:
                    raise ApiError(422, "Invalid", "testing value %s failed" % op["path"])
            else:
                raise ApiError(422, "Invalid", "unexpected kind of JSON patch operation: %r" % kind)
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "Invalid", "the JSON patch could not be applied: %r" % (e,))
    return doc


# ------------------------------------------------------------------- tables

def pod_row(p):
    spec, st = p.get("spec") or {}, p.get("status") or {}
    cs = st.get("containerStatuses") or []
    ready = sum(1 for c in cs if c.get("ready"))
    restarts = sum(int(c.get("restartCount") or 0) for c in cs)
    reason = st.get("reason") or st.get("phase") or "Unknown"
    for c in cs:
        w = (c.get("state") or {}).get("waiting")
        if w and w.get("reason"):
            reason = w["reason"]
    if (p.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    return [p["metadata"]["name"], "%d/%d" % (ready, len(spec.get("containers") or [])), reason,
            restarts, age(p), st.get("podIP") or "<none>", spec.get("nodeName") or "<none>",
            st.get("nominatedNodeName") or "<none>", "<none>"]


def age(obj):
    t = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    return "<unknown>" if t is None else human_age(time.time() - t)


def col(name, typ="string", fmt="", priority=0, desc=""):
    return {"name": name, "type": typ, "format": fmt, "description": desc or name,
            "priority": priority}


TABLES = {
    "pods": ([col("Name", fmt="name"), col("Ready"), col("Status"), col("Restarts", "integer"),
              col("Age"), col("IP", priority=1), col("Node", priority=1),
              col("Nominated Node", priority=1), col("Readiness Gates", priority=1)], pod_row),
    "configmaps": ([col("Name", fmt="name"), col("Data", "integer"), col("Age")],
                   lambda o: [o["metadata"]["name"], len(o.get("data") or {}) +
                              len(o.get("binaryData") or {}), age(o)]),
    "secrets": ([col("Name", fmt="name"), col("Type"), col("Data", "integer"), col("Age")],
                lambda o: [o["metadata"]["name"], o.get("type") or "Opaque",
                           len(o.get("data") or {}), age(o)]),
}


def to_table(resource, objs, rv, with_columns=True):
    cols, row = TABLES.get(resource, ([col("Name", fmt="name"), col("Age")],
                                      lambda o: [o["metadata"]["name"], age(o)]))
    rows = []
    for o in objs:
        meta = {k: v for k, v in (o.get("metadata") or {}).items() if k != "managedFields"}
        rows.append({"cells": row(o), "object": {"kind": "PartialObjectMetadata",
                                                 "apiVersion": "meta.k8s.io/v1", "metadata": meta}})
    t = {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv},
         "rows": rows}
    t["columnDefinitions"] = cols if with_columns else []
    return t


# -------------------------------------------------------------------- store

class Watch:
    def __init__(self, resource, ns, lsel, fsel, bookmarks, table):
        self.resource, self.ns, self.lsel, self.fsel = resource, ns, lsel, fsel
        self.bookmarks, self.table = bookmarks, table
        self.q = queue.Queue()

    def matches(self, obj):
        if obj is None:
            return False
        if self.ns and (obj.get("metadata") or {}).get("namespace") != self.ns:
            return False
        return labels_match(self.lsel, obj) and fields_match(self.fsel, obj)

    def translate(self, ev):
        """(type, obj) this watch sees for a log entry, or None."""
        _, etype, res, obj, old = ev
        if res != self.resource:
            return None
        now, before = self.matches(obj), self.matches(old)
        if etype == "DELETED":
            return ("DELETED", obj) if before or now else None
        if now and before:
            return ("MODIFIED", obj)
        if now:
            return ("ADDED", obj)
        if before:
            return ("DELETED", obj)
        return None

    def offer(self, ev):
        t = self.translate(ev)
        if t:
            self.q.put(("event", ev[0], t[0], t[1]))


class Store:
    def __init__(self):
        self.lock = threading.Lock()
        self.rv = 100
        self.objects = {}  # (resource, ns, name) -> object
        self.log = []  # (rv, type, resource, object, old object)
        self.compacted = self.rv
        self.watches = set()
        self.snapshots = {}  # continue token id -> (rv, [objects])

    def bump(self, etype, resource, obj, old):
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        ev = (self.rv, etype, resource, copy.deepcopy(obj), copy.deepcopy(old))
        self.log.append(ev)
        if len(self.log) > LOG_MAX:
            drop = len(self.log) - LOG_MAX
            self.compacted = self.log[drop - 1][0]
            del self.log[:drop]
        for w in list(self.watches):
            w.offer(ev)

    def items(self, resource, ns=None):
        return [copy.deepcopy(o) for (r, n, _), o in sorted(self.objects.items())
                if r == resource and (ns is None or n == ns)]


STORE = Store()
CONFIG = {"gone_mode": "event", "bookmark_interval": 60.0, "fail": []}
REQUESTS = []
WRITES = []
LOGLOCK = threading.Lock()


def client_gone(sock):
    try:
        r, _, _ = select.select([sock], [], [], 0)
        if not r:
            return False
        if isinstance(sock, ssl.SSLSocket):
            sock.settimeout(0.05)
            try:
                return sock.recv(1) == b""
            except (ssl.SSLWantReadError, socket.timeout):
                return False
            finally:
                sock.settimeout(None)
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


class Cut(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "fake-apiserver/1"

    def log_message(self, fmt, *args):
        pass

    def setup(self):
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(10)
            try:
                self.request.do_handshake()
            except (ssl.SSLError, OSError):
                self.request.close()
                raise Cut()
            self.request.settimeout(None)
        super().setup()

    def handle(self):
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, Cut):
            self.close_connection = True

    # ------------------------------------------------------------ replies

    def send_json(self, code, obj, extra=()):
        body = json.dumps(obj, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache, private")
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.status_sent = code

    def send_error_status(self, e):
        self.send_json(e.code, status_obj(e.code, e.reason, e.message, e.details))

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def cut(self):
        self.close_connection = True
        try:
            # on a TLS socket too: no close_notify, the peer sees the TCP end
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------ dispatch

    def authenticate(self):
        h = self.headers.get("Authorization") or ""
        if h.startswith("Bearer ") and h[7:] == self.server.token:
            return "token"
        if h:
            return "bad"
        if isinstance(self.connection, ssl.SSLSocket):
            cert = self.connection.getpeercert()
            if cert:
                return "cert"
        return "none"

    def handle_any(self):
        self.status_sent = None
        url = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = url.path
        if path.startswith("/_control/"):
            return self.control(path[10:], q, body)
        auth = self.authenticate()
        entry = {"method": self.command, "path": path, "query": q, "auth": auth,
                 "accept": self.headers.get("Accept") or "", "time": time.time()}
        with LOGLOCK:
            REQUESTS.append(entry)
        try:
            if auth not in ("token", "cert"):
                raise ApiError(401, "Unauthorized", "Unauthorized")
            for f in CONFIG["fail"]:
                if f.get("count", 0) > 0 and f.get("path", "") in self.path and \
                        f.get("method", self.command) == self.command:
                    f["count"] -= 1
                    raise ApiError(f.get("status", 500), f.get("reason", "InternalError"),
                                   "injected failure")
            self.route(path, q, body)
        except ApiError as e:
            self.send_error_status(e)
        except Cut:
            self.cut()
        entry["status"] = self.status_sent

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = handle_any

    def route(self, path, q, body):
        parts = [p for p in path.split("/") if p]
        if path == "/api":
            return self.send_json(200, {"kind": "APIVersions", "versions": ["v1"],
                                        "serverAddressByClientCIDRs": [
                                            {"clientCIDR": "0.0.0.0/0",
                                             "serverAddress": "127.0.0.1:%d" % self.server.port}]})
        if path == "/apis":
            return self.send_json(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
        if path == "/api/v1":
            res = []
            for name, r in sorted(RESOURCES.items()):
                res.append({"name": name, "singularName": r["kind"].lower(),
                            "namespaced": r["namespaced"], "kind": r["kind"], "verbs": VERBS,
                            "shortNames": r["short"]})
                if name == "pods":
                    res.append({"name": "pods/status", "singularName": "", "namespaced": True,
                                "kind": "Pod", "verbs": ["get", "patch", "update"]})
            return self.send_json(200, {"kind": "APIResourceList", "groupVersion": "v1",
                                        "resources": res})
        if path == "/version":
            return self.send_json(200, {"major": "1", "minor": "29", "gitVersion": "v1.29.0-fake",
                                        "platform": "linux/amd64"})
        if path in ("/healthz", "/readyz", "/livez"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")
            self.status_sent = 200
            return None
        if len(parts) < 3 or parts[:2] != ["api", "v1"]:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rest = parts[2:]
        ns = name = sub = None
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, resource = rest[1], rest[2]
            name = rest[3] if len(rest) > 3 else None
            sub = rest[4] if len(rest) > 4 else None
            if len(rest) > 5:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
        else:
            resource = rest[0]
            name = rest[1] if len(rest) > 1 else None
            sub = rest[2] if len(rest) > 2 else None
        if resource not in RESOURCES:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        info = RESOURCES[resource]
        if ns is not None and not info["namespaced"]:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if name is not None and info["namespaced"] and ns is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub is not None and (sub != "status" or resource != "pods"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        table = "as=Table" in (self.headers.get("Accept") or "")
        m = self.command
        if name is None:
            if m in ("GET", "HEAD"):
                if q.get("watch") in ("1", "true"):
                    return self.watch(resource, ns, q, table)
                return self.list(resource, ns, q, table)
            if m == "POST":
                if ns is None and info["namespaced"]:
                    raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
                return self.create(resource, ns, body)
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if m in ("GET", "HEAD"):
            return self.get(resource, ns, name, table)
        if m == "PUT":
            return self.update(resource, ns, name, body, sub)
        if m == "PATCH":
            return self.patch(resource, ns, name, body, sub)
        if m == "DELETE":
            return self.delete(resource, ns, name, body)
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    # ------------------------------------------------------------ verbs

    def decode_body(self, body):
        try:
            obj = json.loads(body or b"null")
        except ValueError as e:
            raise ApiError(400, "BadRequest", "the request body is not valid JSON: %s" % e)
        return obj

    def not_found(self, resource, name):
        return ApiError(404, "NotFound", '%s "%s" not found' % (resource, name),
                        {"name": name, "kind": resource})

    def list(self, resource, ns, q, table):
        lsel = parse_label_selector(q.get("labelSelector"))
        fsel = parse_field_selector(q.get("fieldSelector"), resource)
        limit = int(q.get("limit") or 0)
        token = q.get("continue")
        with STORE.lock:
            if token:
                try:
                    tid, offset = json.loads(base64.b64decode(token))
                except (ValueError, TypeError):
                    raise ApiError(400, "BadRequest", "continue key is not valid")
                snap = STORE.snapshots.get(tid)
                if snap is None:
                    raise ApiError(410, "Expired", "The provided continue parameter is too old "
                                   "to display a consistent list result. You can start a new "
                                   "list without the continue parameter.")
                rv, objs = snap
            else:
                rv = STORE.rv
                objs = [o for o in STORE.items(resource, ns)
                        if labels_match(lsel, o) and fields_match(fsel, o)]
                offset = 0
            page = objs[offset:offset + limit] if limit > 0 else objs[offset:]
            meta = {"resourceVersion": str(rv)}
            if limit > 0 and offset + limit < len(objs):
                tid = token and json.loads(base64.b64decode(token))[0] or uuid.uuid4().hex
                STORE.snapshots[tid] = (rv, objs)
                meta["continue"] = base64.b64encode(json.dumps([tid, offset + limit]).encode()).decode()
                meta["remainingItemCount"] = len(objs) - offset - limit
        if table:
            t = to_table(resource, page, str(rv))
            t["metadata"] = meta
            return self.send_json(200, t)
        for o in page:
            o.pop("kind", None)
            o.pop("apiVersion", None)
        kind = RESOURCES[resource]["kind"] + "List"
        return self.send_json(200, {"kind": kind, "apiVersion": "v1", "metadata": meta,
                                    "items": page})

    def get(self, resource, ns, name, table):
        with STORE.lock:
            obj = STORE.objects.get((resource, ns, name))
            obj = copy.deepcopy(obj)
        if obj is None:
            raise self.not_found(resource, name)
        if table:
            return self.send_json(200, to_table(resource, [obj], obj["metadata"]["resourceVersion"]))
        return self.send_json(200, obj)

    def create(self, resource, ns, body):
        obj = self.decode_body(body)
        info = RESOURCES[resource]
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        if obj.get("kind") not in (None, info["kind"]):
            raise ApiError(400, "BadRequest", "the kind %s does not match %s" % (obj.get("kind"), info["kind"]))
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "BadRequest", "metadata must be an object")
        if info["namespaced"]:
            if meta.get("namespace") not in (None, "", ns):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not "
                               "match the namespace sent on the request")
            meta["namespace"] = ns
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            else:
                raise ApiError(422, "Invalid", "%s \"\" is invalid: metadata.name: Required value: "
                               "name or generateName is required" % info["kind"],
                               {"kind": info["kind"]})
        name = meta["name"]
        obj["kind"], obj["apiVersion"] = info["kind"], "v1"
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta.pop("resourceVersion", None)
        with STORE.lock:
            key = (resource, ns if info["namespaced"] else None, name)
            if key in STORE.objects:
                raise ApiError(409, "AlreadyExists", '%s "%s" already exists' % (resource, name),
                               {"name": name, "kind": resource})
            STORE.objects[key] = obj
            STORE.bump("ADDED", resource, obj, None)
            out = copy.deepcopy(obj)
        return self.send_json(201, out)

    def replace(self, resource, ns, name, new, status_only=False):
        """Store new as the object, keeping identity; MODIFIED unless unchanged."""
        with STORE.lock:
            key = (resource, ns, name)
            old = STORE.objects.get(key)
            if old is None:
                raise self.not_found(resource, name)
            rv = (new.get("metadata") or {}).get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", 'Operation cannot be fulfilled on %s "%s": the '
                               'object has been modified; please apply your changes to the latest '
                               'version and try again' % (resource, name),
                               {"name": name, "kind": resource})
            if status_only:
                merged = copy.deepcopy(old)
                merged["status"] = new.get("status")
                new = merged
            meta = new.setdefault("metadata", {})
            for k in ("name", "namespace", "uid", "creationTimestamp"):
                if k in old["metadata"]:
                    meta[k] = old["metadata"][k]
            new["kind"], new["apiVersion"] = old["kind"], old["apiVersion"]
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]
            if new == old:
                return copy.deepcopy(old)
            STORE.objects[key] = new
            STORE.bump("MODIFIED", resource, new, old)
            return copy.deepcopy(new)

    def update(self, resource, ns, name, body, sub):
        obj = self.decode_body(body)
        if not isinstance(obj, dict):
            raise ApiError(400, "BadRequest", "the body must be a JSON object")
        if (obj.get("metadata") or {}).get("name") not in (None, name):
            raise ApiError(400, "BadRequest", "the name of the object (%s) does not match the "
                           "name on the URL (%s)" % (obj["metadata"]["name"], name))
        return self.send_json(200, self.replace(resource, ns, name, obj, sub == "status"))

    def patch(self, resource, ns, name, body, sub):
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        kinds = {"application/merge-patch+json": merge_patch,
                 "application/strategic-merge-patch+json": strategic_patch,
                 "application/json-patch+json": json_patch}
        if ctype not in kinds:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown "
                           "format - accepted media types include: application/json-patch+json, "
                           "application/merge-patch+json, application/strategic-merge-patch+json")
        p = self.decode_body(body)
        with STORE.lock:
            cur = copy.deepcopy(STORE.objects.get((resource, ns, name)))
        if cur is None:
            raise self.not_found(resource, name)
        new = kinds[ctype](cur, p)
        if not isinstance(new, dict):
            raise ApiError(422, "Invalid", "the patch gives something that is not an object")
        if sub == "status":
            new = dict(cur, status=new.get("status"))
        new.setdefault("metadata", {}).pop("resourceVersion", None)
        if isinstance(p, dict) and (p.get("metadata") or {}).get("resourceVersion"):
            new["metadata"]["resourceVersion"] = p["metadata"]["resourceVersion"]
        return self.send_json(200, self.replace(resource, ns, name, new))

    def delete(self, resource, ns, name, body):
        opts = self.decode_body(body) if body else {}
        pre = (opts or {}).get("preconditions") or {}
        with STORE.lock:
            key = (resource, ns, name)
            old = STORE.objects.get(key)
            if old is None:
                raise self.not_found(resource, name)
            for k in ("uid", "resourceVersion"):
                if pre.get(k) and pre[k] != old["metadata"].get(k):
                    raise ApiError(409, "Conflict", "Precondition failed: %s: %s, ObjectMeta.%s: %s"
                                   % (k, pre[k], k, old["metadata"].get(k)),
                                   {"name": name, "kind": resource})
            del STORE.objects[key]
            gone = copy.deepcopy(old)
            STORE.bump("DELETED", resource, gone, old)
            out = copy.deepcopy(gone)
        if resource == "pods":
            return self.send_json(200, out)
        return self.send_json(200, {"kind": "Status", "apiVersion": "v1", "metadata": {},
                                    "status": "Success",
                                    "details": {"name": name, "kind": resource,
                                                "uid": out["metadata"]["uid"]}})

    # ------------------------------------------------------------ watch

    def write_event(self, w, etype, obj, rv):
        if w.table and etype != "ERROR":
            if etype == "BOOKMARK":
                obj = {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
                       "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                       "columnDefinitions": [], "rows": []}
            else:
                obj = to_table(w.resource, [obj], obj["metadata"]["resourceVersion"],
                               not getattr(w, "columns_sent", False))
                w.columns_sent = True
        data = json.dumps({"type": etype, "object": obj}, separators=(",", ":")).encode() + b"\n"
        # logged before it is sent: a client that has read the event and
        # then asks for the stats must find it there
        t = time.time()
        with LOGLOCK:
            WRITES.append([rv, etype, t])
            if len(WRITES) > 100000:
                del WRITES[:50000]
        self.chunk(data)

    def watch(self, resource, ns, q, table):
        lsel = parse_label_selector(q.get("labelSelector"))
        fsel = parse_field_selector(q.get("fieldSelector"), resource)
        rv = q.get("resourceVersion") or ""
        timeout = float(q.get("timeoutSeconds") or 0) or None
        w = Watch(resource, ns, lsel, fsel, q.get("allowWatchBookmarks") == "true", table)
        expired = None
        with STORE.lock:
            if rv in ("", "0"):
                replay = [(STORE.rv, "ADDED", o) for o in STORE.items(resource, ns) if w.matches(o)]
            else:
                try:
                    rvi = int(rv)
                except ValueError:
                    raise ApiError(400, "BadRequest", "invalid resource version %r" % rv)
                if rvi < STORE.compacted:
                    expired = "too old resource version: %d (%d)" % (rvi, STORE.compacted)
                    replay = []
                else:
                    replay = []
                    for ev in STORE.log:
                        if ev[0] > rvi:
                            t = w.translate(ev)
                            if t:
                                replay.append((ev[0], t[0], t[1]))
            if expired and CONFIG["gone_mode"] == "http":
                raise ApiError(410, "Expired", expired)
            if not expired:
                STORE.watches.add(w)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Cache-Control", "no-cache, private")
            self.end_headers()
            self.status_sent = 200
            if expired:
                self.write_event(w, "ERROR", status_obj(410, "Expired", expired), 0)
                self.chunk(b"")
                return
            for erv, etype, obj in replay:
                self.write_event(w, etype, obj, erv)
            self.watch_loop(w, timeout)
        finally:
            with STORE.lock:
                STORE.watches.discard(w)

    def watch_loop(self, w, timeout):
        deadline = time.monotonic() + timeout if timeout else None
        next_bm = time.monotonic() + CONFIG["bookmark_interval"]
        kind = RESOURCES[w.resource]["kind"]
        while True:
            now = time.monotonic()
            if deadline and now >= deadline:
                self.chunk(b"")
                return
            if w.bookmarks and now >= next_bm:
                with STORE.lock:
                    w.q.put(("bookmark", STORE.rv))
                next_bm = now + CONFIG["bookmark_interval"]
            try:
                item = w.q.get(timeout=0.05)
            except queue.Empty:
                if client_gone(self.connection):
                    raise Cut()
                continue
            if item[0] == "event":
                self.write_event(w, item[2], item[3], item[1])
            elif item[0] == "bookmark":
                if w.bookmarks:
                    self.write_event(w, "BOOKMARK", {"kind": kind, "apiVersion": "v1",
                                                     "metadata": {"resourceVersion": str(item[1])}},
                                     item[1])
            elif item[0] == "raw":
                self.chunk(item[1])
                with LOGLOCK:
                    WRITES.append([0, "RAW", time.time()])
                if item[2] == "cut":
                    raise Cut()
                if item[2] == "end":
                    self.chunk(b"")
                    return
            elif item[0] == "expire":
                self.write_event(w, "ERROR", status_obj(410, "Expired", "too old resource version"), 0)
                self.chunk(b"")
                return
            elif item[0] == "cut":
                raise Cut()
            elif item[0] == "end":
                self.chunk(b"")
                return

    # ------------------------------------------------------------ control

    def control(self, what, q, body):
        def ok(obj=None):
            self.send_json(200, obj if obj is not None else {"ok": True})

        def all_watches(item):
            with STORE.lock:
                ws = list(STORE.watches)
                for w in ws:
                    w.q.put(item)
            return len(ws)

        if what == "disconnect":
            return ok({"watches": all_watches(("cut",))})
        if what == "close":
            return ok({"watches": all_watches(("end",))})
        if what == "bookmark":
            with STORE.lock:
                ws = list(STORE.watches)
                for w in ws:
                    w.q.put(("bookmark", STORE.rv))
            return ok({"watches": len(ws), "rv": STORE.rv})
        if what == "inject":
            return ok({"watches": all_watches(("raw", body, q.get("then", "none")))})
        if what == "expire":
            return ok({"watches": all_watches(("expire",))})
        if what == "compact":
            with STORE.lock:
                STORE.compacted = STORE.rv
                STORE.log = []
                STORE.snapshots = {}
            return ok({"compacted": STORE.compacted})
        if what == "config":
            new = json.loads(body or b"{}")
            CONFIG.update(new)
            return ok(CONFIG)
        if what == "stats":
            with STORE.lock:
                rv, nw = STORE.rv, len(STORE.watches)
            with LOGLOCK:
                return ok({"rv": rv, "watches": nw, "requests": list(REQUESTS),
                           "writes": list(WRITES)})
        if what == "reset":
            with LOGLOCK:
                REQUESTS.clear()
                WRITES.clear()
            return ok()
        return self.send_json(404, status_obj(404, "NotFound", "no such control " + what))


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, addr, handler, ctx, token):
        super().__init__(addr, handler)
        self.ctx, self.token = ctx, token
        self.port = self.server_address[1]

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.ctx is not None:
            sock = self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        pass


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def make_certs(d):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for ca in ("ca", "other-ca"):
        openssl("req", "-x509", *ec, "-keyout", f"{d}/{ca}.key", "-out", f"{d}/{ca}.crt",
                "-days", "2", "-subj", f"/CN=fake-apiserver-{ca}",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, subj, ext in (
            ("server", "/CN=fake-apiserver",
             "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"),
            ("client", "/O=system:nodes/CN=kubelua-client", "extendedKeyUsage=clientAuth\n")):
        with open(f"{d}/{name}.ext", "w") as f:
            f.write("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n" + ext)
        openssl("req", *ec, "-keyout", f"{d}/{name}.key", "-out", f"{d}/{name}.csr",
                "-subj", subj)
        openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.crt", "-CAkey",
                f"{d}/ca.key", "-CAcreateserial", "-out", f"{d}/{name}.crt", "-days", "2",
                "-extfile", f"{d}/{name}.ext")
    for f in os.listdir(d):
        if f.endswith(".key"):
            os.chmod(os.path.join(d, f), 0o600)


def watch_parent(ppid):
    while os.getppid() == ppid:
        time.sleep(0.2)
    os._exit(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--bookmark-interval", type=float, default=60.0)
    args = ap.parse_args()
    CONFIG["bookmark_interval"] = args.bookmark_interval
    ctx = None
    if not args.plain:
        os.makedirs(args.dir, exist_ok=True)
        make_certs(args.dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"{args.dir}/server.crt", f"{args.dir}/server.key")
        ctx.load_verify_locations(f"{args.dir}/ca.crt")
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.set_alpn_protocols(["http/1.1"])
    srv = Server(("127.0.0.1", 0), Handler, ctx, args.token)
    threading.Thread(target=watch_parent, args=(os.getppid(),), daemon=True).start()
    print(srv.port, os.getpid(), flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

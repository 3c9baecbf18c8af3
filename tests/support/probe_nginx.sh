#!/bin/bash
# A private nginx on 127.0.0.1 for the probe specs and bench/probe.
#   probe_nginx.sh start DIR PORT [WORKERS] [NADDR]   config in DIR, runs in the
#       background, waits until the port answers; NADDR > 1: listens on
#       127.0.0.1 to 127.0.0.NADDR (many targets, as pods have many IPs)
#   probe_nginx.sh stop DIR                   stops it (pid file in DIR)
# Routes: /healthz 200 "ok", /status/N for a few N, /redirect (302 to
# /healthz), /echo (the request's Host, Accept, User-Agent, Connection and
# Accept-Encoding as nginx saw them).
set -euo pipefail
cmd=${1:?start|stop}
dir=${2:?DIR}
NGINX=${NGINX:-/usr/sbin/nginx}

case "$cmd" in
start)
    port=${3:?PORT}
    workers=${4:-1}
    naddr=${5:-1}
    listen=""
    for i in $(seq 1 "$naddr"); do
        listen+="        listen 127.0.0.$i:$port backlog=16384 reuseport;"$'\n'
    done
    mkdir -p "$dir/tmp" "$dir/logs"
    cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 16384; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    default_type text/plain;
    server {
$listen        location = /healthz { return 200 "ok\n"; }
        location = /status/200 { return 200 "status 200\n"; }
        location = /status/204 { return 204; }
        location = /status/301 { return 301 /healthz; }
        location = /status/404 { return 404; }
        location = /status/500 { return 500; }
        location = /status/503 { return 503; }
        location = /redirect { return 302 /healthz; }
        location = /echo {
            return 200 "host=[\$host] accept=[\$http_accept] ua=[\$http_user_agent] conn=[\$http_connection] enc=[\$http_accept_encoding]\n";
        }
    }
}
EOF
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" >"$dir/logs/stdout.log" 2>&1 &
    for _ in $(seq 100); do
        if [ -s "$dir/nginx.pid" ] && (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then
            exit 0
        fi
        sleep 0.05
    done
    echo "nginx did not start:" >&2
    cat "$dir/logs/error.log" "$dir/logs/stdout.log" >&2 || true
    exit 1
    ;;
stop)
    if [ -s "$dir/nginx.pid" ]; then
        pid=$(cat "$dir/nginx.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || exit 0
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    ;;
*)
    echo "usage: $0 start DIR PORT [WORKERS] [NADDR] | stop DIR" >&2
    exit 2
    ;;
esac

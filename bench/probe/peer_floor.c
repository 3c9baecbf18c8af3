/*
 * bench/probe "floor" peer: the least work an HTTP prober with kubelet's
 * semantics can do, as a reference for the other peers. No HTTP library: one
 * thread, one epoll set, non-blocking sockets. Each probe is a new TCP
 * connection: socket + connect, the fixed request once writable
 * (GET, User-Agent kube-probe/1.33, Accept * / *, Connection: close), read to
 * EOF or 10 KiB, "HTTP/1.x 2xx" is ok, close. A probe not done within 1 s is
 * closed and counted as failed.
 *
 *   peer_floor URL N SECONDS WARMUP [NADDR [TICK]]
 *
 * URL is http://127.0.0.1[:PORT][/PATH]; target i probes 127.0.0.(1 + i % NADDR).
 * Schedule and measurement are peer_kubelua.lua's (see sched_* and stats_*).
 * TICK > 0 (seconds) starts a probe due at t at the first multiple of TICK at
 * or after t, so probes due close together share one wake-up; its lag is still
 * measured against t. Prints one line: RESULT peer=floor n=.. tick_ms=.. probes_per_s=.. ...
 *
 * cc -O2 -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -o peer_floor peer_floor.c
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "peer_common.h"

#define TIMEOUT_NS NS        /* kubelet's default probe timeout */
#define MAX_READ (10 * 1024) /* kubelet reads at most 10 KiB of a response */

/* ---- the prober ------------------------------------------------------------------------ */

struct request {
    char text[512];
    size_t len;
};

struct target {
    int64_t due;   /* its current or next probe's due time (not on the TICK grid) */
    int fd;        /* -1 between probes */
    uint32_t sent; /* request bytes sent */
    uint32_t got;  /* response bytes read */
    char head[12]; /* the response's first bytes: "HTTP/1.1 200" */
};

struct prober {
    struct sched s;
    struct stats st;
    struct heap h; /* idle target: its wake-up; busy target: its deadline */
    struct target *t;
    uint32_t running; /* targets with probes still to run */
    int naddr;
    struct sockaddr_in *addr; /* per address */
    struct request *req;      /* per address: the Host header differs */
    int ep;
    char buf[MAX_READ]; /* responses are read here and dropped */
};

/* Takes PORT and PATH out of http://127.0.0.1[:PORT][/PATH]. */
static int parse_url(const char *url, int *port, const char **path)
{
    static const char prefix[] = "http://127.0.0.1";
    const char *p = url + sizeof prefix - 1;
    if (strncmp(url, prefix, sizeof prefix - 1) != 0 || (*p != '\0' && *p != ':' && *p != '/'))
        return -1;
    *port = 80;
    if (*p == ':') {
        char *end;
        long v = strtol(p + 1, &end, 10);
        if (end == p + 1 || v <= 0 || v > 65535 || (*end != '\0' && *end != '/'))
            return -1;
        *port = (int)v;
        p = end;
    }
    *path = *p == '/' ? p : "/";
    return 0;
}

/* One address and its request per 127.0.0.k; the Host header names the
 * address and port as an HTTP client would. */
static int prober_addresses(struct prober *pr, const char *url)
{
    int port;
    const char *path;
    if (parse_url(url, &port, &path) != 0) {
        fprintf(stderr, "peer_floor: URL must be http://127.0.0.1[:PORT][/PATH]\n");
        return -1;
    }
    pr->addr = calloc((size_t)pr->naddr, sizeof *pr->addr);
    pr->req = calloc((size_t)pr->naddr, sizeof *pr->req);
    if (pr->addr == NULL || pr->req == NULL)
        return -1;
    for (int k = 0; k < pr->naddr; k++) {
        struct sockaddr_in *a = &pr->addr[k];
        a->sin_family = AF_INET;
        a->sin_port = htons((uint16_t)port);
        a->sin_addr.s_addr = htonl(0x7f000000u | (uint32_t)(k + 1));
        int len = snprintf(pr->req[k].text, sizeof pr->req[k].text,
                           "GET %s HTTP/1.1\r\nHost: 127.0.0.%d:%d\r\n"
                           "User-Agent: kube-probe/1.33\r\nAccept: */*\r\n"
                           "Connection: close\r\n\r\n",
                           path, k + 1, port);
        if (len < 0 || (size_t)len >= sizeof pr->req[k].text) {
            fprintf(stderr, "peer_floor: URL path too long\n");
            return -1;
        }
        pr->req[k].len = (size_t)len;
    }
    return 0;
}

static int status_ok(const struct target *t)
{
    const char *h = t->head;
    return t->got >= sizeof t->head && memcmp(h, "HTTP/1.", 7) == 0 && h[7] >= '0' && h[7] <= '9' &&
           h[8] == ' ' && h[9] == '2' && h[10] >= '0' && h[10] <= '9' && h[11] >= '0' &&
           h[11] <= '9';
}

/* Ends target id's probe, counts it, and schedules its next one (or none when
 * that would be due after the window). */
static void probe_end(struct prober *pr, uint32_t id, int ok)
{
    struct target *t = &pr->t[id];
    if (t->fd >= 0)
        close(t->fd); /* also takes it out of the epoll set */
    t->fd = -1;
    stats_end(&pr->st, &pr->s, t->due, ok);
    t->due = sched_next(t->due, now_ns(), &pr->st.missed);
    if (t->due >= pr->s.t_end) {
        heap_remove(&pr->h, id);
        pr->running--;
    } else {
        heap_set(&pr->h, id, sched_wake(&pr->s, t->due));
    }
}

/* Opens target id's connection; the request goes out once it is writable. */
static void probe_start(struct prober *pr, uint32_t id)
{
    struct target *t = &pr->t[id];
    int64_t now = now_ns();
    int k = (int)(id % (uint32_t)pr->naddr);
    stats_start(&pr->st, &pr->s, t->due, now);
    t->sent = t->got = 0;
    t->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (t->fd < 0)
        goto fail;
    if (connect(t->fd, (const struct sockaddr *)&pr->addr[k], sizeof pr->addr[k]) != 0 &&
        errno != EINPROGRESS)
        goto fail;
    /* Edge-triggered for both directions from the start: one epoll_ctl per
     * probe, no switch from "writable" to "readable" in between. */
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.u32 = id};
    if (epoll_ctl(pr->ep, EPOLL_CTL_ADD, t->fd, &ev) != 0)
        goto fail;
    heap_set(&pr->h, id, now + TIMEOUT_NS);
    return;
fail:
    probe_end(pr, id, 0);
}

/* Sends what is left of the request; 1: all sent, 0: later, -1: failed. */
static int probe_send(struct prober *pr, uint32_t id)
{
    struct target *t = &pr->t[id];
    const struct request *r = &pr->req[id % (uint32_t)pr->naddr];
    while (t->sent < r->len) {
        ssize_t n = send(t->fd, r->text + t->sent, r->len - t->sent, MSG_NOSIGNAL);
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        t->sent += (uint32_t)n;
    }
    return 1;
}

/* Reads what has arrived; 1: EOF or 10 KiB read, 0: more to come, -1: failed.
 * `peer_closed` (EPOLLRDHUP) says the server's FIN is in: everything it sent
 * is queued, so a short read has emptied it and the recv that would return
 * EOF can be saved. */
static int probe_read(struct prober *pr, uint32_t id, int peer_closed)
{
    struct target *t = &pr->t[id];
    while (t->got < MAX_READ) {
        size_t want = MAX_READ - t->got;
        ssize_t n = recv(t->fd, pr->buf, want, 0);
        if (n == 0)
            return 1;
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        if (t->got < sizeof t->head) {
            size_t k = sizeof t->head - t->got;
            memcpy(t->head + t->got, pr->buf, (size_t)n < k ? (size_t)n : k);
        }
        t->got += (uint32_t)n;
        if (peer_closed && (size_t)n < want)
            return 1;
    }
    return 1;
}

static void probe_event(struct prober *pr, uint32_t id, uint32_t events)
{
    struct target *t = &pr->t[id];
    int r = 1;
    if (t->sent < pr->req[id % (uint32_t)pr->naddr].len)
        r = probe_send(pr, id); /* a refused connect fails here */
    /* The answer cannot be there before the request was sent, so reading
     * waits for a readable edge of its own. */
    if (r > 0 && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
        r = probe_read(pr, id, (events & EPOLLRDHUP) != 0);
    else if (r > 0)
        return;
    if (r < 0)
        probe_end(pr, id, 0);
    else if (r > 0)
        probe_end(pr, id, status_ok(t));
}

/* Starts every probe whose wake-up has come and fails every one past its deadline. */
static void run_timers(struct prober *pr)
{
    int64_t now = now_ns();
    while (pr->h.len > 0 && pr->h.e[0].key <= now) {
        uint32_t id = pr->h.e[0].id;
        if (pr->t[id].fd >= 0)
            probe_end(pr, id, 0);
        else
            probe_start(pr, id);
    }
}

static void run(struct prober *pr)
{
    struct epoll_event ev[MAX_EVENTS];
    int have_pwait2 = 1;
    while (pr->running > 0 || pr->st.phase < 2) { /* the window's end too */
        int64_t wake = stats_next_mark(&pr->st, &pr->s);
        if (pr->h.len > 0 && pr->h.e[0].key < wake)
            wake = pr->h.e[0].key;
        int nev = wait_events(pr->ep, ev, MAX_EVENTS, wake, &have_pwait2);
        stats_mark(&pr->st, &pr->s, now_ns());
        for (int i = 0; i < nev; i++)
            probe_event(pr, ev[i].data.u32, ev[i].events);
        run_timers(pr);
    }
}

static int prober_init(struct prober *pr, const char *url, uint32_t n, double secs, double warmup,
                       int naddr, double tick)
{
    pr->naddr = naddr;
    pr->ep = epoll_create1(EPOLL_CLOEXEC);
    pr->t = calloc(n, sizeof *pr->t);
    if (pr->ep < 0 || pr->t == NULL || heap_init(&pr->h, n) != 0 ||
        stats_init(&pr->st, n, secs) != 0 || prober_addresses(pr, url) != 0)
        return -1;
    sched_init(&pr->s, n, secs, warmup, tick);
    for (uint32_t i = 0; i < n; i++) {
        pr->t[i].fd = -1;
        pr->t[i].due = sched_first_due(&pr->s, i);
        heap_set(&pr->h, i, sched_wake(&pr->s, pr->t[i].due));
    }
    pr->running = n;
    return 0;
}

static void prober_free(struct prober *pr)
{
    if (pr->ep >= 0)
        close(pr->ep);
    free(pr->t);
    heap_free(&pr->h);
    free(pr->st.lag_ms);
    free(pr->addr);
    free(pr->req);
    free(pr);
}

int main(int argc, char **argv)
{
    struct peer_args a;
    if (parse_args(argc, argv, "peer_floor", &a) != 0)
        return 2;
    raise_nofile();
    struct prober *pr = calloc(1, sizeof *pr);
    if (pr == NULL)
        return 1;
    pr->ep = -1;
    if (prober_init(pr, a.url, a.n, a.secs, a.warmup, a.naddr, a.tick) != 0) {
        fprintf(stderr, "peer_floor: set-up failed: %s\n", strerror(errno));
        prober_free(pr);
        return 1;
    }
    run(pr);
    stats_print(&pr->st, &pr->s, "floor");
    prober_free(pr);
    return 0;
}

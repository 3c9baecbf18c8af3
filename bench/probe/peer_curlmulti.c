/*
 * bench/probe "curlmulti" peer: a plain libcurl multi loop, the HTTP library
 * kubelua uses without kubelua (no Lua, no libuv): curl's socket API
 * (CURLMOPT_SOCKETFUNCTION / CURLMOPT_TIMERFUNCTION + curl_multi_socket_action)
 * on one epoll loop in one thread. Each probe is one transfer on a reused easy
 * handle (curl_easy_reset into a free list): GET, User-Agent kube-probe/1.33,
 * Accept * / *, Connection: close, no connection reuse, no proxy, TLS not
 * verified, 1 s timeout, at most 10 KiB of body read. Ok: the transfer
 * succeeded and the status is 2xx.
 *
 *   peer_curlmulti URL N SECONDS WARMUP [NADDR [TICK]]
 *
 * URL is http(s)://127.0.0.1[:PORT][/PATH]; target i probes 127.0.0.(1 + i % NADDR).
 * Schedule and measurement are peer_kubelua.lua's (see sched_* and stats_*),
 * the same code as peer_floor.c. TICK > 0 (seconds) starts a probe due at t at
 * the first multiple of TICK at or after t, so probes due close together share
 * one wake-up; its lag is still measured against t.
 * Prints one line: RESULT peer=curlmulti n=.. tick_ms=.. probes_per_s=.. ...
 *
 * cc -O2 -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -o peer_curlmulti peer_curlmulti.c -lcurl
 */
#include <curl/curl.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include "peer_common.h"

#define TIMEOUT_MS 1000L     /* kubelet's default probe timeout */
#define MAX_BODY (10 * 1024) /* kubelet reads at most 10 KiB of body */

/* ---- the prober ------------------------------------------------------------------------ */

#define LIST_END UINT32_MAX

struct target {
    int64_t due;        /* its current or next probe's due time (not on the TICK grid) */
    CURL *easy;         /* while a probe runs */
    size_t body;        /* body bytes taken */
    int truncated;      /* the body went past MAX_BODY: reading stopped there */
    CURLcode result;    /* the transfer's, once curl says it is done */
    uint32_t next_done; /* links the transfers that ended in one turn */
};

struct prober {
    struct sched s;
    struct stats st;
    struct heap h; /* idle targets by wake-up; curl times the running probes */
    struct target *t;
    uint32_t running; /* targets with probes still to run */
    int naddr;
    char **url; /* per address */
    struct curl_slist *headers;
    CURLM *multi;
    CURL **pool; /* easy handles between probes, at most one per target */
    uint32_t npool;
    int64_t curl_wake; /* when curl wants CURL_SOCKET_TIMEOUT; INT64_MAX: never */
    int ep;
};

/* CURLMOPT_SOCKETFUNCTION: keep the epoll set in step with what curl waits
 * for. socketp (curl_multi_assign) marks a socket already in the set. */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct prober *pr = userp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(pr->ep, EPOLL_CTL_DEL, fd, NULL); /* curl closes it right after */
        return 0;
    }
    struct epoll_event ev = {.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) |
                                       ((what & CURL_POLL_OUT) ? EPOLLOUT : 0),
                             .data.fd = fd};
    if (socketp == NULL) {
        curl_multi_assign(pr->multi, fd, pr);
        if (epoll_ctl(pr->ep, EPOLL_CTL_ADD, fd, &ev) == 0 || errno != EEXIST)
            return 0;
    }
    /* A failure is not returned: -1 would fail every transfer of the multi;
     * this one runs into its timeout instead. */
    epoll_ctl(pr->ep, EPOLL_CTL_MOD, fd, &ev);
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: one deadline, taken by the loop; 0 is "at once"
 * (curl must not be called back from here), -1 is none. */
static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct prober *pr = userp;
    (void)multi;
    pr->curl_wake = timeout_ms < 0 ? INT64_MAX : now_ns() + (int64_t)timeout_ms * 1000000;
    return 0;
}

/* Bodies are counted and dropped; past MAX_BODY the transfer is stopped, as
 * kubelet stops reading there (the status has arrived: the probe is judged). */
static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userp)
{
    struct target *t = userp;
    size_t len = size * nmemb;
    (void)ptr;
    if (t->body + len > MAX_BODY) {
        t->truncated = 1;
        return CURL_WRITEFUNC_ERROR;
    }
    t->body += len;
    return len;
}

/* Every option a probe needs, on a fresh or reset handle. */
static int easy_setup(struct prober *pr, CURL *e, uint32_t id)
{
    struct target *t = &pr->t[id];
    int bad = 0;
    bad |= curl_easy_setopt(e, CURLOPT_URL, pr->url[id % (uint32_t)pr->naddr]) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PRIVATE, (void *)t) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_HTTPHEADER, pr->headers) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_WRITEDATA, (void *)t) != CURLE_OK;
    /* A new connection per probe, closed after it, as kubelet's (and kubelua's)
     * set-up: FRESH_CONNECT also spares curl its search of the connection
     * cache for one to reuse. */
    bad |= curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, TIMEOUT_MS) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_PROXY, "") != CURLE_OK; /* never from the environment */
    bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L) != CURLE_OK;
    bad |= curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L) != CURLE_OK;
    /* A reused handle must not resume an earlier probe's TLS session: kubelet
     * does a full handshake every time. */
    bad |= curl_easy_setopt(e, CURLOPT_SSL_SESSIONID_CACHE, 0L) != CURLE_OK;
    return bad ? -1 : 0;
}

/* Ends target id's probe, counts it, hands its easy handle back to the pool
 * and schedules its next probe (or none when that would be due after the window). */
static void probe_end(struct prober *pr, uint32_t id, int ok)
{
    struct target *t = &pr->t[id];
    if (t->easy != NULL) {
        curl_multi_remove_handle(pr->multi, t->easy);
        curl_easy_reset(t->easy);
        pr->pool[pr->npool++] = t->easy;
        t->easy = NULL;
    }
    stats_end(&pr->st, &pr->s, t->due, ok);
    t->due = sched_next(t->due, now_ns(), &pr->st.missed);
    if (t->due >= pr->s.t_end)
        pr->running--;
    else
        heap_set(&pr->h, id, sched_wake(&pr->s, t->due));
}

/* Hands target id's probe to curl; it starts at the next CURL_SOCKET_TIMEOUT. */
static void probe_start(struct prober *pr, uint32_t id)
{
    struct target *t = &pr->t[id];
    stats_start(&pr->st, &pr->s, t->due, now_ns());
    t->easy = pr->npool > 0 ? pr->pool[--pr->npool] : curl_easy_init();
    t->body = 0;
    t->truncated = 0;
    if (t->easy == NULL || easy_setup(pr, t->easy, id) != 0 ||
        curl_multi_add_handle(pr->multi, t->easy) != CURLM_OK)
        probe_end(pr, id, 0);
}

static int probe_ok(const struct target *t)
{
    long code = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &code);
    return (t->result == CURLE_OK || (t->result == CURLE_WRITE_ERROR && t->truncated)) &&
           code >= 200 && code < 300;
}

/* Ends every transfer curl reports done. All messages are taken before any
 * handle is removed: libcurl 7.88 searches its message queue for each handle
 * removed, which is quadratic when thousands of probes end in one turn. */
static void collect_done(struct prober *pr)
{
    uint32_t head = LIST_END;
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(pr->multi, &left)) != NULL) {
        char *priv = NULL;
        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        struct target *t = (struct target *)(void *)priv;
        t->result = m->data.result;
        t->next_done = head;
        head = (uint32_t)(t - pr->t);
    }
    while (head != LIST_END) {
        uint32_t id = head;
        head = pr->t[id].next_done;
        probe_end(pr, id, probe_ok(&pr->t[id]));
    }
}

/* Runs curl's timers when due. curl calls on_timer only when its earliest
 * deadline changed, so if it did not, the deadline is asked for: a timer
 * that fired a hair early on curl's clock must not be lost. */
static void run_curl_timers(struct prober *pr)
{
    int still;
    if (pr->curl_wake > now_ns())
        return;
    pr->curl_wake = INT64_MAX;
    curl_multi_socket_action(pr->multi, CURL_SOCKET_TIMEOUT, 0, &still);
    long ms = -1;
    if (pr->curl_wake == INT64_MAX && curl_multi_timeout(pr->multi, &ms) == CURLM_OK && ms >= 0)
        pr->curl_wake = now_ns() + (int64_t)ms * 1000000;
}

/* Starts every probe whose wake-up has come. */
static void start_due(struct prober *pr)
{
    int64_t now = now_ns();
    while (pr->h.len > 0 && pr->h.e[0].key <= now) {
        uint32_t id = pr->h.e[0].id;
        heap_remove(&pr->h, id);
        probe_start(pr, id);
    }
}

static void run(struct prober *pr)
{
    struct epoll_event ev[MAX_EVENTS];
    int have_pwait2 = 1, still;
    while (pr->running > 0 || pr->st.phase < 2) { /* the window's end too */
        int64_t wake = stats_next_mark(&pr->st, &pr->s);
        if (pr->h.len > 0 && pr->h.e[0].key < wake)
            wake = pr->h.e[0].key;
        if (pr->curl_wake < wake)
            wake = pr->curl_wake;
        int nev = wait_events(pr->ep, ev, MAX_EVENTS, wake, &have_pwait2);
        stats_mark(&pr->st, &pr->s, now_ns());
        for (int i = 0; i < nev; i++) {
            uint32_t e = ev[i].events;
            int flags = ((e & (EPOLLIN | EPOLLHUP)) ? CURL_CSELECT_IN : 0) |
                        ((e & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
                        ((e & EPOLLERR) ? CURL_CSELECT_ERR : 0);
            curl_multi_socket_action(pr->multi, ev[i].data.fd, flags, &still);
        }
        /* New transfers ask for an immediate timeout: starting them before
         * curl's timers lets them connect in this turn, not the next. */
        start_due(pr);
        run_curl_timers(pr);
        collect_done(pr);
    }
}

/* One URL per 127.0.0.k: the URL's host, which must be 127.0.0.1, replaced. */
static int prober_urls(struct prober *pr, const char *url)
{
    static const char host[] = "://127.0.0.1";
    const char *h = strstr(url, host), *rest;
    if (h == NULL || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
        goto bad;
    rest = h + sizeof host - 1;
    if (*rest != '\0' && *rest != ':' && *rest != '/')
        goto bad;
    pr->url = calloc((size_t)pr->naddr, sizeof *pr->url);
    if (pr->url == NULL)
        return -1;
    for (int k = 0; k < pr->naddr; k++) {
        if (asprintf(&pr->url[k], "%.*s://127.0.0.%d%s", (int)(h - url), url, k + 1, rest) < 0) {
            pr->url[k] = NULL;
            return -1;
        }
    }
    return 0;
bad:
    fprintf(stderr, "peer_curlmulti: URL must be http(s)://127.0.0.1[:PORT][/PATH]\n");
    return -1;
}

static int prober_headers(struct prober *pr)
{
    static const char *const h[] = {"User-Agent: kube-probe/1.33", "Accept: */*",
                                    "Connection: close"};
    for (size_t i = 0; i < sizeof h / sizeof h[0]; i++) {
        struct curl_slist *l = curl_slist_append(pr->headers, h[i]);
        if (l == NULL)
            return -1;
        pr->headers = l;
    }
    return 0;
}

static int prober_init(struct prober *pr, const char *url, uint32_t n, double secs, double warmup,
                       int naddr, double tick)
{
    pr->naddr = naddr;
    pr->curl_wake = INT64_MAX;
    pr->ep = epoll_create1(EPOLL_CLOEXEC);
    pr->t = calloc(n, sizeof *pr->t);
    pr->pool = calloc(n, sizeof *pr->pool);
    pr->multi = curl_multi_init();
    if (pr->ep < 0 || pr->t == NULL || pr->pool == NULL || pr->multi == NULL ||
        heap_init(&pr->h, n) != 0 || stats_init(&pr->st, n, secs) != 0 ||
        prober_urls(pr, url) != 0 || prober_headers(pr) != 0)
        return -1;
    curl_multi_setopt(pr->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(pr->multi, CURLMOPT_SOCKETDATA, (void *)pr);
    curl_multi_setopt(pr->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(pr->multi, CURLMOPT_TIMERDATA, (void *)pr);
    sched_init(&pr->s, n, secs, warmup, tick);
    for (uint32_t i = 0; i < n; i++) {
        pr->t[i].due = sched_first_due(&pr->s, i);
        heap_set(&pr->h, i, sched_wake(&pr->s, pr->t[i].due));
    }
    pr->running = n;
    return 0;
}

/* Runs after the loop: every probe has ended, so every easy handle is in the pool. */
static void prober_free(struct prober *pr)
{
    for (uint32_t i = 0; i < pr->npool; i++)
        curl_easy_cleanup(pr->pool[i]);
    if (pr->multi != NULL)
        curl_multi_cleanup(pr->multi);
    curl_slist_free_all(pr->headers);
    for (int k = 0; pr->url != NULL && k < pr->naddr; k++)
        free(pr->url[k]);
    free(pr->url);
    if (pr->ep >= 0)
        close(pr->ep);
    free(pr->pool);
    free(pr->t);
    heap_free(&pr->h);
    free(pr->st.lag_ms);
    free(pr);
}

int main(int argc, char **argv)
{
    struct peer_args a;
    if (parse_args(argc, argv, "peer_curlmulti", &a) != 0)
        return 2;
    raise_nofile();
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    struct prober *pr = calloc(1, sizeof *pr);
    int rc = 1;
    if (pr == NULL)
        goto out;
    pr->ep = -1;
    if (prober_init(pr, a.url, a.n, a.secs, a.warmup, a.naddr, a.tick) != 0) {
        fprintf(stderr, "peer_curlmulti: set-up failed\n");
        prober_free(pr);
        goto out;
    }
    run(pr);
    stats_print(&pr->st, &pr->s, "curlmulti");
    prober_free(pr);
    rc = 0;
out:
    curl_global_cleanup();
    return rc;
}

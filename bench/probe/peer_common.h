/*
 * bench/probe: what the C reference peers (peer_floor.c, peer_curlmulti.c)
 * share, so both schedule and measure alike: clock and process figures, a
 * min-heap of (time, target) for wake-ups and deadlines, peer_kubelua.lua's
 * schedule (with the optional tick), the result counters and the RESULT
 * line, and the epoll wait. Static functions: each peer includes it once.
 */
#ifndef KL_BENCH_PEER_COMMON_H
#define KL_BENCH_PEER_COMMON_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL
#define PERIOD_NS NS         /* every target is probed once a second */
#define MAX_EVENTS 1024      /* events taken per epoll_pwait2 */
#define HEAP_NONE UINT32_MAX /* heap position of an id not in the heap */

/* ---- clock, process figures ---------------------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/* Peak resident set (VmHWM) in MiB, as the other peers report it. */
static double peak_rss_mb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    double kb = 0;
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            kb = strtod(line + 6, NULL);
            break;
        }
    }
    fclose(f);
    return kb / 1024;
}

/* Thousands of probes in flight need as many descriptors. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* ---- min-heap of (time, target): wake-ups and deadlines ---------------------- */

struct heap_entry {
    int64_t key;
    uint32_t id;
};

struct heap {
    struct heap_entry *e;
    uint32_t *pos; /* pos[id]: index in e, or HEAP_NONE */
    uint32_t len;
};

static int heap_init(struct heap *h, uint32_t n)
{
    h->e = calloc(n, sizeof *h->e);
    h->pos = malloc(n * sizeof *h->pos);
    h->len = 0;
    if (h->e == NULL || h->pos == NULL)
        return -1;
    for (uint32_t i = 0; i < n; i++)
        h->pos[i] = HEAP_NONE;
    return 0;
}

static void heap_free(struct heap *h)
{
    free(h->e);
    free(h->pos);
}

static void heap_place(struct heap *h, uint32_t i, struct heap_entry x)
{
    h->e[i] = x;
    h->pos[x.id] = i;
}

/* Moves the entry at i up or down until the heap order holds again. */
static void heap_sift(struct heap *h, uint32_t i)
{
    struct heap_entry x = h->e[i];
    while (i > 0 && h->e[(i - 1) / 2].key > x.key) {
        heap_place(h, i, h->e[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= h->len)
            break;
        if (c + 1 < h->len && h->e[c + 1].key < h->e[c].key)
            c++;
        if (h->e[c].key >= x.key)
            break;
        heap_place(h, i, h->e[c]);
        i = c;
    }
    heap_place(h, i, x);
}

/* Adds id at key, or moves it to key if it is already in the heap. */
static void heap_set(struct heap *h, uint32_t id, int64_t key)
{
    uint32_t i = h->pos[id];
    if (i == HEAP_NONE)
        i = h->len++;
    heap_place(h, i, (struct heap_entry){key, id});
    heap_sift(h, i);
}

static void heap_remove(struct heap *h, uint32_t id)
{
    uint32_t i = h->pos[id];
    if (i == HEAP_NONE)
        return;
    h->pos[id] = HEAP_NONE;
    if (--h->len == i)
        return;
    heap_place(h, i, h->e[h->len]);
    heap_sift(h, i);
}

/* ---- schedule (peer_kubelua.lua's) ----------------------------------------------- */

struct sched {
    int64_t start;     /* target i is first due at start + i/N s */
    int64_t t_measure; /* probes due from here on are measured ... */
    int64_t t_end;     /* ... up to here, and none is started after it */
    int64_t tick;      /* wake-up grid in ns, 0: none */
    uint32_t n;
};

static void sched_init(struct sched *s, uint32_t n, double secs, double warmup, double tick)
{
    s->start = now_ns() + NS / 5;
    s->t_measure = s->start + (int64_t)(warmup * 1e9 + 0.5);
    s->t_end = s->t_measure + (int64_t)(secs * 1e9 + 0.5);
    s->tick = (int64_t)(tick * 1e9 + 0.5);
    s->n = n;
}

static int64_t sched_first_due(const struct sched *s, uint32_t i)
{
    return s->start + (int64_t)i * PERIOD_NS / s->n;
}

/* When a probe due at `due` is started: on the TICK grid if there is one. */
static int64_t sched_wake(const struct sched *s, int64_t due)
{
    if (s->tick == 0)
        return due;
    return (due + s->tick - 1) / s->tick * s->tick;
}

/* The due time after a probe due at `due` ended at `now`. As peer_kubelua.lua:
 * a probe late by less than a period still runs (at once), whole periods
 * behind that are skipped and counted in *missed. */
static int64_t sched_next(int64_t due, int64_t now, long *missed)
{
    due += PERIOD_NS;
    while (due < now - PERIOD_NS) {
        due += PERIOD_NS;
        (*missed)++;
    }
    return due;
}

/* ---- results ----------------------------------------------------------------------- */

struct stats {
    float *lag_ms; /* one per measured probe, at its start */
    size_t nlag, cap;
    long ok, fail, missed;
    int phase; /* 0: warming up, 1: measuring, 2: window over */
    double cpu0, cpu;
    int64_t m0, wall;
};

/* Room for every probe due in the window: at most ceil(secs) + 1 per target. */
static int stats_init(struct stats *st, uint32_t n, double secs)
{
    memset(st, 0, sizeof *st);
    st->cap = (size_t)n * ((size_t)secs + 2);
    st->lag_ms = malloc(st->cap * sizeof *st->lag_ms);
    return st->lag_ms == NULL ? -1 : 0;
}

/* Reads the CPU clock at the window's edges; called as soon as the loop wakes. */
static void stats_mark(struct stats *st, const struct sched *s, int64_t now)
{
    if (st->phase == 0 && now >= s->t_measure) {
        st->cpu0 = cpu_seconds();
        st->m0 = now;
        st->phase = 1;
    }
    if (st->phase == 1 && now >= s->t_end) {
        st->cpu = cpu_seconds() - st->cpu0;
        st->wall = now - st->m0;
        st->phase = 2;
    }
}

/* The next time stats_mark has something to read, or INT64_MAX. */
static int64_t stats_next_mark(const struct stats *st, const struct sched *s)
{
    return st->phase == 0 ? s->t_measure : st->phase == 1 ? s->t_end : INT64_MAX;
}

static void stats_start(struct stats *st, const struct sched *s, int64_t due, int64_t now)
{
    if (due >= s->t_measure && st->nlag < st->cap)
        st->lag_ms[st->nlag++] = (float)((double)(now - due) / 1e6);
}

static void stats_end(struct stats *st, const struct sched *s, int64_t due, int ok)
{
    if (due < s->t_measure)
        return;
    if (ok)
        st->ok++;
    else
        st->fail++;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The p-th quantile as peer_kubelua.lua takes it: element max(1, ceil(len * p)). */
static double stats_pct(const struct stats *st, double p)
{
    if (st->nlag == 0)
        return 0;
    double x = (double)st->nlag * p;
    size_t k = (size_t)x;
    if ((double)k < x)
        k++;
    return st->lag_ms[k > 0 ? k - 1 : 0];
}

static void stats_print(struct stats *st, const struct sched *s, const char *peer)
{
    long probes = st->ok + st->fail;
    double wall = (double)st->wall / 1e9;
    qsort(st->lag_ms, st->nlag, sizeof *st->lag_ms, cmp_float);
    printf("RESULT peer=%s n=%u tick_ms=%g probes_per_s=%.0f ok=%ld fail=%ld missed=%ld "
           "lag_p50_ms=%.2f lag_p99_ms=%.2f cpu_us_per_probe=%.1f cpu_cores=%.2f rss_mb=%.1f\n",
           peer, s->n, (double)s->tick / 1e6, wall > 0 ? (double)probes / wall : 0, st->ok,
           st->fail, st->missed, stats_pct(st, 0.5), stats_pct(st, 0.99),
           probes > 0 ? st->cpu / (double)probes * 1e6 : 0, wall > 0 ? st->cpu / wall : 0,
           peak_rss_mb());
    fflush(stdout);
}

/* ---- waiting -------------------------------------------------------------------------- */

/* epoll with a nanosecond timeout (epoll_pwait2), so a probe is not started up
 * to a millisecond late or early; epoll_wait rounded up where it is missing. */
static int wait_events(int ep, struct epoll_event *ev, int max, int64_t wake, int *have_pwait2)
{
    int64_t d = wake == INT64_MAX ? -1 : wake - now_ns();
    if (d < 0 && wake != INT64_MAX)
        d = 0;
    if (*have_pwait2) {
        struct timespec ts = {(time_t)(d / NS), (long)(d % NS)};
        int r = epoll_pwait2(ep, ev, max, d < 0 ? NULL : &ts, NULL);
        if (r >= 0 || errno != ENOSYS)
            return r;
        *have_pwait2 = 0;
    }
    return epoll_wait(ep, ev, max, d < 0 ? -1 : (int)((d + 999999) / 1000000));
}

/* ---- arguments: URL N SECONDS WARMUP [NADDR [TICK]] --------------------------------- */

struct peer_args {
    const char *url;
    uint32_t n;
    double secs, warmup, tick;
    int naddr;
};

/* 0, or a message on stderr and 2 (the exit code for a usage error). */
static int parse_args(int argc, char **argv, const char *peer, struct peer_args *a)
{
    if (argc < 5 || argc > 7) {
        fprintf(stderr, "usage: %s URL N SECONDS WARMUP [NADDR [TICK]]\n", argv[0]);
        return 2;
    }
    long n = strtol(argv[2], NULL, 10);
    long naddr = argc > 5 ? strtol(argv[5], NULL, 10) : 1;
    a->url = argv[1];
    a->secs = strtod(argv[3], NULL);
    a->warmup = strtod(argv[4], NULL);
    a->tick = argc > 6 ? strtod(argv[6], NULL) : 0;
    if (n < 1 || n > 10000000 || a->secs <= 0 || a->warmup < 0 || naddr < 1 || naddr > 254 ||
        a->tick < 0) {
        fprintf(stderr, "%s: bad arguments\n", peer);
        return 2;
    }
    a->n = (uint32_t)n;
    a->naddr = (int)naddr;
    return 0;
}

#endif

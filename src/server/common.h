/* Plumbing shared by the server bindings (control.c, httpd.c); not a Lua
 * module of its own.
 *
 * kl__waitq: a FIFO of items (accepted connections, parsed requests) that
 * at most one task waits on. The loop side puts items; a Lua method takes
 * the next one, parking the task while the queue is empty. Items embed a
 * kl__qlink; the binding converts between the two with kl__item_of. The
 * queue owns queued items and hands each over with the binding's `give`
 * function, which pushes it as one Lua value and releases the queue's hold.
 *
 * The queue lives inside the server object, which must outlive a parked
 * waiter: a parked task holds the server's userdata on its stack, and the
 * host calls the cancel hook before it drops the task. */
#ifndef KL_SERVER_COMMON_H
#define KL_SERVER_COMMON_H

#include "host/host.h"

#include <stddef.h>

/* The item of type `type` whose member `field` is the link `link`. */
#define kl__item_of(link, type, field) ((type *)((char *)(link)-offsetof(type, field)))

typedef struct kl__qlink kl__qlink;
struct kl__qlink {
    kl__qlink *next;
};

typedef struct {
    kl__qlink *head, *tail;
    int len;         /* items queued */
    kl_park *waiter; /* the task parked in take, or NULL; never set while len > 0 */
} kl__waitq;

/* Push `item` onto L as the one result of a take, and release it. */
typedef void (*kl__waitq_give_fn)(lua_State *L, kl__qlink *item);
/* Release an item that was never taken. */
typedef void (*kl__waitq_drop_fn)(kl__qlink *item);

/* Hand `item` to the parked waiter (resumed with it), or queue it. */
void kl__waitq_put(kl__waitq *q, kl__qlink *item, kl__waitq_give_fn give);

/* The body of a Lua method: return the next item at once, or park the task
 * until one is put (or the queue is closed, which gives nil). Throws `busy`
 * when another task is already waiting. */
int kl__waitq_take(lua_State *L, kl__waitq *q, kl__waitq_give_fn give, const char *busy);

/* Drop every queued item and resume the waiter, if any, with nil. */
void kl__waitq_close(kl__waitq *q, kl__waitq_drop_fn drop);

/* The body of a libuv alloc callback for a growing input buffer *buf holding
 * `len` bytes in *cap: make room for at least `want` more and hand out all of
 * the free space (an empty buffer when out of memory: libuv then reports
 * UV_ENOBUFS to the read callback). */
void kl__read_room(char **buf, size_t len, size_t *cap, size_t want, uv_buf_t *out);

#endif

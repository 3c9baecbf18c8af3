/* Plumbing shared by the server bindings: see common.h. */
#include "server/common.h"

#include <stdlib.h>

static kl__qlink *waitq_pop(kl__waitq *q)
{
    kl__qlink *it = q->head;
    if (it == NULL)
        return NULL;
    q->head = it->next;
    if (q->head == NULL)
        q->tail = NULL;
    it->next = NULL;
    q->len--;
    return it;
}

void kl__waitq_put(kl__waitq *q, kl__qlink *item, kl__waitq_give_fn give)
{
    item->next = NULL;
    if (q->waiter != NULL) {
        kl_park *p = q->waiter;
        q->waiter = NULL;
        give(kl__park_thread(p), item);
        kl__park_resume(p, 1);
        return;
    }
    if (q->tail != NULL)
        q->tail->next = item;
    else
        q->head = item;
    q->tail = item;
    q->len++;
}

static void waitq_cancel(void *ud)
{
    kl__waitq *q = ud;
    q->waiter = NULL;
}

int kl__waitq_take(lua_State *L, kl__waitq *q, kl__waitq_give_fn give, const char *busy)
{
    if (q->waiter != NULL)
        return luaL_error(L, "%s", busy);
    kl__qlink *it = waitq_pop(q);
    if (it != NULL) {
        give(L, it);
        return 1;
    }
    kl_park *p = kl__park_new(L);
    q->waiter = p;
    kl__park_set_cancel(p, waitq_cancel, q);
    return kl__park_yield(L, p);
}

void kl__waitq_close(kl__waitq *q, kl__waitq_drop_fn drop)
{
    kl__qlink *it;
    while ((it = waitq_pop(q)) != NULL)
        drop(it);
    if (q->waiter != NULL) {
        kl_park *p = q->waiter;
        q->waiter = NULL;
        lua_pushnil(kl__park_thread(p));
        kl__park_resume(p, 1);
    }
}

void kl__read_room(char **buf, size_t len, size_t *cap, size_t want, uv_buf_t *out)
{
    if (*cap - len < want) {
        char *nb = realloc(*buf, len + want);
        if (nb == NULL) {
            *out = uv_buf_init(NULL, 0);
            return;
        }
        *buf = nb;
        *cap = len + want;
    }
    *out = uv_buf_init(*buf + len, (unsigned)(*cap - len));
}

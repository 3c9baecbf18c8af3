/* kubelua.sys.notify: one datagram to an AF_UNIX SOCK_DGRAM address - the
 * transport of systemd's notification protocol (sd_notify), without
 * libsystemd.
 *
 *   local notify = require "kubelua.sys.notify"
 *   notify.send(addr, "READY=1\nSTATUS=running")  -> true | nil, err, code
 *
 * `addr` is a file system path ("/run/systemd/notify") or an abstract socket
 * name written with a leading '@' ("@/org/freedesktop/..."), as systemd puts
 * them in $NOTIFY_SOCKET. The send never blocks: a full receive queue is
 * EAGAIN, returned like any other failure (nil, "EAGAIN: ...", "EAGAIN").
 * A socket is opened per call: notifications are rare (a few a minute). */
#include "host/host.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int push_errno(lua_State *L, int err, const char *addr)
{
    int uverr = uv_translate_sys_error(err);
    return kl__push_error(L, uv_err_name(uverr), "notify %s: %s", addr, uv_strerror(uverr));
}

static int l_send(lua_State *L)
{
    size_t alen, mlen;
    const char *addr = luaL_checklstring(L, 1, &alen);
    const char *msg = luaL_checklstring(L, 2, &mlen);
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    /* A path needs its terminating NUL inside sun_path; an abstract name
     * (the '@' becomes the leading NUL) does not. */
    if (alen == 0 || (addr[0] != '@' && addr[0] != '/') ||
        alen >= sizeof sa.sun_path + (addr[0] == '@'))
        return kl__push_error(L, "EINVAL", "notify: invalid socket address \"%s\"", addr);
    if (addr[0] != '@' && memchr(addr, '\0', alen) != NULL)
        return kl__push_error(L, "EINVAL", "notify: invalid socket address");
    memcpy(sa.sun_path, addr, alen);
    if (addr[0] == '@')
        sa.sun_path[0] = '\0';
    socklen_t salen =
        (socklen_t)(offsetof(struct sockaddr_un, sun_path) + alen + (addr[0] == '@' ? 0 : 1));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return push_errno(L, errno, addr);
    ssize_t n;
    do {
        n = sendto(fd, msg, mlen, MSG_NOSIGNAL, (struct sockaddr *)&sa, salen);
    } while (n < 0 && errno == EINTR);
    int err = errno;
    close(fd);
    if (n < 0)
        return push_errno(L, err, addr);
    if ((size_t)n != mlen)
        return kl__push_error(L, "EMSGSIZE", "notify %s: short send", addr);
    lua_pushboolean(L, 1);
    return 1;
}

int luaopen_kubelua_sys_notify(lua_State *L)
{
    static const luaL_Reg fns[] = {{"send", l_send}, {0, 0}};
    lua_newtable(L);
    luaL_setfuncs(L, fns, 0);
    return 1;
}

/* kubelua.sys: the few file-system primitives the GC policies need.
 *
 *   local sys = require "kubelua.sys"
 *   sys.statvfs(path)   -> { capacity=, available=, free=, inodes=, inodes_free=,
 *                            inodes_available= }   (bytes and counts)
 *   sys.stat(path)      -> { type=, size=, mtime=, uid=, gid=, mode= }  (follows symlinks)
 *   sys.lstat(path)     -> { type=, size=, mtime=, uid=, gid=, mode= }  (the link itself)
 *                          type: "file" | "dir" | "link" | "other";
 *                          mode: the permission bits (mode & 07777)
 *   sys.realpath(path)  -> the absolute path with every link resolved
 *   sys.geteuid(), sys.getpid() -> numbers
 *   sys.readdir(path)   -> { name, ... }            (no "." or "..", unsorted)
 *   sys.readlink(path)  -> target
 *   sys.du(path)        -> bytes (apparent sizes of every file below path, links
 *                          not followed), disk bytes (allocated blocks)
 *   sys.remove_all(path)-> true; removes path and everything below it without
 *                          following symlinks (true too when path is absent)
 *   sys.fsync(path)     -> true; flushes a file or folder to disk
 *   sys.mkdir_p(path [, mode]) -> true; creates path and missing parents (0755)
 *
 * Each returns nil, "ENAME: what path: reason", "ENAME" on failure (ENOENT,
 * EACCES, ...). They run synchronously: they are cheap metadata calls,
 * except du and remove_all on large trees. Nothing here yields.
 */
#include "host/host.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Deeper trees than this are refused rather than walked (a pod log folder is
 * two levels deep). */
#define MAX_DEPTH 64

static int push_errno(lua_State *L, int err, const char *what, const char *path)
{
    return kl__push_error(L, uv_err_name(uv_translate_sys_error(err)), "%s %s: %s", what, path,
                          uv_strerror(uv_translate_sys_error(err)));
}

static int l_statvfs(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct statvfs st;
    if (statvfs(path, &st) != 0)
        return push_errno(L, errno, "statvfs", path);
    double frsize = (double)(st.f_frsize ? st.f_frsize : st.f_bsize);
    lua_createtable(L, 0, 6);
    lua_pushnumber(L, frsize * (double)st.f_blocks);
    lua_setfield(L, -2, "capacity");
    lua_pushnumber(L, frsize * (double)st.f_bavail);
    lua_setfield(L, -2, "available");
    lua_pushnumber(L, frsize * (double)st.f_bfree);
    lua_setfield(L, -2, "free");
    lua_pushnumber(L, (double)st.f_files);
    lua_setfield(L, -2, "inodes");
    lua_pushnumber(L, (double)st.f_ffree);
    lua_setfield(L, -2, "inodes_free");
    lua_pushnumber(L, (double)st.f_favail);
    lua_setfield(L, -2, "inodes_available");
    return 1;
}

static const char *type_name(mode_t m)
{
    if (S_ISREG(m))
        return "file";
    if (S_ISDIR(m))
        return "dir";
    if (S_ISLNK(m))
        return "link";
    return "other";
}

static int push_stat(lua_State *L, const struct stat *st)
{
    lua_createtable(L, 0, 6);
    lua_pushstring(L, type_name(st->st_mode));
    lua_setfield(L, -2, "type");
    lua_pushnumber(L, (double)st->st_size);
    lua_setfield(L, -2, "size");
    lua_pushnumber(L, (double)st->st_mtim.tv_sec + (double)st->st_mtim.tv_nsec / 1e9);
    lua_setfield(L, -2, "mtime");
    lua_pushnumber(L, (double)st->st_uid);
    lua_setfield(L, -2, "uid");
    lua_pushnumber(L, (double)st->st_gid);
    lua_setfield(L, -2, "gid");
    lua_pushnumber(L, (double)(st->st_mode & 07777));
    lua_setfield(L, -2, "mode");
    return 1;
}

static int l_realpath(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char *r = realpath(path, NULL);
    if (r == NULL)
        return push_errno(L, errno, "realpath", path);
    lua_pushstring(L, r);
    free(r);
    return 1;
}

static int l_geteuid(lua_State *L)
{
    lua_pushnumber(L, (double)geteuid());
    return 1;
}

static int l_getpid(lua_State *L)
{
    lua_pushnumber(L, (double)getpid());
    return 1;
}

static int l_stat(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (stat(path, &st) != 0)
        return push_errno(L, errno, "stat", path);
    return push_stat(L, &st);
}

static int l_lstat(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (lstat(path, &st) != 0)
        return push_errno(L, errno, "lstat", path);
    return push_stat(L, &st);
}

static int is_dot(const char *name)
{
    return name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'));
}

/* The next entry of d other than "." and "..", or NULL at the end (or on an
 * error: readdir's errno is left as it is). */
static struct dirent *next_entry(DIR *d)
{
    struct dirent *e;
    do
        e = readdir(d);
    while (e != NULL && is_dot(e->d_name));
    return e;
}

static int l_readdir(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    DIR *d = opendir(path);
    if (d == NULL)
        return push_errno(L, errno, "opendir", path);
    lua_newtable(L);
    int n = 0;
    struct dirent *e;
    errno = 0;
    while ((e = next_entry(d)) != NULL) {
        lua_pushstring(L, e->d_name);
        lua_rawseti(L, -2, ++n);
    }
    int err = errno;
    closedir(d);
    if (err != 0) {
        lua_pop(L, 1);
        return push_errno(L, err, "readdir", path);
    }
    return 1;
}

static int l_readlink(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    char buf[4096];
    ssize_t n = readlink(path, buf, sizeof buf);
    if (n < 0)
        return push_errno(L, errno, "readlink", path);
    if ((size_t)n == sizeof buf)
        return push_errno(L, ENAMETOOLONG, "readlink", path);
    lua_pushlstring(L, buf, (size_t)n);
    return 1;
}

/* --- tree walks over directory file descriptors (no path building, no
 * symlink following, no global state) ------------------------------------ */

typedef struct {
    double bytes, disk;
    int err; /* first errno met */
} walk;

/* Keep err when it is the walk's first error. */
static void walk_fail(walk *w, int err)
{
    if (!w->err)
        w->err = err;
}

/* A stream over the open folder fd, or NULL (fd closed, the error kept). */
static DIR *walk_opendir(int fd, walk *w)
{
    DIR *d = fdopendir(fd);
    if (d == NULL) {
        walk_fail(w, errno);
        close(fd);
    }
    return d;
}

/* Open the folder `name` of d, found at `depth`, for a walk one level
 * deeper: -1 when it is too deep (ELOOP kept) or cannot be opened (the
 * error kept, unless the folder is gone already). */
static int walk_opensub(DIR *d, const char *name, int depth, walk *w)
{
    if (depth >= MAX_DEPTH) {
        walk_fail(w, ELOOP);
        return -1;
    }
    int sub = openat(dirfd(d), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub < 0 && errno != ENOENT)
        walk_fail(w, errno);
    return sub;
}

/* Sum the sizes of everything inside the open folder fd; closes fd. */
static void du_dir(int fd, int depth, walk *w)
{
    DIR *d = walk_opendir(fd, w);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = next_entry(d)) != NULL) {
        struct stat st;
        if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno != ENOENT)
                walk_fail(w, errno);
            continue;
        }
        w->disk += (double)st.st_blocks * 512.0;
        if (S_ISDIR(st.st_mode)) {
            int sub = walk_opensub(d, e->d_name, depth, w);
            if (sub >= 0)
                du_dir(sub, depth + 1, w);
        } else {
            w->bytes += (double)st.st_size;
        }
    }
    closedir(d);
}

static int l_du(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (lstat(path, &st) != 0)
        return push_errno(L, errno, "du", path);
    walk w = {0, 0, 0};
    w.disk = (double)st.st_blocks * 512.0;
    if (S_ISDIR(st.st_mode)) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0)
            return push_errno(L, errno, "du", path);
        du_dir(fd, 0, &w);
        if (w.err)
            return push_errno(L, w.err, "du", path);
    } else {
        w.bytes = (double)st.st_size;
    }
    lua_pushnumber(L, w.bytes);
    lua_pushnumber(L, w.disk);
    return 2;
}

/* Empty the open folder fd (closes fd); the first error is kept in w. */
static void rm_dir(int fd, int depth, walk *w)
{
    DIR *d = walk_opendir(fd, w);
    if (d == NULL)
        return;
    struct dirent *e;
    while ((e = next_entry(d)) != NULL) {
        if (unlinkat(dirfd(d), e->d_name, 0) == 0 || errno == ENOENT)
            continue;
        if (errno != EISDIR && errno != EPERM) {
            walk_fail(w, errno);
            continue;
        }
        /* A folder (unlink says EISDIR on Linux; EPERM elsewhere). */
        int sub = walk_opensub(d, e->d_name, depth, w);
        if (sub < 0)
            continue;
        rm_dir(sub, depth + 1, w);
        if (unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR) != 0 && errno != ENOENT)
            walk_fail(w, errno);
    }
    closedir(d);
}

static int l_remove_all(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno == ENOENT) {
            lua_pushboolean(L, 1);
            return 1;
        }
        return push_errno(L, errno, "remove", path);
    }
    if (!S_ISDIR(st.st_mode)) {
        if (unlink(path) != 0 && errno != ENOENT)
            return push_errno(L, errno, "remove", path);
        lua_pushboolean(L, 1);
        return 1;
    }
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return push_errno(L, errno, "remove", path);
    walk w = {0, 0, 0};
    rm_dir(fd, 0, &w);
    if (w.err)
        return push_errno(L, w.err, "remove", path);
    if (rmdir(path) != 0 && errno != ENOENT)
        return push_errno(L, errno, "remove", path);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_fsync(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return push_errno(L, errno, "fsync", path);
    if (fsync(fd) != 0) {
        int err = errno;
        close(fd);
        return push_errno(L, err, "fsync", path);
    }
    close(fd);
    lua_pushboolean(L, 1);
    return 1;
}

static int l_mkdir_p(lua_State *L)
{
    size_t len;
    const char *path = luaL_checklstring(L, 1, &len);
    mode_t mode = (mode_t)luaL_optinteger(L, 2, 0755);
    char buf[4096];
    if (len == 0 || len >= sizeof buf)
        return push_errno(L, len == 0 ? ENOENT : ENAMETOOLONG, "mkdir", path);
    memcpy(buf, path, len + 1);
    /* Each prefix ending before a '/', then the whole path. */
    for (size_t i = 1; i <= len; i++) {
        if (i < len && buf[i] != '/')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, mode) != 0 && errno != EEXIST) {
            int err = errno;
            buf[i] = saved;
            return push_errno(L, err, "mkdir", path);
        }
        buf[i] = saved;
    }
    struct stat st;
    if (stat(path, &st) != 0)
        return push_errno(L, errno, "mkdir", path);
    if (!S_ISDIR(st.st_mode))
        return push_errno(L, ENOTDIR, "mkdir", path);
    lua_pushboolean(L, 1);
    return 1;
}

int luaopen_kubelua_sys(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"statvfs", l_statvfs},
        {"stat", l_stat},
        {"lstat", l_lstat},
        {"readdir", l_readdir},
        {"readlink", l_readlink},
        {"du", l_du},
        {"remove_all", l_remove_all},
        {"fsync", l_fsync},
        {"mkdir_p", l_mkdir_p},
        {"realpath", l_realpath},
        {"geteuid", l_geteuid},
        {"getpid", l_getpid},
        {0, 0},
    };
    lua_newtable(L);
    luaL_setfuncs(L, fns, 0);
    return 1;
}

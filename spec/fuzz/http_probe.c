/* Fuzz target: the HTTP probe's handling of a response (everything after
 * libcurl's own parsing, with no socket): src/http/http.c's header callback
 * (one call per header line, as curl makes them; a status line starts a new
 * response), its body callback (the 10 KiB cap, truncation) and the Lua
 * table it builds (push_response: lowercased names, repeats joined, folded
 * lines), then lua/kubelua/probe.lua's probe.http on that table: the status
 * classification (kubelet's 2xx success, 3xx warning, else failure),
 * Location resolution and the same-host rule, the redirect limit, and the
 * body/header match options. http.c is included here so its static
 * callbacks can be called; kubelua.http.core is replaced by a fake whose
 * request() answers every hop with the response the input describes.
 *
 * Input: [flags][status hi][status lo][nsplits][body split sizes...]
 *        [header lines up to the first blank line not followed by "HTTP/"][body...]
 *   flags bits 0-1: redirects "local", "all", "none", "local"
 *         bit 2: body_match, body_not_match and header_match options
 *         bit 3: valid_status {200, 204, 404}
 *         bit 4: max_body 64 (else the probe's 10 KiB)
 *         bit 5: a POST with a body and a Host header
 * Checks: the body kept is the start of the one sent, at most max_body,
 * truncated exactly when cut; header names lowercase, no value spans lines;
 * probe.http never throws and classifies as kubelet does; in "local" mode
 * no request leaves the first host, in "none" mode one request is made;
 * at most M.MAX_REDIRECTS hops. Lua lines run are coverage (fuzz_lua_cov.h). */
#include "fuzz_lua.h"
#include "fuzz_lua_cov.h"

#include "http/http.c"

/* http.c's calls into the host, never reached from the callbacks used here */
kl_host *kl__host(lua_State *L)
{
    FUZZ_FAIL("kl__host called");
}
kl_park *kl__park_new(lua_State *L)
{
    FUZZ_FAIL("kl__park_new called");
}
void kl__park_set_cancel(kl_park *p, kl_park_cancel_fn fn, void *ud)
{
    FUZZ_FAIL("kl__park_set_cancel called");
}
int kl__park_yield(lua_State *L, kl_park *p)
{
    FUZZ_FAIL("kl__park_yield called");
}
lua_State *kl__park_thread(kl_park *p)
{
    FUZZ_FAIL("kl__park_thread called");
}
void kl__park_resume(kl_park *p, int nres)
{
    FUZZ_FAIL("kl__park_resume called");
}
int kl__push_error(lua_State *L, const char *code, const char *fmt, ...)
{
    FUZZ_FAIL("kl__push_error called");
}
void kl__new_type(lua_State *L, const char *tname, const luaL_Reg *methods, lua_CFunction gc)
{
    FUZZ_FAIL("kl__new_type called");
}

typedef struct {
    const uint8_t *data;
    size_t size;
    int flags, status;
    const uint8_t *splits;
    size_t nsplits;
    const char *head, *body;
    size_t head_len, body_len;
} input;

/* The header lines end after the first blank line that no status line
 * follows (interim 1xx responses come before the final one). */
static size_t head_end(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t e = 0;
        if (p[i] != '\n')
            continue;
        if (i + 1 < n && p[i + 1] == '\n')
            e = i + 2;
        else if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n')
            e = i + 3;
        if (e != 0 && !(n - e >= 5 && memcmp(p + e, "HTTP/", 5) == 0))
            return e;
    }
    return n;
}

/* fake request(req) -> the response table http.c would build */
static int fake_request(lua_State *L)
{
    input *in = lua_touserdata(L, lua_upvalueindex(1));
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "max_body");
    lua_Number mb = lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (!(mb >= 0 && mb <= 1 << 20))
        FUZZ_FAIL("max_body %g", mb);
    lua_getfield(L, 1, "truncate");
    if (!lua_toboolean(L, -1))
        FUZZ_FAIL("the probe does not ask for truncation");
    lua_pop(L, 1);

    request r;
    memset(&r, 0, sizeof r);
    r.max_body = (size_t)mb;
    r.truncate = 1;
    r.status = in->status;
    /* header lines, one callback each, as curl hands them out */
    const char *p = in->head, *end = in->head + in->head_len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t len = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        if (on_header((char *)p, 1, len, &r) != len)
            FUZZ_FAIL("on_header refused a line of %zu bytes", len);
        p += len;
    }
    /* the body in the chunks the input asks for, until the callback stops */
    size_t off = 0, i = 0;
    int stopped = 0;
    while (off < in->body_len) {
        size_t n = in->body_len - off;
        if (in->nsplits > 0) {
            size_t want = (size_t)in->splits[i++ % in->nsplits] * 13 + 1;
            n = n < want ? n : want;
        }
        size_t got = on_body((char *)in->body + off, 1, n, &r);
        if (got != n) {
            if (got != CURL_WRITEFUNC_ERROR)
                FUZZ_FAIL("on_body returned %zu for %zu bytes", got, n);
            stopped = 1;
            break;
        }
        off += n;
    }
    if (r.oom || r.too_large || r.head_too_large)
        FUZZ_FAIL("oom %d too_large %d head_too_large %d", r.oom, r.too_large, r.head_too_large);
    if (r.body.len > r.max_body || (r.body.len > 0 && memcmp(r.body.data, in->body, r.body.len)))
        FUZZ_FAIL("the body kept (%zu bytes, max %zu) is not the start of the one sent", r.body.len,
                  r.max_body);
    int cut = in->body_len > r.max_body;
    if (r.truncated != cut || stopped != cut || (cut && r.body.len != r.max_body) ||
        (!cut && r.body.len != in->body_len))
        FUZZ_FAIL("truncated %d stopped %d for %zu of %zu bytes (max %zu)", r.truncated, stopped,
                  r.body.len, in->body_len, r.max_body);
    push_response(L, &r);
    lua_pushlstring(L, r.body.data ? r.body.data : "", r.body.len);
    lua_setfield(L, -2, "body");
    free(r.body.data);
    free(r.head.data);
    return 1;
}

static const char CHECK[] =
    "local function fail(fmt, ...) error('FUZZ FINDING: ' .. string.format(fmt, ...), 0) end\n"
    "local clock, requests = 0, {}\n"
    "package.loaded['kubelua.core'] = {\n"
    "  monotime = function() clock = clock + 0.001; return clock end }\n"
    "package.loaded['kubelua.probe.core'] = {}\n"
    "local fake = ...\n"
    "package.loaded['kubelua.http.core'] = { request = function(req)\n"
    "  requests[#requests + 1] = req.url\n"
    "  local resp = fake(req)\n"
    "  for k, v in pairs(resp.headers) do\n"
    "    if type(k) ~= 'string' or k:find('[%u:\\n]') or k == '' or type(v) ~= 'string'\n"
    "      or v:find('\\n', 1, true) then\n"
    "      fail('bad header %q = %q', tostring(k), tostring(v))\n"
    "    end\n"
    "  end\n"
    "  return resp\n"
    "end }\n"
    "local probe = require 'kubelua.probe'\n"
    "local MODES = { 'local', 'all', 'none', 'local' }\n"
    "return function(flags, status)\n"
    "  local bit = function(n) return math.floor(flags / 2 ^ n) % 2 == 1 end\n"
    "  local o = { url = 'http://127.0.0.1:8080/app/healthz?x=1', timeout = 5,\n"
    "    redirects = MODES[flags % 4 + 1] }\n"
    "  if bit(2) then\n"
    "    o.body_match, o.body_not_match = 'ok', '^%s*error'\n"
    "    o.header_match = { ['Content-Type'] = 'json' }\n"
    "  end\n"
    "  if bit(3) then o.valid_status = { 200, 204, 404 } end\n"
    "  if bit(4) then o.max_body = 64 end\n"
    "  if bit(5) then\n"
    "    o.method, o.body, o.headers = 'POST', '{}', { Host = 'app.local' }\n"
    "  end\n"
    "  local ok, result, out, details = pcall(probe.http, o)\n"
    "  if not ok then fail('probe.http threw: %s', tostring(result)) end\n"
    "  if type(out) ~= 'string' or type(details) ~= 'table' then\n"
    "    fail('output %s, details %s', type(out), type(details))\n"
    "  end\n"
    "  if o.redirects == 'none' and #requests ~= 1 then fail('%d requests', #requests) end\n"
    "  if #requests > probe.MAX_REDIRECTS then fail('%d requests', #requests) end\n"
    "  for _, u in ipairs(requests) do\n"
    "    local s, h = probe.split_url(u)\n"
    "    if s ~= 'http' and s ~= 'https' then fail('requested %q', u) end\n"
    "    if o.redirects == 'local' and h ~= '127.0.0.1' then fail('left the host: %q', u) end\n"
    "  end\n"
    "  local max = o.max_body or probe.MAX_BODY\n"
    "  local failed = 'HTTP probe failed with statuscode: ' .. status\n"
    "  if details.code == 'REDIRECTS' then\n"
    "    if result ~= 'failure' or #requests ~= probe.MAX_REDIRECTS then\n"
    "      fail('redirect limit: %s after %d requests', result, #requests)\n"
    "    end\n"
    "  elseif details.status ~= status then\n"
    "    fail('details.status %s for %d', tostring(details.status), status)\n"
    "  elseif result == 'success' then\n"
    "    if o.valid_status and status ~= 200 and status ~= 204 and status ~= 404\n"
    "      or not o.valid_status and (status < 200 or status > 299) then\n"
    "      fail('success for %d', status)\n"
    "    end\n"
    "    if #out > max then fail('output of %d bytes', #out) end\n"
    "  elseif result == 'warning' then\n"
    "    if o.valid_status or status < 300 or status > 399 then fail('warning for %d', status) "
    "end\n"
    "    if out:sub(1, 43) ~= 'Probe terminated redirects, Response body: ' then\n"
    "      fail('warning output %q', out)\n"
    "    end\n"
    "  elseif result == 'failure' then\n"
    "    local by_status = o.valid_status and status ~= 200 and status ~= 204 and status ~= 404\n"
    "      or not o.valid_status and (status < 200 or status > 399)\n"
    "    if by_status ~= (out == failed) or not by_status and not out:find('^HTTP probe failed: "
    "')\n"
    "      then fail('failure for %d: %q', status, out)\n"
    "    end\n"
    "  else\n"
    "    fail('result %s', tostring(result))\n"
    "  end\n"
    "end\n";

static int run_input(lua_State *L)
{
    input *in = lua_touserdata(L, 1);
    lua_settop(L, 0);
    fuzz_push_check(L, CHECK, sizeof CHECK - 1, "=fuzz.http_probe");
    lua_pushlightuserdata(L, in);
    lua_pushcclosure(L, fake_request, 1);
    lua_call(L, 1, 1);
    lua_pushinteger(L, in->flags);
    lua_pushinteger(L, in->status);
    lua_call(L, 2, 0);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    input in = {.data = data, .size = size, .flags = data[0]};
    in.status = (data[1] << 8 | data[2]) % 1000;
    in.nsplits = data[3];
    if (4 + in.nsplits > size)
        in.nsplits = size - 4;
    in.splits = data + 4;
    const char *rest = (const char *)data + 4 + in.nsplits;
    size_t rest_len = size - 4 - in.nsplits;
    in.head = rest;
    in.head_len = head_end(rest, rest_len);
    in.body = rest + in.head_len;
    in.body_len = rest_len - in.head_len;

    lua_State *L = fuzz_new_state();
    fuzz_lua_coverage(L);
    if (lua_cpcall(L, run_input, &in) != 0) {
        const char *msg = lua_tostring(L, -1);
        if (msg == NULL || strstr(msg, "not enough memory") == NULL)
            FUZZ_FAIL("http_probe: %s", msg ? msg : "(not a string)");
    }
    lua_close(L);
    return 0;
}

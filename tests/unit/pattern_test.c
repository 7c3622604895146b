/* pattern_test.c: lua/pattern.c against Lua's own string library.
 *
 * The counted matcher must be the same language as Lua 5.4's patterns:
 * this runs string.find, match, gmatch and gsub of both on the same
 * subjects and patterns (hand-picked ones, then random ones built from the
 * pieces patterns are made of, errors included) and compares every result
 * value and error message.  Then the budget: with a budget in place, a
 * quadratic pattern on a 60 KB subject stops with the budget's error. */
#include "lua/internal.h"

#include "check.h"

#include <lualib.h>
#include <stdlib.h>
#include <time.h>

/* orig, mine: tables of find, match, gmatch, gsub; seed, rounds.  Returns
 * the number of cases compared; raises with the first difference. */
static const char compare_chunk[] =
    "local orig, mine, seed, rounds = ...\n"
    "local P = { 'a', 'b', 'x', ' ', '(', ')', '()', '%', '%%', '[', ']', '^', '$', '*',\n"
    "  '+', '-', '?', '.', '%a', '%d', '%s', '%w', '%A', '%S', '%b()', '%bxa', '%f[%w]',\n"
    "  '%f[%W]', '%f', '%1', '%2', '[^a]', '[a-c]', '[b-x]', '[a-]', '[-a]', '[%a_]', '[]]',\n"
    "  '[^]]', '[^%s]', '%.', '%b', '%u', '%l', '%p', '%x', '%c', '%g', '%z' }\n"
    "local S = { 'a', 'b', 'c', 'x', '(', ')', ' ', '1', '-', ']', '%', '\\0', 'B', '_', 'ab',\n"
    "  '\\n', 'F' }\n"
    "local R = { '<%0>', '%1', '%2-%1', '%%', '%', 'x%', '%z', '' }\n"
    "local state = seed\n"
    "local function rnd(n)\n"
    "  state = (state * 1103515245 + 12345) % 2147483648\n"
    "  return state // 65536 % n + 1\n"
    "end\n"
    "local function gen(alpha, maxlen)\n"
    "  local t = {}\n"
    "  for _ = 1, rnd(maxlen) - 1 do t[#t + 1] = alpha[rnd(#alpha)] end\n"
    "  return table.concat(t)\n"
    "end\n"
    "local function pack(...) return { n = select('#', ...), ... } end\n"
    "local function show(t)\n"
    "  local out = {}\n"
    "  for i = 1, t.n do out[i] = string.format('%q', t[i]) end\n"
    "  return table.concat(out, ', ')\n"
    "end\n"
    "local function same(a, b)\n"
    "  if a.n ~= b.n then return false end\n"
    "  for i = 1, a.n do\n"
    "    if a[i] ~= b[i] and not (a[i] ~= a[i] and b[i] ~= b[i]) then return false end\n"
    "  end\n"
    "  return true\n"
    "end\n"
    "local function all_matches(f, s, p, init)\n"
    "  local out = { n = 0 }\n"
    "  local it = f(s, p, init)\n"
    "  for _ = 1, 50 do\n"
    "    local r = pack(it())\n"
    "    if r[1] == nil then break end\n"
    "    for i = 1, r.n do out.n = out.n + 1; out[out.n] = r[i] end\n"
    "    out.n = out.n + 1; out[out.n] = '|'\n"
    "  end\n"
    "  return out\n"
    "end\n"
    "local count = 0\n"
    "local function compare(name, ...)\n"
    "  local a = pack(pcall(orig[name], ...))\n"
    "  local b = pack(pcall(mine[name], ...))\n"
    "  if name == 'gmatch' then\n"
    "    a = pack(pcall(all_matches, orig.gmatch, ...))\n"
    "    b = pack(pcall(all_matches, mine.gmatch, ...))\n"
    "    if a[1] and b[1] then a, b = a[2], b[2] end\n"
    "  end\n"
    "  count = count + 1\n"
    "  if not same(a, b) then\n"
    "    error(string.format('%s(%s): Lua gives %s, pattern.c %s', name, show(pack(...)),\n"
    "      show(a), show(b)), 0)\n"
    "  end\n"
    "end\n"
    "local function each(s, p, init, repl)\n"
    "  compare('find', s, p)\n"
    "  compare('find', s, p, init)\n"
    "  compare('find', s, p, init, true)\n"
    "  compare('match', s, p)\n"
    "  compare('match', s, p, init)\n"
    "  compare('gmatch', s, p)\n"
    "  compare('gmatch', s, p, init)\n"
    "  compare('gsub', s, p, repl)\n"
    "  compare('gsub', s, p, repl, 2)\n"
    "  compare('gsub', s, p, function(...) return select('#', ...) .. tostring((...)) end)\n"
    "  compare('gsub', s, p, function() return false end)\n"
    "  compare('gsub', s, p, { a = 'A', x = 1, [1] = 'one' })\n"
    "  compare('gsub', s, p, 7)\n"
    "end\n"
    "local fixed = {\n"
    "  { 'hello world', 'o w' }, { 'hello world', '(o)%s(w)' }, { 'hello', '^(h)(.-)()$' },\n"
    "  { 'a=1, b=2', '(%w+)=(%w+)' }, { 'abc', '' }, { 'f(a(b)c)d', '%b()' },\n"
    "  { 'THE (quick) fox', '%f[%a]%a+%f[%A]' }, { 'aaa', 'a-b' }, { 'aaab', 'a*b' },\n"
    "  { 'xyz', '^$' }, { '', '^$' }, { '', '.-' }, { 'a.b', '%.' }, { 'a]b', '[]]' },\n"
    "  { 'key = value', '^(%w+)%s*=%s*(%w+)$' }, { 'abab', '(ab)%1' }, { 'x', '(()' },\n"
    "  { 'x', 'x)' }, { 'x', '%' }, { 'x', '[x' }, { 'x', '%b' }, { 'x', '%fx' },\n"
    "  { 'aaa', '(a)(a)(a)%4' }, { ' trim me  ', '^%s*(.-)%s*$' }, { 'a,b,,c', '([^,]*)' },\n"
    "}\n"
    "for _, f in ipairs(fixed) do\n"
    "  for init = -4, 6 do each(f[1], f[2], init, '<%0>') end\n"
    "end\n"
    "for _ = 1, rounds do\n"
    "  each(gen(S, 12), gen(P, 7), rnd(20) - 8, R[rnd(#R)])\n"
    "end\n"
    "return count\n";

static void push_functions(lua_State *L)
{
    lua_createtable(L, 0, 4);
    lua_getglobal(L, "string");
    static const char *const names[] = {"find", "match", "gmatch", "gsub"};
    for (int i = 0; i < 4; i++) {
        lua_getfield(L, -1, names[i]);
        lua_setfield(L, -3, names[i]);
    }
    lua_pop(L, 1);
}

static lua_State *new_state(lx_app *app)
{
    lua_State *L = luaL_newstate();
    *(lx_app **)lua_getextraspace(L) = app;
    luaL_openlibs(L);
    return L;
}

static void test_same_as_lua(unsigned seed, int rounds)
{
    lua_State *L = new_state(NULL);
    push_functions(L); /* Lua's */
    int orig = lua_gettop(L);
    lx_open_patterns(L);
    push_functions(L); /* pattern.c's */
    int mine = lua_gettop(L);
    CHECK(luaL_loadbuffer(L, compare_chunk, sizeof(compare_chunk) - 1, "=compare") == LUA_OK);
    lua_pushvalue(L, orig);
    lua_pushvalue(L, mine);
    lua_pushinteger(L, seed);
    lua_pushinteger(L, rounds);
    int st = lua_pcall(L, 4, 1, 0);
    if (st != LUA_OK) fprintf(stderr, "seed %u: %s\n", seed, lua_tostring(L, -1));
    CHECK(st == LUA_OK);
    if (st == LUA_OK) CHECK(lua_tointeger(L, -1) > rounds);
    lua_close(L);
}

/* A quadratic pattern on 60 KB, under a budget of 10 million: stopped
 * with the budget's error, in milliseconds (Lua's own: seconds). */
static void test_budget_stops_quadratic(void)
{
    lx_app app;
    memset(&app, 0, sizeof(app));
    lx_budget b;
    memset(&b, 0, sizeof(b));
    lx_budget_arm(&b, 10000000, 0);
    lua_State *L = new_state(&app);
    app.L = L;
    lx_open_patterns(L);
    static const char chunk[] = "local body = string.rep('a', 60000)\n"
                                "return body:find('.-b')\n";
    CHECK(luaL_loadbuffer(L, chunk, sizeof(chunk) - 1, "=quadratic") == LUA_OK);
    app.running = &b;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int st = lua_pcall(L, 0, 1, 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    app.running = NULL;
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    CHECK(st == LUA_ERRRUN);
    CHECK(b.exceeded == LX_OVER_INSTRUCTIONS);
    CHECK(strstr(lua_tostring(L, -1), "instruction budget exceeded") != NULL);
    CHECK(took < 2.0);
    fprintf(stderr, "quadratic find on 60 KB stopped after %.3f s\n", took);
    lua_close(L);
}

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 3000;
    for (unsigned seed = 1; seed <= 8; seed++)
        test_same_as_lua(seed, rounds);
    test_budget_stops_quadratic();
    return CHECK_DONE();
}

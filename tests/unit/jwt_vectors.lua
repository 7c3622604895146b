-- jwt_vectors.lua: the published test vectors of JWS and JWT, checked by
-- `sluice --check` (the script's top level runs them; an error fails the
-- load, exit 1, with this file's line).  The tokens and keys are the RFCs'
-- own, byte for byte:
--   RFC 7515 appendix A.1 (HS256), A.2 (RS256), A.3 (ES256), A.4 (ES512);
--   RFC 7520 section 4.4 (HS256 with a kid; key of section 3.5);
--   RFC 8037 appendix A.4 (EdDSA, Ed25519).
-- The RFC 7515 tokens carry exp 1300819380 (March 2011): they are checked
-- at opts.now = 1300819000, and found expired at today's time.
local sluice = require "sluice"
local jwt, jws = sluice.jwt, sluice.jws

local checks = 0
local function eq(got, want, what)
  checks = checks + 1
  if got ~= want then
    error(string.format("%s: got %s, want %s", what, tostring(got), tostring(want)), 2)
  end
end

local RFC_NOW = { now = 1300819000 }
local RFC7515_PAYLOAD = '{"iss":"joe",\r\n "exp":1300819380,\r\n "http://example.com/is_root":true}'

-- RFC 7515 A.1: HS256
local A1_KEY = '{"kty":"oct",\r\n "k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"\r\n}'
local A1 = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9" ..
  ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ" ..
  ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"

-- RFC 7515 A.2: RS256 (the public part of the A.2 key)
local A2_KEY = {
  kty = "RSA",
  n = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddx" ..
      "HmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMs" ..
      "D1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSH" ..
      "SXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdV" ..
      "MTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8" ..
      "NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ",
  e = "AQAB",
}
local A2 = "eyJhbGciOiJSUzI1NiJ9" ..
  ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt" ..
  "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ" ..
  ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7" ..
  "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4" ..
  "BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K" ..
  "0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv" ..
  "hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB" ..
  "p0igcN_IoypGlUPQGe77Rw"

-- RFC 7515 A.3: ES256
local A3_KEY = '{"kty":"EC","crv":"P-256",' ..
  '"x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",' ..
  '"y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}'
local A3 = "eyJhbGciOiJFUzI1NiJ9" ..
  ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFt" ..
  "cGxlLmNvbS9pc19yb290Ijp0cnVlfQ" ..
  ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSA" ..
  "pmWQxfKTUJqPP3-Kg6NU1Q"

-- RFC 7515 A.4: ES512 (the payload is the text "Payload", not claims)
local A4_KEY = { kty = "EC", crv = "P-521",
  x = "AekpBQ8ST8a8VcfVOTNl353vSrDCLLJXmPk06wTjxrrjcBpXp5EOnYG_NjFZ6OvLFV1jSfS9tsz4qUxcWceqwQGk",
  y = "ADSmRA43Z1DSNx_RvcLI87cdL07l6jQyyBXMoxVg_l2Th-x3S1WDhjDly79ajL4Kkd0AZMaZmh9ubmf63e3kyMj2" }
local A4 = "eyJhbGciOiJFUzUxMiJ9.UGF5bG9hZA." ..
  "AdwMgeerwtHoh-l192l60hp9wAHZFVJbLfD_UxMi70cwnZOYaRI1bKPWROc-mZZq" ..
  "wqT2SI-KGDKB34XO0aw_7XdtAG8GaSwFKdCAPZgoXD2YBJZCPEX3xKpRwcdOO8Kp" ..
  "EHwJjyqOgzDO7iKvU8vcnwNrmxYbSW9ERBXukOXolLzeO_Jn"

-- RFC 8037 A.4: EdDSA over "Example of Ed25519 signing"
local ED_KEY = { kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }
local ED = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc." ..
  "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"

-- RFC 7520 4.4: HS256 with a kid, under the symmetric key of 3.5, in a
-- JWK Set beside a key of another kid.
local C35_SET = { keys = {
  { kty = "oct", kid = "other", k = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow" },
  { kty = "oct", kid = "018c0ae5-4d9b-471b-bfd6-eef314bc7037", use = "sig", alg = "HS256",
    k = "hJtXIZ2uSN5kbQfbtTNWbpdmhkV8FJG-Onbc6mxCcYg" },
} }
local C44 = "eyJhbGciOiJIUzI1NiIsImtpZCI6IjAxOGMwYWU1LTRkOWItNDcxYi1iZmQ2LWVlZjMxNGJjNzAzNyJ9" ..
  ".SXTigJlzIGEgZGFuZ2Vyb3VzIGJ1c2luZXNzLCBGcm9kbywgZ29pbmcgb3V0IH" ..
  "lvdXIgZG9vci4gWW91IHN0ZXAgb250byB0aGUgcm9hZCwgYW5kIGlmIHlvdSBk" ..
  "b24ndCBrZWVwIHlvdXIgZmVldCwgdGhlcmXigJlzIG5vIGtub3dpbmcgd2hlcm" ..
  "UgeW91IG1pZ2h0IGJlIHN3ZXB0IG9mZiB0by4" ..
  ".s0h6KThzkfBBBkLspW1h84VsJZFTsPPqMDA7g1Md7p0"

-- A flipped character in the signature's middle (the last one may carry
-- only pad bits).
local function tamper(token)
  local i = #token - 10
  local c = token:sub(i, i)
  return token:sub(1, i - 1) .. (c == "A" and "B" or "A") .. token:sub(i + 1)
end

for _, v in ipairs{
  { "RFC 7515 A.1 HS256", A1, A1_KEY },
  { "RFC 7515 A.2 RS256", A2, A2_KEY },
  { "RFC 7515 A.3 ES256", A3, A3_KEY },
} do
  local name, token, key = v[1], v[2], v[3]
  local claims, err = jwt.verify(token, key, RFC_NOW)
  eq(err, nil, name)
  eq(claims.iss, "joe", name .. " iss")
  eq(claims.exp, 1300819380, name .. " exp")
  eq(claims["http://example.com/is_root"], true, name .. " is_root")
  local payload, header = jws.verify(token, key, RFC_NOW)
  eq(payload, RFC7515_PAYLOAD, name .. " payload")
  eq(header.alg, name:sub(-5), name .. " header")
  eq(select(2, jwt.verify(token, key)), "token expired", name .. " today")
  eq(select(2, jwt.verify(token, key, { now = 1300819380 })), "token expired", name .. " at exp")
  eq(select(2, jwt.verify(token, key, { now = 1300819400, leeway = 60 })), nil, name .. " leeway")
  eq(select(2, jwt.verify(tamper(token), key, RFC_NOW)), "bad signature", name .. " tampered")
  -- A parsed key set serves the same.
  local ks = assert(jwt.keys(key))
  eq(#ks, 1, name .. " key set")
  eq(select(2, jwt.verify(token, ks, RFC_NOW)), nil, name .. " key set verify")
end

eq(jws.verify(A4, A4_KEY), "Payload", "RFC 7515 A.4 ES512")
eq(select(2, jwt.verify(A4, A4_KEY)), "malformed token", "A.4 is no JWT")
eq(jws.verify(ED, ED_KEY), "Example of Ed25519 signing", "RFC 8037 A.4 EdDSA")
eq(select(2, jws.verify(tamper(ED), ED_KEY)), "bad signature", "RFC 8037 A.4 tampered")
local c44, h44 = jws.verify(C44, C35_SET)
eq(c44:sub(1, 27), "It\226\128\153s a dangerous business", "RFC 7520 4.4 HS256 with kid")
eq(h44.kid, "018c0ae5-4d9b-471b-bfd6-eef314bc7037", "RFC 7520 4.4 kid")

-- Algorithm confusion and keys of the wrong kind: each token meets only
-- keys its algorithm names.
eq(select(2, jwt.verify(A1, A2_KEY, RFC_NOW)), "no key for this algorithm", "HS256 with an RSA key")
eq(select(2, jwt.verify(A2, A1_KEY, RFC_NOW)), "no key for this algorithm", "RS256 with a secret")
eq(select(2, jwt.verify(A3, A4_KEY, RFC_NOW)), "no key for this algorithm", "ES256 with a P-521 key")
eq(select(2, jws.verify(A4, A3_KEY)), "no key for this algorithm", "ES512 with a P-256 key")
eq(select(2, jws.verify(ED, A3_KEY)), "no key for this algorithm", "EdDSA with an EC key")
-- A JWK that names another algorithm is not used for this one.
eq(select(2, jwt.verify(A1, { kty = "oct", alg = "HS512",
  k = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow" },
  RFC_NOW)), "no key for this algorithm", "JWK alg")
-- An unknown kid in a set of kids.
local other = { keys = { C35_SET.keys[1] } }
local _, why, unknown = jws.verify(C44, other)
eq(why, "unknown kid", "unknown kid")
-- opts.algorithms restricts.
eq(select(2, jwt.verify(A2, A2_KEY, { now = 1300819000, algorithms = { "ES256" } })),
   "algorithm not allowed", "algorithms")
eq(select(2, jwt.verify(A2, A2_KEY, { now = 1300819000, algorithms = { "RS256" } })), nil,
   "algorithms allow")

-- alg "none" and its spellings, unsigned or not.
local function b64u(s)
  local b = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  return ((s:gsub(".", function(c)
    local r, byte = "", c:byte()
    for i = 8, 1, -1 do r = r .. (byte % 2 ^ i - byte % 2 ^ (i - 1) > 0 and "1" or "0") end
    return r
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return b:sub(c + 1, c + 1)
  end))
end
eq(b64u('{"typ":"JWT",\r\n "alg":"HS256"}'), "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9", "b64u")
for _, alg in ipairs{ "none", "None", "NONE", "hs256", "" } do
  local t = b64u('{"alg":"' .. alg .. '"}') .. "." .. b64u('{"sub":"root"}')
  eq(select(2, jwt.verify(t .. ".", A1_KEY)), "unsupported algorithm", "alg " .. alg)
  eq(select(2, jwt.verify(t .. "." .. b64u("x"), A1_KEY)), "unsupported algorithm", "alg " .. alg .. " signed")
end
-- A critical header we do not understand is refused (RFC 7515 4.1.11).
do
  local key = "secret"
  local signing = b64u('{"alg":"HS256","crit":["exp"],"exp":1}') .. "." .. b64u('{"sub":"a"}')
  local t = signing .. "." .. b64u(sluice.hmac_sha256(key, signing))
  eq(select(2, jwt.verify(t, key)), "unsupported critical header", "crit")
end

-- Claims: aud, iss, nbf, iat with a leeway (HS256 under a plain secret).
local function hs256(claims, key)
  local signing = b64u('{"alg":"HS256","typ":"JWT"}') .. "." .. b64u(sluice.json.encode(claims))
  return signing .. "." .. b64u(sluice.hmac_sha256(key, signing))
end
local K, NOW = "a secret of some length", 2000000000
local function why(claims, opts)
  opts = opts or {}
  opts.now = opts.now or NOW
  return select(2, jwt.verify(hs256(claims, K), K, opts))
end
eq(why({ sub = "a" }), nil, "plain")
eq(why({ nbf = NOW + 10 }), "token not yet valid", "nbf")
eq(why({ nbf = NOW + 10 }, { leeway = 30 }), nil, "nbf leeway")
eq(why({ iat = NOW + 10 }), "token issued in the future", "iat")
eq(why({ iat = NOW - 10 }), nil, "iat past")
eq(why({ exp = "soon" }), "token expired", "exp not a number")
eq(why({ aud = "svc" }), "token has an audience (opts.audience not given)", "aud without audience")
eq(why({ aud = "svc" }, { audience = "svc" }), nil, "aud")
eq(why({ aud = { "x", "svc" } }, { audience = { "svc", "y" } }), nil, "aud list")
eq(why({ aud = "other" }, { audience = "svc" }), "wrong audience", "aud other")
eq(why({ sub = "a" }, { audience = "svc" }), "wrong audience", "aud missing")
eq(why({ iss = "me" }, { issuer = "me" }), nil, "iss")
eq(why({ iss = "you" }, { issuer = { "me", "them" } }), "wrong issuer", "iss other")
eq(why({}, { issuer = "me" }), "wrong issuer", "iss missing")

-- Malformed input is a failure, never an error.
for _, t in ipairs{ "", "abc", "a.b", A1 .. ".x", "!!!.@@@.###", b64u("not json") .. ".e30.", ("a"):rep(20000) } do
  local c, e = jwt.verify(t, A1_KEY)
  checks = checks + 1
  if c ~= nil or (e ~= "malformed token" and e ~= "token too long") then
    error("malformed " .. t:sub(1, 20) .. ": " .. tostring(e))
  end
end
-- Keys that are no keys: nil and a reason.
for _, k in ipairs{ "", "{not json", { kty = "RSA", n = "AQAB" }, { kty = "EC", crv = "P-256", x = "AA", y = "AA" },
                     { keys = {} }, "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n" } do
  local ks, e = jwt.keys(k)
  eq(ks, nil, "bad key " .. tostring(k))
  checks = checks + 1
  assert(type(e) == "string")
end
-- Misuse raises.
eq(pcall(jwt.verify, nil, "k"), false, "token nil")
eq(pcall(jwt.verify, A1, nil), false, "keys nil")
eq(pcall(jwt.verify, A1, A1_KEY, { leway = 1 }), false, "unknown option")

-- Hostile input: random tokens and keys built from pieces of valid ones and
-- garbage never raise, only fail (the ASan build runs this too).
do
  math.randomseed(29)
  local pieces = { A1, A2, A3, A4, ED, C44, "", ".", "..", "eyJ", "e30", "bnVsbA", "W10",
                   b64u('{"alg":"HS256","kid":1}'), b64u('{"alg":"RS256","kid":"k"}'),
                   b64u('{"alg":["HS256"]}'), b64u('{"alg":"EdDSA","crit":[]}'),
                   b64u('{"exp":"x","nbf":{},"iat":[],"aud":7,"iss":false}'),
                   b64u(("["):rep(300)), b64u('"' .. ("\\u0000"):rep(10) .. '"') }
  local keysets = { A1_KEY, A2_KEY, A3_KEY, A4_KEY, ED_KEY, C35_SET, "k", { keys = { 1, "x", {} } },
                    { kty = "RSA", n = "", e = "" }, { kty = "EC", crv = "P-256", x = ("A"):rep(43), y = ("A"):rep(43) },
                    { kty = "OKP", crv = "Ed25519", x = "AA" }, { kty = "oct", k = "!!" } }
  local function piece()
    local r = math.random(4)
    if r == 1 then
      local t = {}
      for i = 1, math.random(0, 40) do t[i] = string.char(math.random(0, 255)) end
      return table.concat(t)
    elseif r == 2 then
      local p = pieces[math.random(#pieces)]
      local a = math.random(1, #p + 1)
      return p:sub(a, a + math.random(0, 80))
    end
    return pieces[math.random(#pieces)]
  end
  for _ = 1, 20000 do
    local token = piece() .. (math.random(3) > 1 and "." or "") .. piece() .. "." .. piece()
    local keys = keysets[math.random(#keysets)]
    for _, fn in ipairs{ jwt.verify, jws.verify } do
      local ok, a, b = pcall(fn, token, keys, { now = 1300819000, leeway = math.random(0, 5) })
      checks = checks + 1
      if not ok then error("raised on hostile input: " .. tostring(a)) end
      if a == nil and type(b) ~= "string" then error("failure without a reason") end
    end
  end
end

print(string.format("jwt_vectors: %d checks passed", checks))

-- bench/post.lua: wrk script: POST a 64-byte message per request.
wrk.method = "POST"
wrk.body = string.rep("m", 64)
wrk.headers["Content-Type"] = "application/octet-stream"

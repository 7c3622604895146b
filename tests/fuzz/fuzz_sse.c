/* fuzz_sse.c: libFuzzer target for the SSE codec (and the base64 decoder,
 * whose strictness has the same kind of round-trip property).
 *
 * Properties checked, each with abort() on violation:
 *   - sse_parse survives any stream (ASan/UBSan watch it).
 *   - For any id/event/data cut from the input: sse_event_size and
 *     sse_event_encode agree, both say SL_EFIELD exactly when id or event
 *     holds CR/LF/NUL, and otherwise parsing the output dispatches exactly
 *     one event with that id, that type ("message" when none) and the data
 *     with CRLF/CR turned into LF.
 *   - A heartbeat and a retry hint before the event change nothing.
 *   - b64_decode accepts only canonical text: re-encoding what it accepted
 *     gives the input back.
 *
 * Input layout: byte 0 = id length, byte 1 = event length (high bit set:
 * event NULL), then the id, the event, the data.
 *
 * Build and run:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -I. \
 *     tests/fuzz/fuzz_sse.c core/sse.c core/b64.c -o fuzz_sse
 *   ./fuzz_sse -max_total_time=60 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/b64.h"
#include "core/sse.h"

struct expect {
    const char *id, *type, *data;
    size_t id_len, type_len, data_len;
    int seen, retry_seen;
};

static int on_event(void *ud, const struct sse_parsed *ev)
{
    struct expect *x = ud;
    x->seen++;
    if (ev->id_len != x->id_len || memcmp(ev->id, x->id, x->id_len) != 0 ||
        ev->type_len != x->type_len || memcmp(ev->type, x->type, x->type_len) != 0 ||
        ev->data_len != x->data_len || memcmp(ev->data, x->data, x->data_len) != 0)
        abort();
    return 0;
}

static int on_retry(void *ud, uint64_t ms)
{
    struct expect *x = ud;
    x->retry_seen++;
    return ms == 1234 ? 0 : (abort(), 0);
}

static int count_any(void *ud, const struct sse_parsed *ev)
{
    (void)ev;
    (*(size_t *)ud)++;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size)
{
    /* 1. The parser on raw bytes. */
    char *scratch = malloc(size ? size : 1);
    if (!scratch) return 0;
    size_t count = 0;
    struct sse_parse_cb any = {count_any, NULL, NULL};
    if (sse_parse((const char *)in, size, scratch, size, &any, &count) != 0) abort();
    free(scratch);

    /* 2. Base64: accepted means canonical. */
    uint8_t *dec = malloc(b64_decoded_max(size) + 1);
    char *reenc = malloc(size + 4);
    if (dec && reenc) {
        ssize_t d = b64_decode(dec, b64_decoded_max(size), (const char *)in, size);
        if (d >= 0 && (b64_encode(reenc, size + 4, dec, (size_t)d) != (ssize_t)size ||
                       memcmp(reenc, in, size) != 0))
            abort();
    }
    free(dec);
    free(reenc);

    /* 3. Encoder -> parser round trip. */
    if (size < 2) return 0;
    size_t il = in[0] & 0x3f, el = in[1] & 0x3f;
    int ev_null = in[1] & 0x80;
    const char *p = (const char *)in + 2;
    size_t rest = size - 2;
    if (il > rest) il = rest;
    const char *id = p;
    p += il, rest -= il;
    if (el > rest) el = rest;
    const char *event = ev_null ? NULL : p;
    p += el, rest -= el;
    const char *data = p;
    size_t dl = rest;

    ssize_t n = sse_event_size(id, il, event, el, data, dl);
    int valid = sse_field_valid(id, il) && (ev_null || sse_field_valid(event, el));
    if (!valid) {
        if (n != SL_EFIELD || sse_event_encode(NULL, 0, id, il, event, el, data, dl) != SL_EFIELD)
            abort();
        return 0;
    }
    if (n <= 0) abort();
    size_t pre = 3 + sse_retry_size(1234); /* ":\n\n" heartbeat + retry hint */
    size_t total = pre + (size_t)n;
    char *buf = malloc(total), *scr = malloc(total), *norm = malloc(dl ? dl : 1);
    if (!buf || !scr || !norm) abort();
    if (sse_comment_encode(buf, 3, NULL, 0) != 3 ||
        sse_retry_encode(buf + 3, total - 3, 1234) != (ssize_t)sse_retry_size(1234))
        abort();
    /* One byte short must fail, the exact size must succeed. */
    if (sse_event_encode(buf + pre, (size_t)n - 1, id, il, event, el, data, dl) != SL_ESPACE)
        abort();
    if (sse_event_encode(buf + pre, (size_t)n, id, il, event, el, data, dl) != n) abort();

    size_t nl = 0;
    for (size_t i = 0; i < dl; i++) {
        if (data[i] == '\r') {
            norm[nl++] = '\n';
            if (i + 1 < dl && data[i + 1] == '\n') i++;
        } else {
            norm[nl++] = data[i];
        }
    }
    int named = !ev_null && el > 0;
    struct expect x = {
        .id = id,
        .id_len = il,
        .type = named ? event : "message",
        .type_len = named ? el : 7,
        .data = norm,
        .data_len = nl,
    };
    struct sse_parse_cb cb = {on_event, on_retry, NULL};
    if (sse_parse(buf, total, scr, total, &cb, &x) != 0 || x.seen != 1 || x.retry_seen != 1)
        abort();
    free(buf);
    free(scr);
    free(norm);
    return 0;
}

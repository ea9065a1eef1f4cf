/*
 * protocol.c: paths, the value grammar, the decision record and the device
 * model's state machine, free of I/O (see protocol.h).
 */
#include "protocol.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define DECIMAL_MAX_BYTES 20
#define SHOW_BYTES 24
#define SHOW_MAX (SHOW_BYTES * 4 + 8)

static const char *const DECISION_KEYS[XSP_DECISION_KEYS] = {
    "version", "state", "origin", "request-id",
    "base-pages", "granted-pages", "max-pages", "reason",
};

static const char *const REQUEST_KEYS[XSP_REQUEST_KEYS] = {
    "version", "pages", "reason", "request-id",
};

static const char *const STATES[] = {"applying", "granted", "rejected"};
static const char *const ORIGINS[] = {"request", "restore"};

/* The rejection codes of protocol version 1, in check order. */
static const char *const KNOWN_CODES[] = {
    "bad-version", "bad-value", "wrong-writer", "no-such-domain", "dying",
    "privileged", "over-domain-cap", "over-host-budget", "rate-limited",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

const char *xsp_decision_key(enum xsp_decision_key key)
{
    return DECISION_KEYS[key];
}

const char *xsp_request_key(enum xsp_request_key key)
{
    return REQUEST_KEYS[key];
}

void xsp_domain_dir(char out[XSP_PATH_MAX], unsigned domid)
{
    snprintf(out, XSP_PATH_MAX, "/local/domain/%u", domid);
}

void xsp_request_dir(char out[XSP_PATH_MAX], unsigned dm_domid, unsigned domid)
{
    snprintf(out, XSP_PATH_MAX, "/local/domain/%u/device-model/%u/extra-pages",
             dm_domid, domid);
}

void xsp_decision_dir(char out[XSP_PATH_MAX], unsigned domid)
{
    snprintf(out, XSP_PATH_MAX, "/libxl/%u/extra-pages", domid);
}

void xsp_join(char out[XSP_PATH_MAX], const char *dir, const char *key)
{
    snprintf(out, XSP_PATH_MAX, "%s/%s", dir, key);
}

static void fail(char *err, size_t errlen, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void fail(char *err, size_t errlen, const char *path, const char *fmt, ...)
{
    if (errlen == 0)
        return;
    int used = snprintf(err, errlen, "%s: ", path);
    if (used < 0 || (size_t)used >= errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + used, errlen - (size_t)used, fmt, ap);
    va_end(ap);
}

void xsp_show(char *out, size_t outlen, struct xsp_raw raw)
{
    static const char hex[] = "0123456789abcdef";
    char buf[SHOW_MAX];
    size_t n = 0;
    size_t shown = raw.len < SHOW_BYTES ? raw.len : SHOW_BYTES;

    buf[n++] = '\'';
    for (size_t i = 0; i < shown; i++) {
        unsigned char c = (unsigned char)raw.value[i];
        if (c == '\\' || c == '\'') {
            buf[n++] = '\\';
            buf[n++] = (char)c;
        } else if (c >= 0x20 && c <= 0x7e) {
            buf[n++] = (char)c;
        } else {
            buf[n++] = '\\';
            buf[n++] = 'x';
            buf[n++] = hex[c >> 4];
            buf[n++] = hex[c & 0xf];
        }
    }
    buf[n++] = '\'';
    if (raw.len > SHOW_BYTES) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    snprintf(out, outlen, "%s", buf);
}

bool xsp_decimal(struct xsp_raw raw, const char *path, uint64_t lo, uint64_t hi,
                 uint64_t *out, char *err, size_t errlen)
{
    char shown[SHOW_MAX];
    uint64_t value = 0;
    bool overflow = false;

    xsp_show(shown, sizeof shown, raw);
    if (raw.len > DECIMAL_MAX_BYTES) {
        fail(err, errlen, path, "number longer than %d bytes: %s", DECIMAL_MAX_BYTES,
             shown);
        return false;
    }
    /* The grammar ^(0|[1-9][0-9]*)$ is checked on the bytes, before any
     * conversion (strtoull would take a sign, spaces, a 0x prefix). */
    bool canonical = raw.len > 0 && (raw.len == 1 || raw.value[0] != '0');
    for (size_t i = 0; canonical && i < raw.len; i++)
        canonical = raw.value[i] >= '0' && raw.value[i] <= '9';
    if (!canonical) {
        fail(err, errlen, path, "not a canonical decimal: %s", shown);
        return false;
    }
    for (size_t i = 0; i < raw.len; i++) {
        unsigned digit = (unsigned)(raw.value[i] - '0');
        if (value > (UINT64_MAX - digit) / 10)
            overflow = true;
        value = value * 10 + digit;
    }
    if (overflow || value < lo || value > hi) {
        fail(err, errlen, path, "%s outside [%" PRIu64 ", %" PRIu64 "]", shown, lo, hi);
        return false;
    }
    if (out != NULL)
        *out = value;
    return true;
}

bool xsproto_parse_decimal(const char *raw, size_t len, uint64_t lo, uint64_t hi,
                           uint64_t *out)
{
    return raw != NULL &&
           xsp_decimal((struct xsp_raw){raw, len}, "", lo, hi, out, NULL, 0);
}

bool xsp_text(struct xsp_raw raw, const char *path, size_t max_bytes, char *err,
              size_t errlen)
{
    char shown[SHOW_MAX];

    xsp_show(shown, sizeof shown, raw);
    if (raw.len > max_bytes) {
        fail(err, errlen, path, "longer than %zu bytes: %s", max_bytes, shown);
        return false;
    }
    for (size_t i = 0; i < raw.len; i++) {
        unsigned char c = (unsigned char)raw.value[i];
        if (c < 0x20 || c > 0x7e) {
            fail(err, errlen, path, "not printable ASCII: %s", shown);
            return false;
        }
    }
    return true;
}

bool xsproto_text_valid(const char *raw, size_t len, size_t max_bytes)
{
    return raw != NULL && xsp_text((struct xsp_raw){raw, len}, "", max_bytes, NULL, 0);
}

/* The index of raw among choices, or -1 with a message. */
static int choice(struct xsp_raw raw, const char *const *choices, size_t count,
                  const char *path, char *err, size_t errlen)
{
    char shown[SHOW_MAX];
    char allowed[64] = "";

    for (size_t i = 0; i < count; i++) {
        if (strlen(choices[i]) == raw.len && memcmp(choices[i], raw.value, raw.len) == 0)
            return (int)i;
        snprintf(allowed + strlen(allowed), sizeof allowed - strlen(allowed), "%s%s",
                 i ? ", " : "", choices[i]);
    }
    xsp_show(shown, sizeof shown, raw);
    fail(err, errlen, path, "%s is not one of: %s", shown, allowed);
    return -1;
}

bool xsp_rejection(const char *reason, char code[XSP_CODE_MAX + 1], const char **detail)
{
    const char *sep = strstr(reason, ": ");
    size_t len = sep ? (size_t)(sep - reason) : 0;

    if (len == 0 || len > XSP_CODE_MAX || reason[0] < 'a' || reason[0] > 'z')
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!((reason[i] >= 'a' && reason[i] <= 'z') || reason[i] == '-'))
            return false;
    }
    memcpy(code, reason, len);
    code[len] = '\0';
    *detail = sep + 2;
    return true;
}

bool xsp_code_known(const char *code)
{
    for (size_t i = 0; i < COUNT(KNOWN_CODES); i++) {
        if (strcmp(code, KNOWN_CODES[i]) == 0)
            return true;
    }
    return false;
}

/* The cross-field invariants of a record whose values all parsed; the message
 * on failure, NULL when it holds (records.DecisionRecord.__post_init__). */
static const char *broken_invariant(const struct xsproto_decision *d)
{
    char code[XSP_CODE_MAX + 1];
    const char *detail;

    if (d->state != XSPROTO_STATE_REJECTED) {
        if (d->base_pages + d->granted_pages != d->max_pages)
            return "max-pages must equal base-pages + granted-pages";
        if (d->reason[0] != '\0')
            return "reason must be empty unless state is rejected";
    } else if (!xsp_rejection(d->reason, code, &detail)) {
        return "a rejection's reason must be '<code>: <detail>'";
    }
    if (d->origin == XSPROTO_ORIGIN_RESTORE &&
        (d->request_id != 0 || d->state != XSPROTO_STATE_GRANTED))
        return "a restore origin needs request-id 0 and state granted";
    return NULL;
}

int xsp_parse_decision(const struct xsp_raw nodes[XSP_DECISION_KEYS], const char *where,
                       struct xsproto_decision *out, char *err, size_t errlen)
{
    char path[XSP_PATH_MAX];
    char shown[SHOW_MAX];
    uint64_t *pages[] = {&out->base_pages, &out->granted_pages, &out->max_pages};
    int index;
    bool any = false;

    for (int k = 0; k < XSP_DECISION_KEYS; k++)
        any = any || nodes[k].value != NULL;
    if (!any)
        return 0;
    memset(out, 0, sizeof *out);
    /* The version first: a record of another version is not read any further. */
    xsp_join(path, where, DECISION_KEYS[XSP_D_VERSION]);
    if (nodes[XSP_D_VERSION].value == NULL) {
        fail(err, errlen, path, "version missing, expected %d", XSPROTO_PROTOCOL_VERSION);
        return -1;
    }
    if (nodes[XSP_D_VERSION].len != 1 || nodes[XSP_D_VERSION].value[0] != '1') {
        xsp_show(shown, sizeof shown, nodes[XSP_D_VERSION]);
        fail(err, errlen, path, "version %s, expected %d", shown, XSPROTO_PROTOCOL_VERSION);
        return -1;
    }
    for (int k = 0; k < XSP_DECISION_KEYS; k++) {
        if (nodes[k].value == NULL) {
            xsp_join(path, where, DECISION_KEYS[k]);
            fail(err, errlen, path, "missing");
            return -1;
        }
    }
    xsp_join(path, where, DECISION_KEYS[XSP_D_STATE]);
    if ((index = choice(nodes[XSP_D_STATE], STATES, COUNT(STATES), path, err, errlen)) < 0)
        return -1;
    out->state = (xsproto_state)index;
    xsp_join(path, where, DECISION_KEYS[XSP_D_ORIGIN]);
    if ((index = choice(nodes[XSP_D_ORIGIN], ORIGINS, COUNT(ORIGINS), path, err, errlen)) < 0)
        return -1;
    out->origin = (xsproto_origin)index;
    xsp_join(path, where, DECISION_KEYS[XSP_D_REQUEST_ID]);
    if (!xsp_decimal(nodes[XSP_D_REQUEST_ID], path, 0, XSPROTO_REQUEST_ID_MAX,
                     &out->request_id, err, errlen))
        return -1;
    for (int k = XSP_D_BASE_PAGES; k <= XSP_D_MAX_PAGES; k++) {
        xsp_join(path, where, DECISION_KEYS[k]);
        if (!xsp_decimal(nodes[k], path, 0, XSPROTO_PAGES_MAX, pages[k - XSP_D_BASE_PAGES],
                         err, errlen))
            return -1;
    }
    xsp_join(path, where, DECISION_KEYS[XSP_D_REASON]);
    if (!xsp_text(nodes[XSP_D_REASON], path, XSPROTO_DECISION_REASON_MAX, err, errlen))
        return -1;
    memcpy(out->reason, nodes[XSP_D_REASON].value, nodes[XSP_D_REASON].len);
    out->reason[nodes[XSP_D_REASON].len] = '\0';
    const char *broken = broken_invariant(out);
    if (broken != NULL) {
        fail(err, errlen, where, "inconsistent record: %s", broken);
        return -1;
    }
    return 1;
}

bool xsp_observe(struct xsp_side *side, const struct xsproto_decision *record,
                 const char *decision_dir, char *err, size_t errlen)
{
    if (record == NULL)
        return true;
    if (side->phase != XSP_REQUESTED) {
        if (record->request_id > side->request_id)
            side->request_id = record->request_id;
        if (record->state == XSPROTO_STATE_GRANTED)
            side->granted_pages = record->granted_pages;
        return true;
    }
    if (record->request_id > side->request_id) {
        fail(err, errlen, decision_dir,
             "decision for request-id %" PRIu64 ", newest asked %" PRIu64,
             record->request_id, side->request_id);
        return false;
    }
    if (record->request_id < side->request_id || record->state == XSPROTO_STATE_APPLYING)
        return true;
    if (record->state == XSPROTO_STATE_GRANTED) {
        side->phase = XSP_GRANTED;
        side->granted_pages = record->granted_pages;
    } else {
        side->phase = XSP_REJECTED;
    }
    return true;
}

bool xsp_next_id(const struct xsp_side *side, uint64_t written,
                 const struct xsproto_decision *decided, uint64_t *id)
{
    uint64_t floor = side->request_id;

    if (written > floor)
        floor = written;
    if (decided != NULL && decided->request_id > floor)
        floor = decided->request_id;
    if (floor >= XSPROTO_REQUEST_ID_MAX)
        return false;
    *id = floor + 1;
    return true;
}

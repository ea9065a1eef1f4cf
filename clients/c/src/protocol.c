/*
 * protocol.c: paths, the value grammar, the records' lines, the decision
 * record and the device model's state machine, free of I/O (see protocol.h).
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

/* The rejection codes of protocol version 2, in check order. */
static const char *const KNOWN_CODES[] = {
    "bad-version", "bad-value", "wrong-writer", "no-such-domain", "dying",
    "privileged", "over-domain-cap", "over-host-budget", "rate-limited",
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

const char *xsp_request_key(enum xsp_request_key key)
{
    return REQUEST_KEYS[key];
}

void xsp_domain_dir(char out[XSP_PATH_MAX], unsigned domid)
{
    snprintf(out, XSP_PATH_MAX, "/local/domain/%u", domid);
}

void xsp_request_node(char out[XSP_PATH_MAX], unsigned dm_domid, unsigned domid)
{
    snprintf(out, XSP_PATH_MAX, "/local/domain/%u/device-model/%u/extra-pages",
             dm_domid, domid);
}

void xsp_decision_node(char out[XSP_PATH_MAX], unsigned domid)
{
    snprintf(out, XSP_PATH_MAX, "/libxl/%u/extra-pages", domid);
}

void xsp_key_path(char out[XSP_WHERE_MAX], const char *where, const char *key)
{
    snprintf(out, XSP_WHERE_MAX, "%s: %s", where, key);
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

/* Whether key[0..len) matches ^[a-z][a-z-]*$. */
static bool key_valid(const char *key, size_t len)
{
    if (len == 0 || key[0] < 'a' || key[0] > 'z')
        return false;
    for (size_t i = 1; i < len; i++) {
        if (!((key[i] >= 'a' && key[i] <= 'z') || key[i] == '-'))
            return false;
    }
    return true;
}

/* Whether a line of value[0..end) (lines already checked) has key[0..len). */
static bool key_before(const char *value, size_t end, const char *key, size_t len)
{
    size_t start = 0;

    while (start < end) {
        const char *line = value + start;
        const char *eq = memchr(line, '=', end - start);
        const char *lf = memchr(line, '\n', end - start);
        if ((size_t)(eq - line) == len && memcmp(line, key, len) == 0)
            return true;
        start = (size_t)(lf - value) + 1;
    }
    return false;
}

bool xsp_split(struct xsp_raw raw, const char *where, const char *const *keys,
               size_t count, struct xsp_raw *found, char *err, size_t errlen)
{
    char shown[SHOW_MAX];
    size_t start = 0;
    unsigned number = 0;

    for (size_t k = 0; k < count; k++)
        found[k] = (struct xsp_raw){NULL, 0};
    if (raw.len > XSP_RECORD_MAX) {
        xsp_show(shown, sizeof shown, raw);
        fail(err, errlen, where, "longer than %d bytes: %s", XSP_RECORD_MAX, shown);
        return false;
    }
    if (raw.len == 0 || raw.value[raw.len - 1] != '\n') {
        xsp_show(shown, sizeof shown, raw);
        fail(err, errlen, where, "not ended by a line feed: %s", shown);
        return false;
    }
    while (start < raw.len) {
        const char *line = raw.value + start;
        size_t len = (size_t)((const char *)memchr(line, '\n', raw.len - start) - line);
        const char *eq = memchr(line, '=', len);
        size_t key_len = eq == NULL ? 0 : (size_t)(eq - line);

        number++;
        if (eq == NULL || !key_valid(line, key_len)) {
            xsp_show(shown, sizeof shown, (struct xsp_raw){line, len});
            fail(err, errlen, where, "line %u is not key=value: %s", number, shown);
            return false;
        }
        if (key_before(raw.value, start, line, key_len)) {
            char label[XSP_WHERE_MAX];
            snprintf(label, sizeof label, "%s: %.*s", where, (int)key_len, line);
            fail(err, errlen, label, "given twice");
            return false;
        }
        for (size_t k = 0; k < count; k++) {
            if (strlen(keys[k]) == key_len && memcmp(keys[k], line, key_len) == 0)
                found[k] = (struct xsp_raw){eq + 1, len - key_len - 1};
        }
        start += len + 1;
    }
    return true;
}

bool xsp_request_id_in(struct xsp_raw raw, uint64_t *id)
{
    static const char *const key[] = {"request-id"};
    struct xsp_raw found;

    return raw.value != NULL && raw.len > 0 && xsp_split(raw, "", key, 1, &found, NULL, 0) &&
           found.value != NULL &&
           xsp_decimal(found, "", 0, XSPROTO_REQUEST_ID_MAX, id, NULL, 0);
}

size_t xsp_encode_request(char out[XSP_RECORD_MAX + 1], uint64_t pages,
                          const char *reason, uint64_t request_id)
{
    int len = snprintf(out, XSP_RECORD_MAX + 1,
                       "%s=%d\n%s=%" PRIu64 "\n%s=%s\n%s=%" PRIu64 "\n",
                       REQUEST_KEYS[XSP_R_VERSION], XSPROTO_PROTOCOL_VERSION,
                       REQUEST_KEYS[XSP_R_PAGES], pages, REQUEST_KEYS[XSP_R_REASON], reason,
                       REQUEST_KEYS[XSP_R_REQUEST_ID], request_id);
    return len < 0 ? 0 : (size_t)len;
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

int xsp_parse_decision(struct xsp_raw raw, const char *where, struct xsproto_decision *out,
                       char *err, size_t errlen)
{
    struct xsp_raw n[XSP_DECISION_KEYS];
    char path[XSP_WHERE_MAX];
    char shown[SHOW_MAX];
    uint64_t *pages[] = {&out->base_pages, &out->granted_pages, &out->max_pages};
    int index;

    if (raw.value == NULL || raw.len == 0)
        return 0;
    memset(out, 0, sizeof *out);
    if (!xsp_split(raw, where, DECISION_KEYS, XSP_DECISION_KEYS, n, err, errlen))
        return -1;
    /* The version first: a record of another version is not read any further. */
    xsp_key_path(path, where, DECISION_KEYS[XSP_D_VERSION]);
    if (n[XSP_D_VERSION].value == NULL) {
        fail(err, errlen, path, "version missing, expected %d", XSPROTO_PROTOCOL_VERSION);
        return -1;
    }
    if (n[XSP_D_VERSION].len != 1 || n[XSP_D_VERSION].value[0] != '0' + XSPROTO_PROTOCOL_VERSION) {
        xsp_show(shown, sizeof shown, n[XSP_D_VERSION]);
        fail(err, errlen, path, "version %s, expected %d", shown, XSPROTO_PROTOCOL_VERSION);
        return -1;
    }
    /* Then each key in field order: present, and of its grammar. */
    for (int k = XSP_D_STATE; k < XSP_DECISION_KEYS; k++) {
        xsp_key_path(path, where, DECISION_KEYS[k]);
        if (n[k].value == NULL) {
            fail(err, errlen, path, "missing");
            return -1;
        }
        switch (k) {
        case XSP_D_STATE:
            if ((index = choice(n[k], STATES, COUNT(STATES), path, err, errlen)) < 0)
                return -1;
            out->state = (xsproto_state)index;
            break;
        case XSP_D_ORIGIN:
            if ((index = choice(n[k], ORIGINS, COUNT(ORIGINS), path, err, errlen)) < 0)
                return -1;
            out->origin = (xsproto_origin)index;
            break;
        case XSP_D_REQUEST_ID:
            if (!xsp_decimal(n[k], path, 0, XSPROTO_REQUEST_ID_MAX, &out->request_id, err,
                             errlen))
                return -1;
            break;
        case XSP_D_REASON:
            if (!xsp_text(n[k], path, XSPROTO_DECISION_REASON_MAX, err, errlen))
                return -1;
            memcpy(out->reason, n[k].value, n[k].len);
            out->reason[n[k].len] = '\0';
            break;
        default:  /* base-pages, granted-pages, max-pages */
            if (!xsp_decimal(n[k], path, 0, XSPROTO_PAGES_MAX, pages[k - XSP_D_BASE_PAGES],
                             err, errlen))
                return -1;
        }
    }
    const char *broken = broken_invariant(out);
    if (broken != NULL) {
        fail(err, errlen, where, "inconsistent record: %s", broken);
        return -1;
    }
    return 1;
}

bool xsp_observe(struct xsp_side *side, const struct xsproto_decision *record,
                 const char *decision_node, char *err, size_t errlen)
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
        fail(err, errlen, decision_node,
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

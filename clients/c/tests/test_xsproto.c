/*
 * test_xsproto.c: libxsproto's tests, one binary (built static, and with
 * AddressSanitizer) with four modes:
 *
 *   xsproto-test unit                  the pure parts: grammar, records' lines, state machine
 *   xsproto-test lab DOMID             against the running Python watcher (dom0 of the lab)
 *   xsproto-test hostile DOMID         no watcher: this test writes hostile decisions
 *   xsproto-test ask DOMID PAGES [REASON [TIMEOUT_MS]]
 *                                      one request, for interoperability tests; exit
 *                                      0 granted, 3 rejected, 4 timed out, 1 error
 *
 * Each mode prints one line per failed check and a closing tally; it exits 0
 * only when every check passed.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenstore.h>

#include "../src/protocol.h"
#include "xsproto.h"

/* A domain that does not exist (below DOMID_FIRST_RESERVED). */
#define NO_SUCH_DOMAIN 31999u
/* The watcher's default cap (docs/protocol.md, section 3). */
#define DEFAULT_CAP 8192u
/* Generous: the lab's CPU is emulated. */
#define LAB_TIMEOUT_MS 180000u
/* How long the hostile tests wait for a decision that must never come. */
#define SHORT_TIMEOUT_MS 1500u

struct suite {
    const char *name;
    int checks;
    int failed;
};

static bool check(struct suite *s, bool ok, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static bool check(struct suite *s, bool ok, int line, const char *fmt, ...)
{
    va_list ap;

    s->checks++;
    if (ok)
        return true;
    s->failed++;
    fprintf(stderr, "FAIL %s:%d: ", s->name, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return false;
}

#define CHECK(s, cond, ...) check((s), (cond), __LINE__, __VA_ARGS__)

static int tally(const struct suite *s)
{
    printf("%s: %d checks, %d failed\n", s->name, s->checks, s->failed);
    return s->failed ? 1 : 0;
}

static struct xsp_raw raw(const char *text)
{
    return (struct xsp_raw){text, text ? strlen(text) : 0};
}

/* ---- unit: the pure parts ---- */

static void unit_decimal(struct suite *s)
{
    static const char *const bad[] = {
        "", "01", "00", "+1", "-1", " 1", "1 ", "0x10", "1_0", "1e3", "1.0",
        "\xd9\xa3", /* ARABIC-INDIC DIGIT THREE */
        "123456789012345678901", /* 21 bytes */
    };
    char err[XSPROTO_ERROR_MAX];
    uint64_t v = 7;

    CHECK(s, xsproto_parse_decimal("0", 1, 0, 10, &v) && v == 0, "0");
    CHECK(s, xsproto_parse_decimal("4294967295", 10, 0, XSPROTO_PAGES_MAX, &v) &&
                 v == XSPROTO_PAGES_MAX, "PAGES_MAX");
    CHECK(s, xsproto_parse_decimal("18446744073709551615", 20, 0, UINT64_MAX, &v) &&
                 v == UINT64_MAX, "u64 max");
    CHECK(s, !xsproto_parse_decimal("18446744073709551616", 20, 0, UINT64_MAX, &v),
          "2^64 overflows");
    CHECK(s, !xsproto_parse_decimal("4294967296", 10, 0, XSPROTO_PAGES_MAX, &v),
          "PAGES_MAX + 1");
    CHECK(s, !xsproto_parse_decimal("0", 1, 1, 5, &v), "below lo");
    CHECK(s, !xsproto_parse_decimal("1\0", 2, 0, 10, &v), "embedded NUL");
    CHECK(s, !xsproto_parse_decimal(NULL, 0, 0, 10, &v), "NULL");
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(s, !xsproto_parse_decimal(bad[i], strlen(bad[i]), 0, UINT64_MAX, &v),
              "accepted %s", bad[i]);
    CHECK(s, !xsp_decimal(raw("016"), "/p/pages", 0, 100, &v, err, sizeof err) &&
                 strcmp(err, "/p/pages: not a canonical decimal: '016'") == 0, "%s", err);
    CHECK(s, !xsp_decimal(raw("123456789012345678901"), "/p", 0, 1, &v, err, sizeof err) &&
                 strstr(err, "longer than 20 bytes") != NULL, "%s", err);
    CHECK(s, !xsp_decimal(raw("11"), "/p", 0, 10, &v, err, sizeof err) &&
                 strcmp(err, "/p: '11' outside [0, 10]") == 0, "%s", err);
}

static void unit_text(struct suite *s)
{
    char text[XSPROTO_REASON_MAX + 2];
    char shown[128];

    memset(text, 'a', sizeof text);
    CHECK(s, xsproto_text_valid("", 0, XSPROTO_REASON_MAX), "empty");
    CHECK(s, xsproto_text_valid(" ~", 2, XSPROTO_REASON_MAX), "printable");
    CHECK(s, xsproto_text_valid(text, XSPROTO_REASON_MAX, XSPROTO_REASON_MAX), "128 bytes");
    CHECK(s, !xsproto_text_valid(text, XSPROTO_REASON_MAX + 1, XSPROTO_REASON_MAX),
          "129 bytes");
    CHECK(s, !xsproto_text_valid("a\nb", 3, XSPROTO_REASON_MAX), "newline");
    CHECK(s, !xsproto_text_valid("\x7f", 1, XSPROTO_REASON_MAX), "DEL");
    CHECK(s, !xsproto_text_valid("\xc3\xa9", 2, XSPROTO_REASON_MAX), "UTF-8");
    CHECK(s, !xsproto_text_valid("a\0b", 3, XSPROTO_REASON_MAX), "NUL");
    xsp_show(shown, sizeof shown, (struct xsp_raw){"a'\\\x1b\0", 5});
    CHECK(s, strcmp(shown, "'a\\'\\\\\\x1b\\x00'") == 0, "show: %s", shown);
    xsp_show(shown, sizeof shown, raw("0123456789012345678901234567"));
    CHECK(s, strcmp(shown, "'012345678901234567890123'...") == 0, "show long: %s", shown);
}

/* One key of a record's value; its value's length is explicit (NULs). */
struct node {
    const char *key;
    const char *value;  /* NULL: left out */
    size_t len;
};

#define SET(k, v) {k, v, sizeof(v) - 1}
#define DROP(k) {k, NULL, 0}
#define CHANGES 2

/* A valid granted record's keys, in order, to break one or two at a time. */
static const struct node GRANTED[XSP_DECISION_KEYS] = {
    SET("version", "2"), SET("state", "granted"), SET("origin", "request"),
    SET("request-id", "3"), SET("base-pages", "33024"), SET("granted-pages", "64"),
    SET("max-pages", "33088"), SET("reason", ""),
};

/* The value of a record holding `nodes` (in order) with `change` applied
 * (a key replaced or dropped; NULL key: nothing more), in out; its length. */
static size_t lines(char out[XSP_RECORD_MAX * 2], const struct node nodes[XSP_DECISION_KEYS],
                    const struct node change[CHANGES])
{
    size_t len = 0;

    for (int k = 0; k < XSP_DECISION_KEYS; k++) {
        struct node n = nodes[k];
        for (int c = 0; change != NULL && c < CHANGES && change[c].key != NULL; c++) {
            if (strcmp(change[c].key, n.key) == 0)
                n = change[c];
        }
        if (n.value == NULL)
            continue;
        len += (size_t)sprintf(out + len, "%s=", n.key);
        memcpy(out + len, n.value, n.len);
        len += n.len;
        out[len++] = '\n';
    }
    out[len] = '\0';
    return len;
}

struct broken {
    struct node change;
    const char *message;  /* expected in the error */
};

static void unit_decision(struct suite *s)
{
    static const struct broken cases[] = {
        {DROP("version"), "/d: version: version missing, expected 2"},
        {SET("version", "1"), "/d: version: version '1', expected 2"},
        {SET("version", "02"), "/d: version: version '02', expected 2"},
        {DROP("state"), "/d: state: missing"},
        {SET("state", "Granted"), "/d: state: 'Granted' is not one of: applying, granted, "
                                  "rejected"},
        {DROP("origin"), "/d: origin: missing"},
        {SET("origin", "restored"), "/d: origin: 'restored' is not one of"},
        {SET("request-id", "-3"), "/d: request-id: not a canonical decimal: '-3'"},
        {SET("request-id", "9223372036854775808"),
         "/d: request-id: '9223372036854775808' outside [0, 9223372036854775807]"},
        {SET("base-pages", "4294967296"), "/d: base-pages: '4294967296' outside"},
        {SET("granted-pages", " 64"), "/d: granted-pages: not a canonical decimal: ' 64'"},
        {SET("granted-pages", "0x40"), "/d: granted-pages: not a canonical decimal"},
        {SET("granted-pages", "64\r"), "/d: granted-pages: not a canonical decimal: '64\\x0d'"},
        {SET("granted-pages", "64\0"), "/d: granted-pages: not a canonical decimal: '64\\x00'"},
        {SET("granted-pages", ""), "/d: granted-pages: not a canonical decimal: ''"},
        {DROP("reason"), "/d: reason: missing"},
        {SET("max-pages", "33089"), "/d: inconsistent record: max-pages must equal "
                                    "base-pages + granted-pages"},
        {SET("reason", "ok"), "/d: inconsistent record: reason must be empty"},
        {SET("reason", "\x1b[2J"), "/d: reason: not printable ASCII: '\\x1b[2J'"},
        {SET("origin", "restore"), "/d: inconsistent record: a restore origin needs "
                                   "request-id 0"},
    };
    /* Values that do not frame, built around a valid record. */
    static const struct {
        const char *tail;  /* appended to the valid record */
        bool drop_lf;      /* its last line feed removed */
        const char *message;
    } framing[] = {
        {"", true, "/d: not ended by a line feed: 'version=2\\x0astate=granted\\x0a'..."},
        {"state=granted\n", false, "/d: state: given twice"},
        {"x=1\nx=2\n", false, "/d: x: given twice"},
        {"\n", false, "/d: line 9 is not key=value: ''"},
        {"Pages=1\n", false, "/d: line 9 is not key=value: 'Pages=1'"},
        {"pa_ges=1\n", false, "/d: line 9 is not key=value"},
        {"-x=1\n", false, "/d: line 9 is not key=value"},
        {"no equals sign\n", false, "/d: line 9 is not key=value: 'no equals sign'"},
    };
    static const struct node none[CHANGES] = {{NULL, NULL, 0}};
    char value[XSP_RECORD_MAX * 2];
    struct xsproto_decision d;
    char err[XSPROTO_ERROR_MAX];
    char code[XSP_CODE_MAX + 1];
    const char *detail;
    size_t len;

    len = lines(value, GRANTED, none);
    CHECK(s, xsp_parse_decision((struct xsp_raw){value, len}, "/d", &d, err, sizeof err) ==
                 1 && d.state == XSPROTO_STATE_GRANTED && d.origin == XSPROTO_ORIGIN_REQUEST &&
                 d.request_id == 3 && d.base_pages == 33024 && d.granted_pages == 64 &&
                 d.max_pages == 33088 && d.reason[0] == '\0', "valid granted: %s", err);
    CHECK(s, xsp_parse_decision((struct xsp_raw){NULL, 0}, "/d", &d, err, sizeof err) == 0,
          "no node");
    CHECK(s, xsp_parse_decision((struct xsp_raw){"", 0}, "/d", &d, err, sizeof err) == 0,
          "an empty node");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct node change[CHANGES] = {cases[i].change, {NULL, NULL, 0}};
        len = lines(value, GRANTED, change);
        err[0] = '\0';
        CHECK(s, xsp_parse_decision((struct xsp_raw){value, len}, "/d", &d, err, sizeof err) ==
                     -1 && strstr(err, cases[i].message) == err,
              "case %zu: got '%s', expected '%s'", i, err, cases[i].message);
    }
    for (size_t i = 0; i < sizeof framing / sizeof framing[0]; i++) {
        len = lines(value, GRANTED, none);
        len -= framing[i].drop_lf;
        len += (size_t)sprintf(value + len, "%s", framing[i].tail);
        err[0] = '\0';
        CHECK(s, xsp_parse_decision((struct xsp_raw){value, len}, "/d", &d, err, sizeof err) ==
                     -1 && strstr(err, framing[i].message) == err,
              "framing %zu: got '%s', expected '%s'", i, err, framing[i].message);
    }
    /* The bound is on the whole value: an unknown key may fill it, not pass it. */
    len = lines(value, GRANTED, none);
    size_t pad = XSP_RECORD_MAX - len - 3;
    memcpy(value + len, "x=", 2);
    memset(value + len + 2, 'y', pad);
    value[len + 2 + pad] = '\n';
    CHECK(s, xsp_parse_decision((struct xsp_raw){value, XSP_RECORD_MAX}, "/d", &d, err,
                                sizeof err) == 1, "at the bound: %s", err);
    value[XSP_RECORD_MAX - 1] = 'y';
    value[XSP_RECORD_MAX] = '\n';
    CHECK(s, xsp_parse_decision((struct xsp_raw){value, XSP_RECORD_MAX + 1}, "/d", &d, err,
                                sizeof err) == -1 &&
                 strstr(err, "/d: longer than 1024 bytes: 'version=2") == err,
          "over the bound: %s", err);
    /* Unknown keys, any order, '=' in a value: all fine. */
    static const struct node reordered[XSP_DECISION_KEYS] = {
        SET("reason", ""), SET("max-pages", "33088"), SET("granted-pages", "64"),
        SET("base-pages", "33024"), SET("request-id", "3"), SET("origin", "request"),
        SET("state", "granted"), SET("version", "2"),
    };
    len = lines(value, reordered, none);
    len += (size_t)sprintf(value + len, "future=\x01=\xff\n");
    CHECK(s, xsp_parse_decision((struct xsp_raw){value, len}, "/d", &d, err, sizeof err) == 1,
          "reordered, with an unknown key: %s", err);

    static const struct node rejection[CHANGES] = {
        SET("state", "rejected"), SET("reason", "over-domain-cap: /x: pages: 9000 > cap 8192")};
    struct node rejected[XSP_DECISION_KEYS];
    memcpy(rejected, GRANTED, sizeof rejected);
    rejected[XSP_D_MAX_PAGES] = (struct node)SET("max-pages", "1");  /* Xen's, as observed */
    len = lines(value, rejected, rejection);
    CHECK(s, xsp_parse_decision((struct xsp_raw){value, len}, "/d", &d, err, sizeof err) ==
                 1 && xsp_rejection(d.reason, code, &detail) &&
                 strcmp(code, "over-domain-cap") == 0 &&
                 strcmp(detail, "/x: pages: 9000 > cap 8192") == 0 && xsp_code_known(code),
          "rejection: %s", err);
    static const struct node future[CHANGES] = {
        SET("state", "rejected"), SET("reason", "a-rule-from-the-future: why")};
    len = lines(value, rejected, future);
    CHECK(s, xsp_parse_decision((struct xsp_raw){value, len}, "/d", &d, err, sizeof err) ==
                 1 && xsp_rejection(d.reason, code, &detail) && !xsp_code_known(code),
          "unknown code is still a rejection: %s", err);
    static const char *const bad_reasons[] = {"no code", "Bad-code: x", ": x", "code:x", ""};
    for (size_t i = 0; i < sizeof bad_reasons / sizeof bad_reasons[0]; i++) {
        struct node change[CHANGES] = {SET("state", "rejected"),
                                       {"reason", bad_reasons[i], strlen(bad_reasons[i])}};
        len = lines(value, rejected, change);
        CHECK(s, xsp_parse_decision((struct xsp_raw){value, len}, "/d", &d, err, sizeof err) ==
                     -1 && strstr(err, "<code>: <detail>") != NULL,
              "rejection reason '%s': %s", bad_reasons[i], err);
    }
    static const struct node restore[CHANGES] = {SET("origin", "restore"),
                                                 SET("request-id", "0")};
    len = lines(value, GRANTED, restore);
    CHECK(s, xsp_parse_decision((struct xsp_raw){value, len}, "/d", &d, err, sizeof err) ==
                 1 && d.origin == XSPROTO_ORIGIN_RESTORE, "restored record: %s", err);
}

static void unit_request(struct suite *s)
{
    char value[XSP_RECORD_MAX + 1];
    char reason[XSPROTO_REASON_MAX + 1];
    uint64_t id = 7;

    size_t len = xsp_encode_request(value, 2048, "option ROMs", 3);
    CHECK(s, len == strlen(value) &&
                 strcmp(value, "version=2\npages=2048\nreason=option ROMs\nrequest-id=3\n") ==
                     0, "encoded: %s", value);
    CHECK(s, xsp_request_id_in((struct xsp_raw){value, len}, &id) && id == 3, "its id");
    memset(reason, 'r', XSPROTO_REASON_MAX);
    reason[XSPROTO_REASON_MAX] = '\0';
    len = xsp_encode_request(value, XSPROTO_PAGES_MAX, reason, XSPROTO_REQUEST_ID_MAX);
    CHECK(s, len == 194, "the longest request: %zu bytes", len);
    static const char *const unreadable[] = {
        "", "request-id=3", "pages=1\n", "request-id=03\n", "request-id=3\nrequest-id=3\n",
        "request-id=9223372036854775808\n", "Request-id=3\n",
    };
    for (size_t i = 0; i < sizeof unreadable / sizeof unreadable[0]; i++)
        CHECK(s, !xsp_request_id_in(raw(unreadable[i]), &id), "an id in '%s'", unreadable[i]);
    CHECK(s, !xsp_request_id_in((struct xsp_raw){NULL, 0}, &id), "no node");
    CHECK(s, xsp_request_id_in(raw("x=\x01\nrequest-id=0\n"), &id) && id == 0,
          "0, the others unchecked");
}

static struct xsproto_decision record(xsproto_state state, uint64_t id, uint64_t granted)
{
    struct xsproto_decision d = {.state = state, .request_id = id, .base_pages = 100,
                                 .granted_pages = granted, .max_pages = 100 + granted};
    return d;
}

static void unit_side(struct suite *s)
{
    char err[XSPROTO_ERROR_MAX] = "";
    struct xsp_side side = {XSP_IDLE, 0, 0};
    struct xsproto_decision d = record(XSPROTO_STATE_GRANTED, 4, 16);
    uint64_t id = 0;

    CHECK(s, xsp_observe(&side, &d, "/d", err, sizeof err) && side.phase == XSP_IDLE &&
                 side.request_id == 4 && side.granted_pages == 16, "idle adopts the record");
    CHECK(s, xsp_next_id(&side, 0, &d, &id) && id == 5, "next after decided: %" PRIu64, id);
    CHECK(s, xsp_next_id(&side, 9, &d, &id) && id == 10, "next after written: %" PRIu64, id);
    side = (struct xsp_side){XSP_REQUESTED, 5, 16};
    d = record(XSPROTO_STATE_GRANTED, 4, 32);
    CHECK(s, xsp_observe(&side, &d, "/d", err, sizeof err) && side.phase == XSP_REQUESTED,
          "an older id changes nothing");
    d = record(XSPROTO_STATE_APPLYING, 5, 32);
    CHECK(s, xsp_observe(&side, &d, "/d", err, sizeof err) && side.phase == XSP_REQUESTED,
          "applying: keep waiting");
    d = record(XSPROTO_STATE_GRANTED, 5, 32);
    CHECK(s, xsp_observe(&side, &d, "/d", err, sizeof err) && side.phase == XSP_GRANTED &&
                 side.granted_pages == 32, "granted for its id");
    side = (struct xsp_side){XSP_REQUESTED, 5, 16};
    d = record(XSPROTO_STATE_REJECTED, 5, 16);
    CHECK(s, xsp_observe(&side, &d, "/d", err, sizeof err) && side.phase == XSP_REJECTED,
          "rejected for its id");
    side = (struct xsp_side){XSP_REQUESTED, 5, 16};
    d = record(XSPROTO_STATE_GRANTED, 6, 32);
    CHECK(s, !xsp_observe(&side, &d, "/d", err, sizeof err) && side.phase == XSP_REQUESTED &&
                 strcmp(err, "/d: decision for request-id 6, newest asked 5") == 0,
          "an id never asked: %s", err);
    CHECK(s, xsp_observe(&side, NULL, "/d", err, sizeof err) && side.phase == XSP_REQUESTED,
          "no record: keep waiting");
    side.request_id = XSPROTO_REQUEST_ID_MAX;
    CHECK(s, !xsp_next_id(&side, 0, NULL, &id), "request-ids exhausted");
}

static void unit_paths(struct suite *s)
{
    char path[XSP_PATH_MAX];

    xsp_request_node(path, XSPROTO_DOMID_MAX, XSPROTO_DOMID_MAX);
    CHECK(s, strcmp(path, "/local/domain/32751/device-model/32751/extra-pages") == 0, "%s",
          path);
    xsp_decision_node(path, 7);
    CHECK(s, strcmp(path, "/libxl/7/extra-pages") == 0, "%s", path);
    CHECK(s, strcmp(xsproto_status_name(XSPROTO_TIMED_OUT), "timed-out") == 0, "status name");
}

static int run_unit(void)
{
    struct suite s = {"unit", 0, 0};

    unit_decimal(&s);
    unit_text(&s);
    unit_decision(&s);
    unit_request(&s);
    unit_side(&s);
    unit_paths(&s);
    return tally(&s);
}

/* ---- the lab: a real xenstored, and the watcher or this test deciding ---- */

static bool parse_domid(const char *text, uint32_t *domid)
{
    uint64_t v;

    if (!xsproto_parse_decimal(text, strlen(text), 1, XSPROTO_DOMID_MAX, &v))
        return false;
    *domid = (uint32_t)v;
    return true;
}

static xsproto *open_or_die(uint32_t domid)
{
    char err[XSPROTO_ERROR_MAX];
    xsproto *h = xsproto_open(domid, XSPROTO_DM_SELF, err, sizeof err);

    if (h == NULL) {
        fprintf(stderr, "xsproto_open(%" PRIu32 "): %s\n", domid, err);
        exit(1);
    }
    return h;
}

/* Wait for the pending request from the caller's own loop, as QEMU would:
 * poll(2) on xsproto_fd() with xsproto_timeout_ms(). */
static xsproto_status event_loop(xsproto *h, int *wakeups)
{
    xsproto_status status;

    *wakeups = 0;
    while ((status = xsproto_poll(h)) == XSPROTO_PENDING) {
        struct pollfd fd = {.fd = xsproto_fd(h), .events = POLLIN};
        if (poll(&fd, 1, xsproto_timeout_ms(h)) < 0 && errno != EINTR)
            break;
        ++*wakeups;
    }
    return status;
}

static int run_lab(uint32_t domid)
{
    struct suite s = {"lab", 0, 0};
    xsproto *h = open_or_die(domid);
    const struct xsproto_decision *d;
    char long_reason[XSPROTO_REASON_MAX + 2];
    int wakeups;

    CHECK(&s, xsproto_dm_domid(h) == 0, "dom0's QEMU: dm_domid %" PRIu32, xsproto_dm_domid(h));
    CHECK(&s, xsproto_ask(h, 16, "c client: lab", LAB_TIMEOUT_MS) == XSPROTO_GRANTED,
          "ask 16: %s", xsproto_error(h));
    d = xsproto_decision(h);
    CHECK(&s, d != NULL && d->state == XSPROTO_STATE_GRANTED && d->granted_pages == 16 &&
                  d->max_pages == d->base_pages + 16 && d->request_id == xsproto_request_id(h),
          "the granted record");
    uint64_t base = d ? d->base_pages : 0;
    uint64_t first = xsproto_request_id(h);

    CHECK(&s, xsproto_request(h, 32, "c client: event-driven", LAB_TIMEOUT_MS) ==
                  XSPROTO_PENDING, "request 32: %s", xsproto_error(h));
    CHECK(&s, xsproto_fd(h) >= 0 && xsproto_timeout_ms(h) > 0, "fd and timeout");
    CHECK(&s, event_loop(h, &wakeups) == XSPROTO_GRANTED, "event loop: %s", xsproto_error(h));
    CHECK(&s, xsproto_decision(h)->granted_pages == 32 && xsproto_request_id(h) == first + 1,
          "granted 32 for the next id");
    CHECK(&s, xsproto_timeout_ms(h) == -1, "nothing pending");
    CHECK(&s, xsproto_poll(h) == XSPROTO_GRANTED, "the outcome stays");
    xsproto_close(h);

    /* A restarted device model: a new handle continues the ids. */
    h = open_or_die(domid);
    CHECK(&s, xsproto_ask(h, 32, "c client: replay", LAB_TIMEOUT_MS) == XSPROTO_GRANTED,
          "replay: %s", xsproto_error(h));
    CHECK(&s, xsproto_request_id(h) == first + 2, "restart: id %" PRIu64, xsproto_request_id(h));
    CHECK(&s, xsproto_decision(h)->max_pages == base + 32, "a replay changes nothing");

    CHECK(&s, xsproto_ask(h, DEFAULT_CAP + 1, "c client: too much", LAB_TIMEOUT_MS) ==
                  XSPROTO_REJECTED, "over the cap: %s", xsproto_error(h));
    CHECK(&s, strcmp(xsproto_rejection_code(h), "over-domain-cap") == 0 &&
                  xsproto_rejection_code_known(h) &&
                  strstr(xsproto_rejection_detail(h), "8193 > cap 8192") != NULL,
          "rejection: %s", xsproto_error(h));
    CHECK(&s, xsproto_decision(h)->granted_pages == 32 &&
                  xsproto_decision(h)->max_pages == base + 32, "a rejection keeps the grant");

    uint64_t last = xsproto_request_id(h);
    memset(long_reason, 'r', sizeof long_reason - 1);
    long_reason[sizeof long_reason - 1] = '\0';
    CHECK(&s, xsproto_request(h, 1, long_reason, 0) == XSPROTO_EINVAL &&
                  strstr(xsproto_error(h), "/extra-pages: reason: longer than 128 bytes") !=
                      NULL,
          "long reason: %s", xsproto_error(h));
    CHECK(&s, xsproto_request(h, 1, "tab\there", 0) == XSPROTO_EINVAL &&
                  strstr(xsproto_error(h), "not printable ASCII") != NULL,
          "control character: %s", xsproto_error(h));
    CHECK(&s, xsproto_request(h, XSPROTO_PAGES_MAX + 1, "", 0) == XSPROTO_EINVAL &&
                  strstr(xsproto_error(h), "/extra-pages: pages: 4294967296 outside") != NULL,
          "too many pages: %s", xsproto_error(h));

    CHECK(&s, xsproto_withdraw(h, LAB_TIMEOUT_MS) == XSPROTO_GRANTED, "withdraw: %s",
          xsproto_error(h));
    CHECK(&s, xsproto_request_id(h) == last + 1, "invalid requests wrote nothing");
    CHECK(&s, xsproto_decision(h)->granted_pages == 0 && xsproto_decision(h)->max_pages == base,
          "withdrawn: back to base %" PRIu64, base);
    xsproto_close(h);

    h = open_or_die(NO_SUCH_DOMAIN);
    CHECK(&s, xsproto_ask(h, 1, "", LAB_TIMEOUT_MS) == XSPROTO_REJECTED &&
                  strcmp(xsproto_rejection_code(h), "no-such-domain") == 0,
          "no such domain: %s", xsproto_error(h));
    xsproto_close(h);
    return tally(&s);
}

/* Write /libxl/D/extra-pages as the watcher would (dom0 writes it; it
 * inherits /libxl/D's n0), replacing what was there. */
static bool write_decision(struct xs_handle *xs, uint32_t domid, const char *value,
                           size_t len)
{
    char node[XSP_PATH_MAX];

    xsp_decision_node(node, domid);
    return xs_write(xs, XBT_NULL, node, value, (unsigned)len);
}

static void remove_decision(struct xs_handle *xs, uint32_t domid)
{
    char node[XSP_PATH_MAX];

    xsp_decision_node(node, domid);
    xs_rm(xs, XBT_NULL, node);
}

/* Ask for 16 pages, then answer as a (hostile) watcher: a grant of 16 pages
 * for the id asked, with `change` applied to its keys, then `tail` appended
 * (after its last line feed, dropped when drop_lf); return what the client
 * made of it. */
static xsproto_status answer_raw(struct suite *s, struct xs_handle *xs, xsproto *h,
                                 uint32_t domid, const struct node change[CHANGES],
                                 const char *tail, bool drop_lf, unsigned timeout_ms)
{
    char id[24];
    char value[XSP_RECORD_MAX * 2];
    xsproto_status status = xsproto_request(h, 16, "hostile", timeout_ms);

    if (!CHECK(s, status == XSPROTO_PENDING, "request: %s", xsproto_error(h)))
        return status;
    snprintf(id, sizeof id, "%" PRIu64, xsproto_request_id(h));
    struct node nodes[XSP_DECISION_KEYS];
    memcpy(nodes, GRANTED, sizeof nodes);
    nodes[XSP_D_REQUEST_ID] = (struct node){"request-id", id, strlen(id)};
    nodes[XSP_D_GRANTED_PAGES] = (struct node)SET("granted-pages", "16");
    nodes[XSP_D_MAX_PAGES] = (struct node)SET("max-pages", "33040");
    size_t len = lines(value, nodes, change) - drop_lf;
    len += (size_t)sprintf(value + len, "%s", tail);
    CHECK(s, write_decision(xs, domid, value, len), "write: %s", strerror(errno));
    return xsproto_wait(h);
}

static xsproto_status answer(struct suite *s, struct xs_handle *xs, xsproto *h,
                             uint32_t domid, const struct node change[CHANGES],
                             unsigned timeout_ms)
{
    return answer_raw(s, xs, h, domid, change, "", false, timeout_ms);
}

struct hostile {
    const char *what;
    struct node change[CHANGES];
    const char *tail;  /* appended to the value (NULL: nothing) */
    bool drop_lf;      /* the value's last line feed removed */
    const char *message;  /* expected in the error */
};

static int run_hostile(uint32_t domid)
{
    /* An unknown key long enough to take a record past XSP_RECORD_MAX. */
    char overlong[XSP_RECORD_MAX + 4];
    const struct hostile cases[] = {
        {"max-pages above base + granted", {SET("max-pages", "99999")}, NULL, false,
         "inconsistent record: max-pages must equal base-pages + granted-pages"},
        {"a leading zero", {SET("granted-pages", "016")}, NULL, false,
         "/extra-pages: granted-pages: not a canonical decimal: '016'"},
        {"a sign", {SET("granted-pages", "+16")}, NULL, false,
         "/extra-pages: granted-pages: not a canonical decimal: '+16'"},
        {"hex", {SET("max-pages", "0x8110")}, NULL, false,
         "/extra-pages: max-pages: not a canonical decimal: '0x8110'"},
        {"a NUL", {SET("granted-pages", "16\0")}, NULL, false,
         "/extra-pages: granted-pages: not a canonical decimal: '16\\x00'"},
        {"a carriage return", {SET("granted-pages", "16\r")}, NULL, false,
         "/extra-pages: granted-pages: not a canonical decimal: '16\\x0d'"},
        {"base-pages beyond 32 bits", {SET("base-pages", "4294967296")}, NULL, false,
         "/extra-pages: base-pages: '4294967296' outside [0, 4294967295]"},
        {"a request-id beyond 64 bits", {SET("request-id", "99999999999999999999")}, NULL,
         false, "/extra-pages: request-id: '99999999999999999999' outside"},
        {"a state in capitals", {SET("state", "GRANTED")}, NULL, false,
         "/extra-pages: state: 'GRANTED' is not one of: applying, granted, rejected"},
        {"another version", {SET("version", "1")}, NULL, false,
         "/extra-pages: version: version '1', expected 2"},
        {"a key missing", {DROP("origin")}, NULL, false, "/extra-pages: origin: missing"},
        {"a grant with a reason", {SET("reason", "because")}, NULL, false,
         "inconsistent record: reason must be empty"},
        {"a rejection without a code", {SET("state", "rejected"), SET("reason", "no")}, NULL,
         false, "a rejection's reason must be '<code>: <detail>'"},
        {"a terminal escape", {SET("state", "rejected"), SET("reason", "bad-value: \x1b[2J")},
         NULL, false, "/extra-pages: reason: not printable ASCII: 'bad-value: \\x1b[2J'"},
        {"a restore origin answering a request", {SET("origin", "restore")}, NULL, false,
         "inconsistent record: a restore origin needs request-id 0"},
        {"a grant for an id never written", {SET("request-id", "4000000000")}, NULL, false,
         "/extra-pages: decision for request-id 4000000000, newest asked"},
        {"no line feed at the end", {{NULL, NULL, 0}}, NULL, true,
         "/extra-pages: not ended by a line feed: 'version=2"},
        {"a key given twice", {{NULL, NULL, 0}}, "granted-pages=8000\n", false,
         "/extra-pages: granted-pages: given twice"},
        {"a line that is not key=value", {{NULL, NULL, 0}}, "GRANTED\n", false,
         "/extra-pages: line 9 is not key=value: 'GRANTED'"},
        {"a value over the bound", {{NULL, NULL, 0}}, overlong, false,
         "/extra-pages: longer than 1024 bytes: 'version=2"},
    };
    static const struct node none[CHANGES] = {{NULL, NULL, 0}};
    static const struct node applying[CHANGES] = {SET("state", "applying")};
    static const struct node future[CHANGES] = {
        SET("state", "rejected"), SET("reason", "quota-of-the-future: 16 > 0")};
    struct suite s = {"hostile", 0, 0};
    struct xs_handle *xs = xs_open(0);
    char node[XSP_PATH_MAX];
    xsproto_status status;

    if (xs == NULL) {
        perror("xs_open");
        return 1;
    }
    memset(overlong, 'y', sizeof overlong - 2);
    memcpy(overlong, "x=", 2);
    overlong[sizeof overlong - 2] = '\n';
    overlong[sizeof overlong - 1] = '\0';
    remove_decision(xs, domid);
    xsproto *h = open_or_die(domid);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        status = answer_raw(&s, xs, h, domid, cases[i].change,
                            cases[i].tail ? cases[i].tail : "", cases[i].drop_lf,
                            LAB_TIMEOUT_MS);
        CHECK(&s, status == XSPROTO_EPROTO && strstr(xsproto_error(h), cases[i].message),
              "%s: %s (%s), expected a protocol error with '%s'", cases[i].what,
              xsproto_status_name(status), xsproto_error(h), cases[i].message);
        printf("hostile: %s -> %s: %s\n", cases[i].what, xsproto_status_name(status),
               xsproto_error(h));
        remove_decision(xs, domid);
    }

    /* No decision node at all: a timeout that says so, never a grant. */
    status = xsproto_ask(h, 16, "hostile: nobody answers", SHORT_TIMEOUT_MS);
    CHECK(&s, status == XSPROTO_TIMED_OUT && xsproto_decision(h) == NULL &&
                  strstr(xsproto_error(h), "/libxl/") != NULL &&
                  strstr(xsproto_error(h), "does not exist") != NULL,
          "missing node: %s (%s)", xsproto_status_name(status), xsproto_error(h));
    printf("hostile: a missing decision node -> %s: %s\n", xsproto_status_name(status),
           xsproto_error(h));

    /* A record left applying: keep waiting, and time out, never a grant. */
    status = answer(&s, xs, h, domid, applying, SHORT_TIMEOUT_MS);
    CHECK(&s, status == XSPROTO_TIMED_OUT && strstr(xsproto_error(h), "applying") != NULL,
          "applying, never finished: %s (%s)", xsproto_status_name(status), xsproto_error(h));
    remove_decision(xs, domid);

    /* A code this client does not know: a rejection, named as such. */
    status = answer(&s, xs, h, domid, future, LAB_TIMEOUT_MS);
    CHECK(&s, status == XSPROTO_REJECTED && !xsproto_rejection_code_known(h) &&
                  strcmp(xsproto_rejection_code(h), "quota-of-the-future") == 0 &&
                  strcmp(xsproto_rejection_detail(h), "16 > 0") == 0 &&
                  strstr(xsproto_error(h), "unknown to this client") != NULL,
          "unknown code: %s (%s)", xsproto_status_name(status), xsproto_error(h));
    printf("hostile: an unknown rejection code -> %s: %s\n", xsproto_status_name(status),
           xsproto_error(h));
    remove_decision(xs, domid);

    /* The control: a well-formed grant for the id asked is a grant. */
    status = answer(&s, xs, h, domid, none, LAB_TIMEOUT_MS);
    CHECK(&s, status == XSPROTO_GRANTED, "control: %s", xsproto_error(h));
    xsproto_close(h);
    remove_decision(xs, domid);

    /* A guest whose home is missing: rejected before anything is written. */
    h = open_or_die(NO_SUCH_DOMAIN);
    status = xsproto_ask(h, 16, "hostile: no guest", LAB_TIMEOUT_MS);
    CHECK(&s, status == XSPROTO_REJECTED &&
                  strcmp(xsproto_rejection_code(h), "no-such-domain") == 0 &&
                  strstr(xsproto_error(h), "/local/domain/31999 does not exist") != NULL,
          "missing domain: %s (%s)", xsproto_status_name(status), xsproto_error(h));
    xsp_request_node(node, 0, NO_SUCH_DOMAIN);
    unsigned len;
    void *left = xs_read(xs, XBT_NULL, node, &len);
    CHECK(&s, left == NULL, "nothing written for a missing domain");
    free(left);
    xsproto_close(h);
    xs_close(xs);
    return tally(&s);
}

/* ---- ask: one request, printed, for the interoperability tests ---- */

static int run_ask(uint32_t domid, uint64_t pages, const char *reason, unsigned timeout_ms)
{
    xsproto *h = open_or_die(domid);
    xsproto_status status = xsproto_ask(h, pages, reason, timeout_ms);
    const struct xsproto_decision *d = xsproto_decision(h);
    int rc = 1;

    if (status == XSPROTO_GRANTED) {
        printf("granted request-id=%" PRIu64 " base-pages=%" PRIu64 " granted-pages=%" PRIu64
               " max-pages=%" PRIu64 "\n", d->request_id, d->base_pages, d->granted_pages,
               d->max_pages);
        rc = 0;
    } else if (status == XSPROTO_REJECTED) {
        printf("rejected request-id=%" PRIu64 " code=%s known=%s\n", xsproto_request_id(h),
               xsproto_rejection_code(h), xsproto_rejection_code_known(h) ? "yes" : "no");
        rc = 3;
    } else if (status == XSPROTO_TIMED_OUT) {
        rc = 4;
    }
    if (status != XSPROTO_GRANTED)
        fprintf(stderr, "xsproto-test: %s: %s\n", xsproto_status_name(status),
                xsproto_error(h));
    xsproto_close(h);
    return rc;
}

static int usage(void)
{
    fprintf(stderr, "usage: xsproto-test unit | lab DOMID | hostile DOMID | "
                    "ask DOMID PAGES [REASON [TIMEOUT_MS]]\n");
    return 2;
}

int main(int argc, char **argv)
{
    uint32_t domid;
    uint64_t pages, timeout = 0;

    if (argc == 2 && strcmp(argv[1], "unit") == 0)
        return run_unit();
    if (argc < 3 || !parse_domid(argv[2], &domid))
        return usage();
    if (argc == 3 && strcmp(argv[1], "lab") == 0)
        return run_lab(domid);
    if (argc == 3 && strcmp(argv[1], "hostile") == 0)
        return run_hostile(domid);
    if (argc >= 4 && argc <= 6 && strcmp(argv[1], "ask") == 0 &&
        xsproto_parse_decimal(argv[3], strlen(argv[3]), 0, UINT64_MAX, &pages) &&
        (argc < 6 || xsproto_parse_decimal(argv[5], strlen(argv[5]), 1, UINT32_MAX, &timeout)))
        return run_ask(domid, pages, argc >= 5 ? argv[4] : "", (unsigned)timeout);
    return usage();
}

/*
 * test_xsproto.c: libxsproto's tests, one binary (built static, and with
 * AddressSanitizer) with four modes:
 *
 *   xsproto-test unit                  the pure parts: grammar, records, state machine
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

/* A valid granted record's nodes, to break one at a time. */
static void granted_nodes(struct xsp_raw n[XSP_DECISION_KEYS])
{
    n[XSP_D_VERSION] = raw("1");
    n[XSP_D_STATE] = raw("granted");
    n[XSP_D_ORIGIN] = raw("request");
    n[XSP_D_REQUEST_ID] = raw("3");
    n[XSP_D_BASE_PAGES] = raw("33024");
    n[XSP_D_GRANTED_PAGES] = raw("64");
    n[XSP_D_MAX_PAGES] = raw("33088");
    n[XSP_D_REASON] = raw("");
}

struct broken {
    enum xsp_decision_key key;
    const char *value;  /* NULL: the key is missing */
    const char *message;  /* expected in the error */
};

static void unit_decision(struct suite *s)
{
    static const struct broken cases[] = {
        {XSP_D_VERSION, NULL, "/d/version: version missing, expected 1"},
        {XSP_D_VERSION, "2", "/d/version: version '2', expected 1"},
        {XSP_D_STATE, NULL, "/d/state: missing"},
        {XSP_D_STATE, "Granted", "/d/state: 'Granted' is not one of: applying, granted, "
                                 "rejected"},
        {XSP_D_ORIGIN, NULL, "/d/origin: missing"},
        {XSP_D_ORIGIN, "restored", "/d/origin: 'restored' is not one of"},
        {XSP_D_REQUEST_ID, "-3", "/d/request-id: not a canonical decimal: '-3'"},
        {XSP_D_REQUEST_ID, "9223372036854775808", "/d/request-id: '9223372036854775808' "
                                                  "outside [0, 9223372036854775807]"},
        {XSP_D_BASE_PAGES, "4294967296", "/d/base-pages: '4294967296' outside"},
        {XSP_D_GRANTED_PAGES, " 64", "/d/granted-pages: not a canonical decimal: ' 64'"},
        {XSP_D_GRANTED_PAGES, "0x40", "/d/granted-pages: not a canonical decimal"},
        {XSP_D_MAX_PAGES, "33089", "/d: inconsistent record: max-pages must equal "
                                   "base-pages + granted-pages"},
        {XSP_D_REASON, "ok", "/d: inconsistent record: reason must be empty"},
        {XSP_D_REASON, "\x1b[2J", "/d/reason: not printable ASCII: '\\x1b[2J'"},
        {XSP_D_ORIGIN, "restore", "/d: inconsistent record: a restore origin needs "
                                  "request-id 0"},
    };
    struct xsp_raw n[XSP_DECISION_KEYS];
    struct xsproto_decision d;
    char err[XSPROTO_ERROR_MAX];
    char code[XSP_CODE_MAX + 1];
    const char *detail;

    granted_nodes(n);
    CHECK(s, xsp_parse_decision(n, "/d", &d, err, sizeof err) == 1 &&
                 d.state == XSPROTO_STATE_GRANTED && d.origin == XSPROTO_ORIGIN_REQUEST &&
                 d.request_id == 3 && d.base_pages == 33024 && d.granted_pages == 64 &&
                 d.max_pages == 33088 && d.reason[0] == '\0', "valid granted: %s", err);
    memset(n, 0, sizeof n);
    CHECK(s, xsp_parse_decision(n, "/d", &d, err, sizeof err) == 0, "no record");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        granted_nodes(n);
        n[cases[i].key] = raw(cases[i].value);
        err[0] = '\0';
        CHECK(s, xsp_parse_decision(n, "/d", &d, err, sizeof err) == -1 &&
                     strstr(err, cases[i].message) == err,
              "case %zu: got '%s', expected '%s'", i, err, cases[i].message);
    }
    granted_nodes(n);
    n[XSP_D_GRANTED_PAGES] = (struct xsp_raw){"64\0", 3};
    CHECK(s, xsp_parse_decision(n, "/d", &d, err, sizeof err) == -1 &&
                 strstr(err, "'64\\x00'") != NULL, "NUL in a number: %s", err);

    granted_nodes(n);
    n[XSP_D_STATE] = raw("rejected");
    n[XSP_D_MAX_PAGES] = raw("1");  /* a rejection reports Xen's limit as observed */
    n[XSP_D_REASON] = raw("over-domain-cap: /x/pages: 9000 > cap 8192");
    CHECK(s, xsp_parse_decision(n, "/d", &d, err, sizeof err) == 1 &&
                 xsp_rejection(d.reason, code, &detail) && strcmp(code, "over-domain-cap") == 0 &&
                 strcmp(detail, "/x/pages: 9000 > cap 8192") == 0 && xsp_code_known(code),
          "rejection: %s", err);
    n[XSP_D_REASON] = raw("a-rule-from-the-future: why");
    CHECK(s, xsp_parse_decision(n, "/d", &d, err, sizeof err) == 1 &&
                 xsp_rejection(d.reason, code, &detail) && !xsp_code_known(code),
          "unknown code is still a rejection: %s", err);
    static const char *const bad_reasons[] = {"no code", "Bad-code: x", ": x", "code:x", ""};
    for (size_t i = 0; i < sizeof bad_reasons / sizeof bad_reasons[0]; i++) {
        n[XSP_D_REASON] = raw(bad_reasons[i]);
        CHECK(s, xsp_parse_decision(n, "/d", &d, err, sizeof err) == -1 &&
                     strstr(err, "<code>: <detail>") != NULL,
              "rejection reason '%s': %s", bad_reasons[i], err);
    }
    granted_nodes(n);
    n[XSP_D_ORIGIN] = raw("restore");
    n[XSP_D_REQUEST_ID] = raw("0");
    CHECK(s, xsp_parse_decision(n, "/d", &d, err, sizeof err) == 1 &&
                 d.origin == XSPROTO_ORIGIN_RESTORE, "restored record: %s", err);
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
    char dir[XSP_PATH_MAX];
    char path[XSP_PATH_MAX];

    xsp_request_dir(dir, XSPROTO_DOMID_MAX, XSPROTO_DOMID_MAX);
    xsp_join(path, dir, "request-id");
    CHECK(s, strcmp(path, "/local/domain/32751/device-model/32751/extra-pages/request-id") ==
                 0, "%s", path);
    xsp_decision_dir(path, 7);
    CHECK(s, strcmp(path, "/libxl/7/extra-pages") == 0, "%s", path);
    CHECK(s, strcmp(xsproto_status_name(XSPROTO_TIMED_OUT), "timed-out") == 0, "status name");
}

static int run_unit(void)
{
    struct suite s = {"unit", 0, 0};

    unit_decimal(&s);
    unit_text(&s);
    unit_decision(&s);
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
                  strstr(xsproto_error(h), "/reason: longer than 128 bytes") != NULL,
          "long reason: %s", xsproto_error(h));
    CHECK(&s, xsproto_request(h, 1, "tab\there", 0) == XSPROTO_EINVAL &&
                  strstr(xsproto_error(h), "not printable ASCII") != NULL,
          "control character: %s", xsproto_error(h));
    CHECK(&s, xsproto_request(h, XSPROTO_PAGES_MAX + 1, "", 0) == XSPROTO_EINVAL &&
                  strstr(xsproto_error(h), "/pages: 4294967296 outside") != NULL,
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

/* A node of a hostile decision; value lengths are explicit (NULs). */
struct node {
    const char *key;
    const char *value;  /* NULL: left out */
    size_t len;
};

#define SET(k, v) {k, v, sizeof(v) - 1}
#define DROP(k) {k, NULL, 0}
#define CHANGES 2

/* Write /libxl/D/extra-pages as the watcher would (dom0-owned), in one
 * transaction, replacing what was there. */
static bool write_decision(struct xs_handle *xs, uint32_t domid,
                           const struct node nodes[XSP_DECISION_KEYS])
{
    char dir[XSP_PATH_MAX];
    char path[XSP_PATH_MAX];
    struct xs_permissions perms = {.id = 0, .perms = XS_PERM_NONE};

    xsp_decision_dir(dir, domid);
    for (int attempt = 0; attempt < 20; attempt++) {
        xs_transaction_t t = xs_transaction_start(xs);
        bool ok = t != XBT_NULL;
        xs_rm(xs, t, dir);
        ok = ok && xs_mkdir(xs, t, dir) && xs_set_permissions(xs, t, dir, &perms, 1);
        for (int k = 0; ok && k < XSP_DECISION_KEYS; k++) {
            if (nodes[k].value == NULL)
                continue;
            xsp_join(path, dir, nodes[k].key);
            ok = xs_write(xs, t, path, nodes[k].value, (unsigned)nodes[k].len);
        }
        if (!ok) {
            xs_transaction_end(xs, t, true);
            return false;
        }
        if (xs_transaction_end(xs, t, false))
            return true;
        if (errno != EAGAIN)
            return false;
    }
    return false;
}

static void remove_decision(struct xs_handle *xs, uint32_t domid)
{
    char dir[XSP_PATH_MAX];

    xsp_decision_dir(dir, domid);
    xs_rm(xs, XBT_NULL, dir);
}

/* Ask for 16 pages, then answer as a (hostile) watcher: a grant of 16 pages
 * for the id asked, with `change` applied; return what the client made of it. */
static xsproto_status answer(struct suite *s, struct xs_handle *xs, xsproto *h,
                             uint32_t domid, const struct node change[CHANGES],
                             unsigned timeout_ms)
{
    char id[24];
    xsproto_status status = xsproto_request(h, 16, "hostile", timeout_ms);

    if (!CHECK(s, status == XSPROTO_PENDING, "request: %s", xsproto_error(h)))
        return status;
    snprintf(id, sizeof id, "%" PRIu64, xsproto_request_id(h));
    struct node nodes[XSP_DECISION_KEYS] = {
        SET("version", "1"), SET("state", "granted"), SET("origin", "request"),
        {"request-id", id, strlen(id)}, SET("base-pages", "33024"),
        SET("granted-pages", "16"), SET("max-pages", "33040"), SET("reason", ""),
    };
    for (int c = 0; c < CHANGES && change[c].key != NULL; c++) {
        for (int k = 0; k < XSP_DECISION_KEYS; k++) {
            if (strcmp(nodes[k].key, change[c].key) == 0)
                nodes[k] = change[c];
        }
    }
    CHECK(s, write_decision(xs, domid, nodes), "write: %s", strerror(errno));
    return xsproto_wait(h);
}

struct hostile {
    const char *what;
    struct node change[CHANGES];
    const char *message;  /* expected in the error */
};

static int run_hostile(uint32_t domid)
{
    static const struct hostile cases[] = {
        {"max-pages above base + granted", {SET("max-pages", "99999")},
         "inconsistent record: max-pages must equal base-pages + granted-pages"},
        {"a leading zero", {SET("granted-pages", "016")},
         "/granted-pages: not a canonical decimal: '016'"},
        {"a sign", {SET("granted-pages", "+16")},
         "/granted-pages: not a canonical decimal: '+16'"},
        {"hex", {SET("max-pages", "0x8110")}, "/max-pages: not a canonical decimal: '0x8110'"},
        {"a NUL", {SET("granted-pages", "16\0")},
         "/granted-pages: not a canonical decimal: '16\\x00'"},
        {"base-pages beyond 32 bits", {SET("base-pages", "4294967296")},
         "/base-pages: '4294967296' outside [0, 4294967295]"},
        {"a request-id beyond 64 bits", {SET("request-id", "99999999999999999999")},
         "/request-id: '99999999999999999999' outside"},
        {"a state in capitals", {SET("state", "GRANTED")},
         "/state: 'GRANTED' is not one of: applying, granted, rejected"},
        {"another version", {SET("version", "2")}, "/version: version '2', expected 1"},
        {"a key missing", {DROP("origin")}, "/origin: missing"},
        {"a grant with a reason", {SET("reason", "because")},
         "inconsistent record: reason must be empty"},
        {"a rejection without a code", {SET("state", "rejected"), SET("reason", "no")},
         "a rejection's reason must be '<code>: <detail>'"},
        {"a terminal escape", {SET("state", "rejected"), SET("reason", "bad-value: \x1b[2J")},
         "/reason: not printable ASCII: 'bad-value: \\x1b[2J'"},
        {"a restore origin answering a request", {SET("origin", "restore")},
         "inconsistent record: a restore origin needs request-id 0"},
        {"a grant for an id never written", {SET("request-id", "4000000000")},
         "/extra-pages: decision for request-id 4000000000, newest asked"},
    };
    static const struct node none[CHANGES] = {{NULL, NULL, 0}};
    static const struct node applying[CHANGES] = {SET("state", "applying")};
    static const struct node future[CHANGES] = {
        SET("state", "rejected"), SET("reason", "quota-of-the-future: 16 > 0")};
    struct suite s = {"hostile", 0, 0};
    struct xs_handle *xs = xs_open(0);
    char dir[XSP_PATH_MAX];
    xsproto_status status;

    if (xs == NULL) {
        perror("xs_open");
        return 1;
    }
    remove_decision(xs, domid);
    xsproto *h = open_or_die(domid);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        status = answer(&s, xs, h, domid, cases[i].change, LAB_TIMEOUT_MS);
        CHECK(&s, status == XSPROTO_EPROTO && strstr(xsproto_error(h), cases[i].message),
              "%s: %s (%s), expected a protocol error with '%s'", cases[i].what,
              xsproto_status_name(status), xsproto_error(h), cases[i].message);
        printf("hostile: %s -> %s: %s\n", cases[i].what, xsproto_status_name(status),
               xsproto_error(h));
        remove_decision(xs, domid);
    }

    /* No decision directory at all: a timeout that says so, never a grant. */
    status = xsproto_ask(h, 16, "hostile: nobody answers", SHORT_TIMEOUT_MS);
    CHECK(&s, status == XSPROTO_TIMED_OUT && xsproto_decision(h) == NULL &&
                  strstr(xsproto_error(h), "/libxl/") != NULL &&
                  strstr(xsproto_error(h), "does not exist") != NULL,
          "missing directory: %s (%s)", xsproto_status_name(status), xsproto_error(h));
    printf("hostile: a missing decision directory -> %s: %s\n", xsproto_status_name(status),
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
    xsp_request_dir(dir, 0, NO_SUCH_DOMAIN);
    unsigned len;
    void *left = xs_read(xs, XBT_NULL, dir, &len);
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

/*
 * client.c: the handle and its xenstore I/O (see xsproto.h). What to decide
 * is protocol.c's; this file reads and writes, in transactions retried while
 * xenstored answers EAGAIN, as xsproto/adapters/xenstore.py does.
 */
#define _POSIX_C_SOURCE 200809L

#include "protocol.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xenstore.h>

#define WATCH_TOKEN "xsproto-decision"
/* Relative: xenstored resolves it in the caller's own domain's home. */
#define OWN_DOMID_PATH "domid"
#define TRANSACTION_ATTEMPTS 20
/* Upper bound of the first wait after a conflict, doubled after each one. */
#define BACKOFF_FIRST_US 2000u
#define BACKOFF_MAX_US 200000u
#define DECIMAL_BUF 24

struct xsproto {
    struct xs_handle *xs;
    unsigned domid;
    unsigned dm_domid;
    char request_dir[XSP_PATH_MAX];
    char decision_dir[XSP_PATH_MAX];
    struct xsp_side side;
    /* Of the last request: XSPROTO_PENDING while it waits. */
    xsproto_status outcome;
    unsigned timeout_ms;
    uint64_t deadline_ms;
    bool have_decision;
    struct xsproto_decision decision;
    char code[XSP_CODE_MAX + 1];
    char detail[XSPROTO_DECISION_REASON_MAX + 1];
    bool code_known;
    /* What the last failed operation failed with, and why. */
    xsproto_status failure;
    char error[XSPROTO_ERROR_MAX];
    /* State of the jitter of transaction retries (xorshift64). */
    uint64_t rng;
};

/* What a transaction's body asks for. */
enum tx {
    TX_COMMIT,  /* done: commit */
    TX_RETRY,   /* xenstored said EAGAIN: start over */
    TX_FAIL,    /* give up: h->failure and h->error say why */
};

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static bool transient(int err)
{
    return err == EAGAIN || err == EINTR || err == EBUSY;
}

static bool set_error(xsproto *h, xsproto_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Record a failure; returns false, for `return set_error(...)`. */
static bool set_error(xsproto *h, xsproto_status status, const char *fmt, ...)
{
    va_list ap;

    h->failure = status;
    va_start(ap, fmt);
    vsnprintf(h->error, sizeof h->error, fmt, ap);
    va_end(ap);
    return false;
}

static void backoff(xsproto *h, int conflicts)
{
    unsigned cap = BACKOFF_FIRST_US << (conflicts < 7 ? conflicts - 1 : 7);

    if (cap > BACKOFF_MAX_US)
        cap = BACKOFF_MAX_US;
    h->rng ^= h->rng << 13;
    h->rng ^= h->rng >> 7;
    h->rng ^= h->rng << 17;
    unsigned us = (unsigned)(h->rng % (cap + 1u));
    struct timespec ts = {0, (long)us * 1000};
    nanosleep(&ts, NULL);
}

/* Run body(h, t, arg) in a transaction until it commits, fails, or conflicts
 * TRANSACTION_ATTEMPTS times. */
static bool transact(xsproto *h, enum tx (*body)(xsproto *, xs_transaction_t, void *),
                     void *arg)
{
    for (int attempt = 1; attempt <= TRANSACTION_ATTEMPTS; attempt++) {
        xs_transaction_t t = xs_transaction_start(h->xs);
        if (t == XBT_NULL)
            return set_error(h, XSPROTO_EXENSTORE, "cannot start a transaction: %s",
                             strerror(errno));
        enum tx what = body(h, t, arg);
        if (what != TX_COMMIT) {
            int saved = errno;
            xs_transaction_end(h->xs, t, true);
            errno = saved;
            if (what == TX_FAIL)
                return false;
        } else if (xs_transaction_end(h->xs, t, false)) {
            return true;
        } else if (!transient(errno)) {
            return set_error(h, XSPROTO_EXENSTORE, "transaction commit failed: %s",
                             strerror(errno));
        }
        backoff(h, attempt);
    }
    return set_error(h, XSPROTO_EXENSTORE,
                     "transaction still conflicting after %d attempts",
                     TRANSACTION_ATTEMPTS);
}

/* Read one node into *raw (value NULL when absent; free() it after use). */
static enum tx read_node(xsproto *h, xs_transaction_t t, const char *path,
                         struct xsp_raw *raw)
{
    unsigned len = 0;

    errno = 0;
    raw->value = xs_read(h->xs, t, path, &len);
    raw->len = len;
    if (raw->value != NULL || errno == ENOENT)
        return TX_COMMIT;
    if (transient(errno))
        return TX_RETRY;
    set_error(h, XSPROTO_EXENSTORE, "%s: cannot read: %s", path, strerror(errno));
    return TX_FAIL;
}

/* The decision directory's raw nodes, read within t. */
struct decision_nodes {
    struct xsp_raw raw[XSP_DECISION_KEYS];
};

static void free_nodes(struct decision_nodes *n)
{
    for (int k = 0; k < XSP_DECISION_KEYS; k++) {
        free((void *)n->raw[k].value);
        n->raw[k].value = NULL;
    }
}

static enum tx read_decision_nodes(xsproto *h, xs_transaction_t t, struct decision_nodes *n)
{
    char path[XSP_PATH_MAX];

    free_nodes(n);
    for (int k = 0; k < XSP_DECISION_KEYS; k++) {
        xsp_join(path, h->decision_dir, xsp_decision_key((enum xsp_decision_key)k));
        enum tx what = read_node(h, t, path, &n->raw[k]);
        if (what != TX_COMMIT)
            return what;
    }
    return TX_COMMIT;
}

static enum tx decision_body(xsproto *h, xs_transaction_t t, void *arg)
{
    return read_decision_nodes(h, t, arg);
}

int xsproto_read_decision(xsproto *h, struct xsproto_decision *out)
{
    struct decision_nodes n = {0};
    int found = -1;

    if (transact(h, decision_body, &n)) {
        found = xsp_parse_decision(n.raw, h->decision_dir, out, h->error, sizeof h->error);
        if (found < 0)
            h->failure = XSPROTO_EPROTO;
    }
    free_nodes(&n);
    return found;
}

static void copy_error(char *err, size_t errlen, const char *message)
{
    if (errlen > 0)
        snprintf(err, errlen, "%s", message);
}

/* The domain this process runs in, as xenstore says (0 when it does not). */
static bool own_domid(xsproto *h, int *out)
{
    struct xsp_raw raw;
    uint64_t value;

    enum tx what = read_node(h, XBT_NULL, OWN_DOMID_PATH, &raw);
    if (what == TX_RETRY)
        return set_error(h, XSPROTO_EXENSTORE, "%s: cannot read: %s", OWN_DOMID_PATH,
                         strerror(errno));
    if (what == TX_FAIL)
        return false;
    if (raw.value == NULL) {
        *out = 0;
        return true;
    }
    bool ok = xsp_decimal(raw, OWN_DOMID_PATH, 0, XSPROTO_DOMID_MAX, &value, h->error,
                          sizeof h->error);
    free((void *)raw.value);
    if (!ok) {
        h->failure = XSPROTO_EPROTO;
        return false;
    }
    *out = (int)value;
    return true;
}

xsproto *xsproto_open(uint32_t domid, int dm_domid, char *err, size_t errlen)
{
    char text[DECIMAL_BUF];

    if (domid > XSPROTO_DOMID_MAX ||
        (dm_domid != XSPROTO_DM_SELF && (dm_domid < 0 || dm_domid > (int)XSPROTO_DOMID_MAX))) {
        snprintf(text, sizeof text, "%d", dm_domid);
        if (errlen > 0)
            snprintf(err, errlen, "not a domain id: %" PRIu32 " (device model %s)", domid,
                     dm_domid == XSPROTO_DM_SELF ? "self" : text);
        errno = EINVAL;
        return NULL;
    }
    xsproto *h = calloc(1, sizeof *h);
    if (h == NULL) {
        copy_error(err, errlen, "out of memory");
        return NULL;
    }
    h->domid = domid;
    h->outcome = XSPROTO_PENDING;
    h->rng = ((uint64_t)(uintptr_t)h ^ now_ms()) | 1u;
    h->xs = xs_open(0);
    if (h->xs == NULL) {
        if (errlen > 0)
            snprintf(err, errlen, "cannot connect to xenstore: %s", strerror(errno));
        free(h);
        return NULL;
    }
    if (dm_domid == XSPROTO_DM_SELF && !own_domid(h, &dm_domid))
        goto fail;
    h->dm_domid = (unsigned)dm_domid;
    xsp_request_dir(h->request_dir, h->dm_domid, domid);
    xsp_decision_dir(h->decision_dir, domid);
    if (xs_fileno(h->xs) < 0) {
        set_error(h, XSPROTO_EXENSTORE, "cannot get xenstore's watch fd: %s", strerror(errno));
        goto fail;
    }
    if (!xs_watch(h->xs, h->decision_dir, WATCH_TOKEN)) {
        set_error(h, XSPROTO_EXENSTORE, "%s: cannot watch: %s", h->decision_dir,
                  strerror(errno));
        goto fail;
    }
    return h;
fail:
    copy_error(err, errlen, h->error);
    xs_close(h->xs);
    free(h);
    return NULL;
}

void xsproto_close(xsproto *h)
{
    if (h == NULL)
        return;
    xs_unwatch(h->xs, h->decision_dir, WATCH_TOKEN);
    xs_close(h->xs);
    free(h);
}

/* One request: what to write, and what the transaction found. */
struct ask {
    uint64_t pages;
    const char *reason;
    uint64_t request_id;
    struct decision_nodes nodes;
    int decided;  /* 1: a decision record was there, 0: none */
    struct xsproto_decision decision;
};

static enum tx write_node(xsproto *h, xs_transaction_t t, enum xsp_request_key key,
                          const char *value)
{
    char path[XSP_PATH_MAX];

    xsp_join(path, h->request_dir, xsp_request_key(key));
    if (xs_write(h->xs, t, path, value, (unsigned)strlen(value)))
        return TX_COMMIT;
    if (transient(errno))
        return TX_RETRY;
    set_error(h, XSPROTO_EXENSTORE, "%s: cannot write: %s", path, strerror(errno));
    return TX_FAIL;
}

/* Local rejection: the guest's home is gone, so nobody could decide. */
static void reject_locally(xsproto *h, const char *code, const char *detail)
{
    snprintf(h->code, sizeof h->code, "%s", code);
    snprintf(h->detail, sizeof h->detail, "%s", detail);
    h->code_known = xsp_code_known(code);
    set_error(h, XSPROTO_REJECTED, "domain %u: rejected (%s): %s", h->domid, code, detail);
}

static enum tx ask_body(xsproto *h, xs_transaction_t t, void *arg)
{
    struct ask *a = arg;
    char path[XSP_PATH_MAX];
    char text[DECIMAL_BUF];
    struct xsp_raw written = {NULL, 0};
    uint64_t written_id = 0;
    unsigned children = 0;
    enum tx what;

    xsp_domain_dir(path, h->domid);
    char **names = xs_directory(h->xs, t, path, &children);
    if (names == NULL && transient(errno))
        return TX_RETRY;
    if (names == NULL && errno != ENOENT) {
        set_error(h, XSPROTO_EXENSTORE, "%s: cannot list: %s", path, strerror(errno));
        return TX_FAIL;
    }
    free(names);
    if (children == 0) {
        char detail[XSP_PATH_MAX + 32];
        snprintf(detail, sizeof detail, "%s does not exist", path);
        reject_locally(h, "no-such-domain", detail);
        return TX_FAIL;
    }
    xsp_join(path, h->request_dir, xsp_request_key(XSP_R_REQUEST_ID));
    if ((what = read_node(h, t, path, &written)) != TX_COMMIT)
        return what;
    /* An unreadable id there counts as none: the decided one still bounds it. */
    if (written.value != NULL)
        xsp_decimal(written, path, 1, XSPROTO_REQUEST_ID_MAX, &written_id, NULL, 0);
    free((void *)written.value);
    if ((what = read_decision_nodes(h, t, &a->nodes)) != TX_COMMIT)
        return what;
    a->decided = xsp_parse_decision(a->nodes.raw, h->decision_dir, &a->decision, h->error,
                                    sizeof h->error);
    if (a->decided < 0) {
        h->failure = XSPROTO_EPROTO;
        return TX_FAIL;
    }
    if (!xsp_next_id(&h->side, written_id, a->decided ? &a->decision : NULL,
                     &a->request_id)) {
        set_error(h, XSPROTO_EPROTO,
                  "%s: no request-id left: remove the request and decision directories "
                  "to start over", h->request_dir);
        return TX_FAIL;
    }
    snprintf(text, sizeof text, "%d", XSPROTO_PROTOCOL_VERSION);
    if ((what = write_node(h, t, XSP_R_VERSION, text)) != TX_COMMIT)
        return what;
    snprintf(text, sizeof text, "%" PRIu64, a->pages);
    if ((what = write_node(h, t, XSP_R_PAGES, text)) != TX_COMMIT)
        return what;
    if ((what = write_node(h, t, XSP_R_REASON, a->reason)) != TX_COMMIT)
        return what;
    snprintf(text, sizeof text, "%" PRIu64, a->request_id);
    return write_node(h, t, XSP_R_REQUEST_ID, text);
}

xsproto_status xsproto_request(xsproto *h, uint64_t pages, const char *reason,
                               unsigned timeout_ms)
{
    struct ask a = {.pages = pages, .reason = reason ? reason : ""};
    char path[XSP_PATH_MAX];

    h->error[0] = '\0';
    xsp_join(path, h->request_dir, xsp_request_key(XSP_R_PAGES));
    if (pages > XSPROTO_PAGES_MAX) {
        set_error(h, XSPROTO_EINVAL, "%s: %" PRIu64 " outside [0, %" PRIu64 "]", path, pages,
                  XSPROTO_PAGES_MAX);
        return h->failure;
    }
    xsp_join(path, h->request_dir, xsp_request_key(XSP_R_REASON));
    if (!xsp_text((struct xsp_raw){a.reason, strlen(a.reason)}, path, XSPROTO_REASON_MAX,
                  h->error, sizeof h->error)) {
        h->failure = XSPROTO_EINVAL;
        return h->failure;
    }
    bool written = transact(h, ask_body, &a);
    free_nodes(&a.nodes);
    if (!written)
        return h->failure;
    h->have_decision = a.decided == 1;
    if (h->have_decision)
        h->decision = a.decision;
    h->side.phase = XSP_REQUESTED;
    h->side.request_id = a.request_id;
    h->timeout_ms = timeout_ms ? timeout_ms : XSPROTO_DEFAULT_TIMEOUT_MS;
    h->deadline_ms = now_ms() + h->timeout_ms;
    h->code[0] = h->detail[0] = '\0';
    h->code_known = false;
    h->outcome = XSPROTO_PENDING;
    return XSPROTO_PENDING;
}

static xsproto_status finish(xsproto *h, xsproto_status outcome)
{
    h->outcome = outcome;
    return outcome;
}

static const char *const STATE_NAMES[] = {"applying", "granted", "rejected"};

static xsproto_status time_out(xsproto *h)
{
    h->side.phase = XSP_TIMED_OUT;
    if (h->have_decision) {
        set_error(h, XSPROTO_TIMED_OUT,
                  "domain %u: no decision for request-id %" PRIu64 " within %u ms "
                  "(%s holds request-id %" PRIu64 ", %s)", h->domid, h->side.request_id,
                  h->timeout_ms, h->decision_dir, h->decision.request_id,
                  STATE_NAMES[h->decision.state]);
    } else {
        set_error(h, XSPROTO_TIMED_OUT,
                  "domain %u: no decision for request-id %" PRIu64 " within %u ms "
                  "(%s does not exist: is the watcher running?)", h->domid,
                  h->side.request_id, h->timeout_ms, h->decision_dir);
    }
    return finish(h, XSPROTO_TIMED_OUT);
}

static xsproto_status rejected(xsproto *h)
{
    const char *detail = "";

    xsp_rejection(h->decision.reason, h->code, &detail);  /* checked when parsed */
    snprintf(h->detail, sizeof h->detail, "%s", detail);
    h->code_known = xsp_code_known(h->code);
    if (h->code_known)
        set_error(h, XSPROTO_REJECTED, "domain %u: rejected (%s): %s", h->domid, h->code,
                  h->detail);
    else
        set_error(h, XSPROTO_REJECTED,
                  "domain %u: rejected with a code unknown to this client (%s): %s",
                  h->domid, h->code, h->detail);
    return finish(h, XSPROTO_REJECTED);
}

/* Read and drop the pending watch events: the decision is read afresh anyway. */
static bool drain_events(xsproto *h)
{
    char **event;

    while ((event = xs_check_watch(h->xs)) != NULL)
        free(event);
    if (errno == EAGAIN || errno == EINTR)
        return true;
    return set_error(h, XSPROTO_EXENSTORE, "%s: cannot read watch events: %s",
                     h->decision_dir, strerror(errno));
}

xsproto_status xsproto_poll(xsproto *h)
{
    struct xsproto_decision record;

    if (h->side.phase == XSP_IDLE) {
        set_error(h, XSPROTO_EINVAL, "domain %u: nothing asked yet", h->domid);
        return h->failure;
    }
    if (h->outcome != XSPROTO_PENDING)
        return h->outcome;
    if (!drain_events(h))
        return finish(h, h->failure);
    int found = xsproto_read_decision(h, &record);
    if (found < 0)
        return finish(h, h->failure);
    h->have_decision = found == 1;
    if (found == 1)
        h->decision = record;
    if (!xsp_observe(&h->side, found == 1 ? &record : NULL, h->decision_dir, h->error,
                     sizeof h->error))
        return finish(h, XSPROTO_EPROTO);
    if (h->side.phase == XSP_GRANTED)
        return finish(h, XSPROTO_GRANTED);
    if (h->side.phase == XSP_REJECTED)
        return rejected(h);
    if (now_ms() >= h->deadline_ms)
        return time_out(h);
    return XSPROTO_PENDING;
}

xsproto_status xsproto_wait(xsproto *h)
{
    xsproto_status status;

    while ((status = xsproto_poll(h)) == XSPROTO_PENDING) {
        struct pollfd fd = {.fd = xsproto_fd(h), .events = POLLIN};
        if (poll(&fd, 1, xsproto_timeout_ms(h)) < 0 && errno != EINTR) {
            set_error(h, XSPROTO_EXENSTORE, "%s: poll: %s", h->decision_dir, strerror(errno));
            return finish(h, XSPROTO_EXENSTORE);
        }
    }
    return status;
}

xsproto_status xsproto_ask(xsproto *h, uint64_t pages, const char *reason,
                           unsigned timeout_ms)
{
    xsproto_status status = xsproto_request(h, pages, reason, timeout_ms);

    return status == XSPROTO_PENDING ? xsproto_wait(h) : status;
}

xsproto_status xsproto_withdraw(xsproto *h, unsigned timeout_ms)
{
    return xsproto_ask(h, 0, "withdraw", timeout_ms);
}

int xsproto_fd(const xsproto *h)
{
    return xs_fileno(h->xs);
}

int xsproto_timeout_ms(const xsproto *h)
{
    if (h->side.phase != XSP_REQUESTED || h->outcome != XSPROTO_PENDING)
        return -1;
    uint64_t now = now_ms();
    if (now >= h->deadline_ms)
        return 0;
    return h->deadline_ms - now > INT_MAX ? INT_MAX : (int)(h->deadline_ms - now);
}

const struct xsproto_decision *xsproto_decision(const xsproto *h)
{
    return h->have_decision ? &h->decision : NULL;
}

uint64_t xsproto_request_id(const xsproto *h)
{
    return h->side.phase == XSP_IDLE ? 0 : h->side.request_id;
}

uint32_t xsproto_dm_domid(const xsproto *h)
{
    return h->dm_domid;
}

const char *xsproto_rejection_code(const xsproto *h)
{
    return h->code;
}

const char *xsproto_rejection_detail(const xsproto *h)
{
    return h->detail;
}

bool xsproto_rejection_code_known(const xsproto *h)
{
    return h->code_known;
}

const char *xsproto_error(const xsproto *h)
{
    return h->error;
}

const char *xsproto_status_name(xsproto_status s)
{
    static const char *const names[] = {
        "granted", "pending", "rejected", "timed-out", "protocol-error",
        "xenstore-error", "invalid-argument",
    };
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "unknown";
}

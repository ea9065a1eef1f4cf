/*
 * client.c: the handle and its xenstore I/O (see xsproto.h). What to decide
 * is protocol.c's; this file reads and writes. Each record is one node, which
 * xenstored reads and writes whole: a decision is one xs_read, a request one
 * xs_write, and no transaction is needed (agents/device_model.py does the
 * same).
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
#define DECIMAL_BUF 24

struct xsproto {
    struct xs_handle *xs;
    unsigned domid;
    unsigned dm_domid;
    char request_node[XSP_PATH_MAX];
    char decision_node[XSP_PATH_MAX];
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
};

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
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

/* Read one node into *raw (value NULL when absent; free() it after use). */
static bool read_node(xsproto *h, const char *path, struct xsp_raw *raw)
{
    unsigned len = 0;

    errno = 0;
    raw->value = xs_read(h->xs, XBT_NULL, path, &len);
    raw->len = len;
    if (raw->value != NULL || errno == ENOENT)
        return true;
    return set_error(h, XSPROTO_EXENSTORE, "%s: cannot read: %s", path, strerror(errno));
}

int xsproto_read_decision(xsproto *h, struct xsproto_decision *out)
{
    struct xsp_raw raw;

    if (!read_node(h, h->decision_node, &raw))
        return -1;
    int found = xsp_parse_decision(raw, h->decision_node, out, h->error, sizeof h->error);
    if (found < 0)
        h->failure = XSPROTO_EPROTO;
    free((void *)raw.value);
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

    if (!read_node(h, OWN_DOMID_PATH, &raw))
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
    xsp_request_node(h->request_node, h->dm_domid, domid);
    xsp_decision_node(h->decision_node, domid);
    if (xs_fileno(h->xs) < 0) {
        set_error(h, XSPROTO_EXENSTORE, "cannot get xenstore's watch fd: %s", strerror(errno));
        goto fail;
    }
    if (!xs_watch(h->xs, h->decision_node, WATCH_TOKEN)) {
        set_error(h, XSPROTO_EXENSTORE, "%s: cannot watch: %s", h->decision_node,
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
    xs_unwatch(h->xs, h->decision_node, WATCH_TOKEN);
    xs_close(h->xs);
    free(h);
}

/* One request: what to write, and what was read before writing it. */
struct ask {
    uint64_t pages;
    const char *reason;
    uint64_t request_id;
    int decided;  /* 1: a decision record was there, 0: none */
    struct xsproto_decision decision;
};

/* Local rejection: the guest's home is gone, so nobody could decide. */
static void reject_locally(xsproto *h, const char *code, const char *detail)
{
    snprintf(h->code, sizeof h->code, "%s", code);
    snprintf(h->detail, sizeof h->detail, "%s", detail);
    h->code_known = xsp_code_known(code);
    set_error(h, XSPROTO_REJECTED, "domain %u: rejected (%s): %s", h->domid, code, detail);
}

/* Check the guest exists, pick the next id above the request and the decision
 * in place, and write the request node: one read each, one write. */
static bool write_request(xsproto *h, struct ask *a)
{
    char path[XSP_PATH_MAX];
    char value[XSP_RECORD_MAX + 1];
    struct xsp_raw raw;
    uint64_t written_id = 0;
    unsigned children = 0;

    xsp_domain_dir(path, h->domid);
    char **names = xs_directory(h->xs, XBT_NULL, path, &children);
    if (names == NULL && errno != ENOENT)
        return set_error(h, XSPROTO_EXENSTORE, "%s: cannot list: %s", path, strerror(errno));
    free(names);
    if (children == 0) {
        char detail[XSP_PATH_MAX + 32];
        snprintf(detail, sizeof detail, "%s does not exist", path);
        reject_locally(h, "no-such-domain", detail);
        return false;
    }
    if (!read_node(h, h->request_node, &raw))
        return false;
    /* An unreadable id there counts as none: the decided one still bounds it. */
    if (!xsp_request_id_in(raw, &written_id))
        written_id = 0;
    free((void *)raw.value);
    if (!read_node(h, h->decision_node, &raw))
        return false;
    a->decided = xsp_parse_decision(raw, h->decision_node, &a->decision, h->error,
                                    sizeof h->error);
    free((void *)raw.value);
    if (a->decided < 0) {
        h->failure = XSPROTO_EPROTO;
        return false;
    }
    if (!xsp_next_id(&h->side, written_id, a->decided ? &a->decision : NULL,
                     &a->request_id))
        return set_error(h, XSPROTO_EPROTO,
                         "%s: no request-id left: remove the request and decision nodes "
                         "to start over", h->request_node);
    size_t len = xsp_encode_request(value, a->pages, a->reason, a->request_id);
    if (!xs_write(h->xs, XBT_NULL, h->request_node, value, (unsigned)len))
        return set_error(h, XSPROTO_EXENSTORE, "%s: cannot write: %s", h->request_node,
                         strerror(errno));
    return true;
}

xsproto_status xsproto_request(xsproto *h, uint64_t pages, const char *reason,
                               unsigned timeout_ms)
{
    struct ask a = {.pages = pages, .reason = reason ? reason : ""};
    char path[XSP_WHERE_MAX];

    h->error[0] = '\0';
    xsp_key_path(path, h->request_node, xsp_request_key(XSP_R_PAGES));
    if (pages > XSPROTO_PAGES_MAX) {
        set_error(h, XSPROTO_EINVAL, "%s: %" PRIu64 " outside [0, %" PRIu64 "]", path, pages,
                  XSPROTO_PAGES_MAX);
        return h->failure;
    }
    xsp_key_path(path, h->request_node, xsp_request_key(XSP_R_REASON));
    if (!xsp_text((struct xsp_raw){a.reason, strlen(a.reason)}, path, XSPROTO_REASON_MAX,
                  h->error, sizeof h->error)) {
        h->failure = XSPROTO_EINVAL;
        return h->failure;
    }
    if (!write_request(h, &a))
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
                  h->timeout_ms, h->decision_node, h->decision.request_id,
                  STATE_NAMES[h->decision.state]);
    } else {
        set_error(h, XSPROTO_TIMED_OUT,
                  "domain %u: no decision for request-id %" PRIu64 " within %u ms "
                  "(%s does not exist: is the watcher running?)", h->domid,
                  h->side.request_id, h->timeout_ms, h->decision_node);
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
                     h->decision_node, strerror(errno));
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
    if (!xsp_observe(&h->side, found == 1 ? &record : NULL, h->decision_node, h->error,
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
            set_error(h, XSPROTO_EXENSTORE, "%s: poll: %s", h->decision_node, strerror(errno));
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

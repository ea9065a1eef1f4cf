/*
 * xsproto.h: the device model's side of xsproto (protocol version 2), in C.
 *
 * A device model such as QEMU sometimes needs guest pages beyond the domain's
 * limit (Xen's max_pages): option ROMs, video RAM. Instead of raising the limit
 * itself it asks the toolstack through xenstore, and populates only once the
 * toolstack has granted the pages and raised the limit. The protocol is
 * specified in docs/protocol.md of the xsproto source; this library is its
 * section 4, "The device model's side", on libxenstore alone.
 *
 * In a nutshell, for guest D whose device model runs in domain M (0 for a dom0
 * QEMU, or a stub domain):
 *
 *   - a request says "D should have N extra pages in TOTAL" (declarative: asking
 *     again for the same N is harmless; 0 gives every extra page back), with a
 *     printable reason for the admin, under a request-id that only grows;
 *   - it is the node /local/domain/M/device-model/D/extra-pages, whose value is
 *     one "key=value" line per key, each ended by a line feed, written with one
 *     xenstore write;
 *   - the toolstack answers in the node /libxl/D/extra-pages (only dom0 can
 *     write there), read with one xenstore read: granted (the limit is raised:
 *     populate now), rejected (a stable code and a human detail: give up, do
 *     not retry the same request), or nothing within the timeout.
 *
 * Everything read back from xenstore is checked against the protocol's strict
 * grammar before use: a decision whose value does not frame (over 1024 bytes,
 * a line not "key=value", no final line feed, a key given twice), a malformed
 * or missing value, a decision for a request-id this device model never
 * wrote, or a record breaking the protocol's invariants is an error
 * (XSPROTO_EPROTO), never a grant.
 *
 * Blocking use, e.g. in QEMU's xen_ram_alloc() before populating:
 *
 *     char err[XSPROTO_ERROR_MAX];
 *     xsproto *h = xsproto_open(xen_domid, XSPROTO_DM_SELF, err, sizeof err);
 *     if (h == NULL) {
 *         error_setg(errp, "%s", err);
 *         return;
 *     }
 *     if (xsproto_ask(h, extra_pages, "option ROMs", 0) != XSPROTO_GRANTED) {
 *         error_setg(errp, "%s", xsproto_error(h));
 *     }
 *     xsproto_close(h);
 *
 * Event-driven use, from the caller's own main loop:
 *
 *     xsproto_request(h, pages, reason, timeout_ms);      returns XSPROTO_PENDING
 *     qemu_set_fd_handler(xsproto_fd(h), on_readable, NULL, h);
 *     arm a timer for xsproto_timeout_ms(h) milliseconds;
 *     in on_readable and in the timer:
 *         s = xsproto_poll(h);
 *         if (s != XSPROTO_PENDING) { remove the handler and the timer; act on s; }
 *
 * A handle is one connection to xenstore for one guest. It is used by one
 * thread at a time. The library keeps no state outside its handles.
 * Link with -lxsproto -lxenstore, the shared libxenstore: its reader thread
 * sorts watch events from replies (Debian's static libxenstore.a has none, and
 * a watch event arriving before a reply then makes it drop the connection).
 */
#ifndef XSPROTO_H
#define XSPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The protocol's version: the value of every record's "version" key. */
#define XSPROTO_PROTOCOL_VERSION 2
/* Largest page count (Xen keeps max_pages in 32 bits). */
#define XSPROTO_PAGES_MAX UINT64_C(4294967295)
/* Largest request-id. */
#define XSPROTO_REQUEST_ID_MAX UINT64_C(9223372036854775807)
/* Largest ordinary domain id (DOMID_FIRST_RESERVED - 1). */
#define XSPROTO_DOMID_MAX 32751u
/* Longest reason a request may give, in bytes (printable ASCII 0x20-0x7e). */
#define XSPROTO_REASON_MAX 128
/* Longest reason of a decision ("<code>: <detail>"), in bytes. */
#define XSPROTO_DECISION_REASON_MAX 256
/* How long a request waits for its decision unless told otherwise. */
#define XSPROTO_DEFAULT_TIMEOUT_MS 30000u
/* Size of a buffer that holds any error message of this library. */
#define XSPROTO_ERROR_MAX 512
/* xsproto_open()'s dm_domid: the domain this process runs in, as xenstore says. */
#define XSPROTO_DM_SELF (-1)

/* The outcome of a call. */
typedef enum xsproto_status {
    /* The pages are granted: Xen's limit is raised; populate them now. */
    XSPROTO_GRANTED = 0,
    /* Asked; no decision for this request yet (event-driven use only). */
    XSPROTO_PENDING,
    /* The toolstack refused: xsproto_rejection_code() and _detail() say why.
     * Do not ask again for the same pages. */
    XSPROTO_REJECTED,
    /* No decision arrived in time (is the watcher running?). Asking again is
     * allowed; it uses a new request-id. */
    XSPROTO_TIMED_OUT,
    /* xenstore holds what the protocol forbids: a malformed decision record, a
     * decision for a request-id this device model never wrote, an exhausted
     * request-id. Never a grant; xsproto_error() names the path and value. */
    XSPROTO_EPROTO,
    /* xenstore refused or failed an operation; xsproto_error() says which. */
    XSPROTO_EXENSTORE,
    /* An argument outside the protocol's grammar (pages, reason, domain id), or
     * a call out of order; nothing was written. */
    XSPROTO_EINVAL,
} xsproto_status;

/* A decision record's state. */
typedef enum xsproto_state {
    XSPROTO_STATE_APPLYING,  /* being applied: keep waiting */
    XSPROTO_STATE_GRANTED,
    XSPROTO_STATE_REJECTED,
} xsproto_state;

/* Why a decision record exists. */
typedef enum xsproto_origin {
    XSPROTO_ORIGIN_REQUEST,  /* it answers a request */
    XSPROTO_ORIGIN_RESTORE,  /* republished after a restore or migration */
} xsproto_origin;

/* A decision record (the node /libxl/D/extra-pages), checked against the grammar and
 * the invariants of the protocol. Page counts are at most XSPROTO_PAGES_MAX. */
struct xsproto_decision {
    xsproto_state state;
    xsproto_origin origin;
    uint64_t request_id;     /* the request answered; 0: restored or none yet */
    uint64_t base_pages;     /* D's limit before any extra pages */
    uint64_t granted_pages;  /* extra pages in force */
    uint64_t max_pages;      /* Xen's limit after the decision */
    /* Empty unless rejected, then "<code>: <detail>". NUL-terminated. */
    char reason[XSPROTO_DECISION_REASON_MAX + 1];
};

/* A connection to xenstore for asking on behalf of guest `domid`. */
typedef struct xsproto xsproto;

/*
 * Open a handle for guest `domid`, whose device model runs in domain
 * `dm_domid` (XSPROTO_DM_SELF: the domain this process runs in, read from
 * xenstore's relative node "domid"; 0 when absent, as for a dom0 QEMU). It
 * watches the guest's decision node from now on.
 *
 * Returns NULL on failure, with a message in err (errlen bytes, may be 0).
 */
xsproto *xsproto_open(uint32_t domid, int dm_domid, char *err, size_t errlen);

/* Close the handle: unwatch, disconnect, free. NULL is allowed. A request
 * already written stays in xenstore (requests are declarative). */
void xsproto_close(xsproto *h);

/*
 * Ask that the guest have `pages` extra pages in total (0: give them all
 * back), for `reason` (printable ASCII, at most XSPROTO_REASON_MAX bytes; NULL
 * means empty), and wait for the decision at most `timeout_ms` (0: the
 * default, XSPROTO_DEFAULT_TIMEOUT_MS). Blocks.
 *
 * Returns XSPROTO_GRANTED (xsproto_decision() holds the granted record),
 * XSPROTO_REJECTED, XSPROTO_TIMED_OUT or an error.
 */
xsproto_status xsproto_ask(xsproto *h, uint64_t pages, const char *reason,
                           unsigned timeout_ms);

/* xsproto_ask(h, 0, "withdraw", timeout_ms): give every extra page back. The
 * limit drops as far as the pages the guest holds allow: free them first. */
xsproto_status xsproto_withdraw(xsproto *h, unsigned timeout_ms);

/*
 * The non-blocking half of xsproto_ask(): write the request and return
 * XSPROTO_PENDING at once (or an error, or XSPROTO_REJECTED when the guest
 * does not exist). The request-id is max(this handle's last id, the id already
 * in the request node, the id last decided) + 1, so a restarted device model
 * never reuses one. Asking again while a request is pending replaces it (the
 * newest id wins).
 */
xsproto_status xsproto_request(xsproto *h, uint64_t pages, const char *reason,
                               unsigned timeout_ms);

/*
 * Take in what happened since the last call without blocking: read the watch
 * events, and the decision record (one read). Returns XSPROTO_PENDING
 * while the request waits; once it has an outcome, returns it again on every
 * call until the next request. Call it when xsproto_fd() is readable and when
 * xsproto_timeout_ms() runs out.
 */
xsproto_status xsproto_poll(xsproto *h);

/* Block until the pending request has an outcome (xsproto_poll() in a loop). */
xsproto_status xsproto_wait(xsproto *h);

/* The file descriptor that becomes readable when the decision node
 * changes: for the caller's main loop (poll, select, qemu_set_fd_handler). */
int xsproto_fd(const xsproto *h);

/* Milliseconds left before the pending request times out (0 when it is due);
 * -1 when no request is pending. */
int xsproto_timeout_ms(const xsproto *h);

/*
 * Read the guest's decision record now (one read) into *out.
 * Returns 1 when there is a record, 0 when there is none yet (the node is
 * absent or empty), -1 when it is malformed or xenstore failed
 * (xsproto_error() says which). It does not change the pending request.
 */
int xsproto_read_decision(xsproto *h, struct xsproto_decision *out);

/* The last decision record read (granted, or rejected for this request, or
 * the one in force before it); NULL when none has been read. */
const struct xsproto_decision *xsproto_decision(const xsproto *h);

/* The request-id of the last request written by this handle (0: none). */
uint64_t xsproto_request_id(const xsproto *h);

/* The device model's domain this handle asks as. */
uint32_t xsproto_dm_domid(const xsproto *h);

/*
 * After XSPROTO_REJECTED: the rejection's code (a stable identifier, e.g.
 * "over-domain-cap") and detail (text for humans). A newer toolstack may use a
 * code this library does not know: it is still a rejection, and
 * xsproto_rejection_code_known() says false. Empty strings otherwise.
 */
const char *xsproto_rejection_code(const xsproto *h);
const char *xsproto_rejection_detail(const xsproto *h);
bool xsproto_rejection_code_known(const xsproto *h);

/* A message for the last outcome other than XSPROTO_GRANTED and
 * XSPROTO_PENDING, naming the domain, the path and the value at fault; "" if
 * there is none. Valid until the next call on the handle. */
const char *xsproto_error(const xsproto *h);

/* The status's name, e.g. "granted", "timed-out". */
const char *xsproto_status_name(xsproto_status s);

/* The protocol's grammar, for callers that check their own values. */

/* Whether raw[0..len) is a canonical ASCII decimal (^(0|[1-9][0-9]*)$, at most
 * 20 bytes: no sign, space, leading zero or NUL) within [lo, hi]; if so, and
 * out is not NULL, its value is stored in *out. */
bool xsproto_parse_decimal(const char *raw, size_t len, uint64_t lo, uint64_t hi,
                           uint64_t *out);

/* Whether raw[0..len) is printable ASCII (0x20-0x7e) of at most max_bytes. */
bool xsproto_text_valid(const char *raw, size_t len, size_t max_bytes);

#ifdef __cplusplus
}
#endif

#endif /* XSPROTO_H */

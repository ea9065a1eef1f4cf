/*
 * protocol.h: the pure part of libxsproto (no I/O), internal to the library and
 * its tests: paths, the value grammar, the records' one-node form (key=value
 * lines), the decision record, and the device model's state machine. It mirrors xsproto/paths.py, values.py, records.py and
 * negotiation.DeviceModelSide; docs/protocol.md is the specification.
 */
#ifndef XSPROTO_PROTOCOL_H
#define XSPROTO_PROTOCOL_H

#include "xsproto.h"

/* Longest path the protocol builds, with its terminating NUL:
 * "/local/domain/32751/device-model/32751/extra-pages". */
#define XSP_PATH_MAX 64
/* How errors name one key of a record: "PATH: KEY" (a key a peer wrote is cut
 * short to fit). */
#define XSP_WHERE_MAX (XSP_PATH_MAX + 48)
/* The longest value a record's node may hold, in bytes (docs/protocol.md,
 * section 1): a decision is at most 403 bytes, a request 194. */
#define XSP_RECORD_MAX 1024
/* Longest rejection code: it is a prefix of a decision's reason. */
#define XSP_CODE_MAX XSPROTO_DECISION_REASON_MAX

/* The decision record's keys, in the order the toolstack writes them: indices
 * into what xsp_split() finds. */
enum xsp_decision_key {
    XSP_D_VERSION,
    XSP_D_STATE,
    XSP_D_ORIGIN,
    XSP_D_REQUEST_ID,
    XSP_D_BASE_PAGES,
    XSP_D_GRANTED_PAGES,
    XSP_D_MAX_PAGES,
    XSP_D_REASON,
    XSP_DECISION_KEYS
};

/* A request's keys, in the order they are written. */
enum xsp_request_key {
    XSP_R_VERSION,
    XSP_R_PAGES,
    XSP_R_REASON,
    XSP_R_REQUEST_ID,
    XSP_REQUEST_KEYS
};

const char *xsp_request_key(enum xsp_request_key key);

/* A node's value (or one key's, within it) as xenstore returned it: raw bytes,
 * not NUL-terminated; value is NULL when the node (or key) is absent. */
struct xsp_raw {
    const char *value;
    size_t len;
};

/* Paths (xsproto/paths.py). The domain ids must be at most XSPROTO_DOMID_MAX. */
void xsp_domain_dir(char out[XSP_PATH_MAX], unsigned domid);
void xsp_request_node(char out[XSP_PATH_MAX], unsigned dm_domid, unsigned domid);
void xsp_decision_node(char out[XSP_PATH_MAX], unsigned domid);
/* How an error names `key` of the record at `where`: "WHERE: KEY". */
void xsp_key_path(char out[XSP_WHERE_MAX], const char *where, const char *key);

/*
 * The value grammar (xsproto/values.py). Each returns true when raw is valid;
 * otherwise it writes "PATH: what is wrong: 'the value, escaped'" into err.
 */
bool xsp_decimal(struct xsp_raw raw, const char *path, uint64_t lo, uint64_t hi,
                 uint64_t *out, char *err, size_t errlen);
bool xsp_text(struct xsp_raw raw, const char *path, size_t max_bytes, char *err,
              size_t errlen);
/* An untrusted value as short printable ASCII, quoted, for messages. */
void xsp_show(char *out, size_t outlen, struct xsp_raw raw);

/*
 * The lines of a record's value (records.split): at most XSP_RECORD_MAX bytes,
 * every line "key=value" ended by a line feed, each key ^[a-z][a-z-]*$ and
 * given once. found[i] is set to the value of keys[i] (value NULL when the key
 * is absent); other keys are ignored. Returns false with "WHERE: what is
 * wrong" (or "WHERE: KEY: given twice") in err when the value does not frame.
 */
bool xsp_split(struct xsp_raw raw, const char *where, const char *const *keys,
               size_t count, struct xsp_raw *found, char *err, size_t errlen);

/*
 * Parse a decision node's value. Returns 1 and fills *out for a valid record,
 * 0 when the node is absent or empty (no record yet), -1 with a message naming
 * the node, the key and the value in err otherwise: a value that does not
 * frame, a missing key, a value outside the grammar, a broken invariant.
 */
int xsp_parse_decision(struct xsp_raw raw, const char *where,
                       struct xsproto_decision *out, char *err, size_t errlen);

/* The request-id a record's value names (0 included): a quick look that checks
 * the framing and that one value only. False when the value is absent or
 * empty, does not frame, or has no readable request-id. */
bool xsp_request_id_in(struct xsp_raw raw, uint64_t *id);

/* A request node's value, its keys in order, NUL-terminated in out; returns
 * its length. pages and reason must be valid (reason printable, at most
 * XSPROTO_REASON_MAX bytes). */
size_t xsp_encode_request(char out[XSP_RECORD_MAX + 1], uint64_t pages,
                          const char *reason, uint64_t request_id);

/* A rejection's reason "<code>: <detail>" split; false if it is not one. The
 * code is any lower-case word: newer toolstacks may add codes. */
bool xsp_rejection(const char *reason, char code[XSP_CODE_MAX + 1],
                   const char **detail);
/* Whether this version of the protocol lists the code. */
bool xsp_code_known(const char *code);

/* The device model's side: idle -> requested(id) -> granted | rejected |
 * timed-out (negotiation.DeviceModelSide). */
enum xsp_phase {
    XSP_IDLE,
    XSP_REQUESTED,
    XSP_GRANTED,
    XSP_REJECTED,
    XSP_TIMED_OUT,
};

struct xsp_side {
    enum xsp_phase phase;
    uint64_t request_id;     /* highest request-id written or seen decided */
    uint64_t granted_pages;  /* extra pages in force by the last decision seen */
};

/*
 * Take in a decision record (NULL: none). While a request is pending, a record
 * for an older id or an applying one changes nothing, a granted or rejected
 * one for its id ends the wait, and one for a newer id is a protocol error
 * (returns false with the message in err). Otherwise it adopts the record's id.
 */
bool xsp_observe(struct xsp_side *side, const struct xsproto_decision *record,
                 const char *decision_node, char *err, size_t errlen);

/*
 * The next request-id: max(side's id, `written` (the id already in the request
 * node, 0 if none or unreadable), the decided id) + 1. False when no id is
 * left below XSPROTO_REQUEST_ID_MAX.
 */
bool xsp_next_id(const struct xsp_side *side, uint64_t written,
                 const struct xsproto_decision *decided, uint64_t *id);

#endif /* XSPROTO_PROTOCOL_H */

/*
 * shim.c: makes an unmodified QEMU ask the toolstack before it populates guest
 * pages beyond the domain's limit. Loaded with LD_PRELOAD by xsproto-qemu.
 *
 * QEMU 7.2 populates its own guest RAM (option ROMs, video RAM) in
 * xen_ram_alloc() with libxenctrl's xc_domain_populate_physmap_exact, which
 * it imports as the versioned symbol xc_domain_populate_physmap_exact@VERS_4.17.0.
 * This file defines that very symbol (shim.map gives it the version), so the
 * dynamic linker binds QEMU's reference here; the real function is reached
 * with dlvsym(RTLD_NEXT, ..., "VERS_4.17.0").
 *
 * Before calling it, the shim reads the domain's page counts: if the pages fit
 * under Xen's limit it asks nothing; otherwise it asks the watcher through
 * libxsproto for what the domain will then hold beyond its base limit (the
 * request is a total, so a later call asks for the sum) and calls the real
 * function only once that is granted. It never raises a limit itself. When
 * the request is not granted the call fails as it does on stock Xen (QEMU then
 * reports "xen: failed to populate ram" and exits), with the reason on
 * stderr, which libxl sends to /var/log/xen/qemu-dm-NAME.log.
 *
 * A QEMU started with -incoming (restore, incoming migration) asks for
 * nothing: the restoring side already applied the pages its image carried.
 */
#define _GNU_SOURCE

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <xenctrl.h>

#include "xsproto.h"

#define POPULATE "xc_domain_populate_physmap_exact"
#define XENCTRL_VERSION "VERS_4.17.0"
#define INCOMING "-incoming"
#define LOG "xsproto-qemu: "

typedef int populate_fn(xc_interface *xch, uint32_t domid, unsigned long nr_extents,
                        unsigned int extent_order, unsigned int mem_flags,
                        xen_pfn_t *extent_start);

/* Whether this process's command line has the argument -incoming (or
 * --incoming): QEMU then receives a migration or a restore. */
static bool incoming(void)
{
    char buf[4096];
    char arg[sizeof INCOMING + 1];
    size_t len = 0;
    bool found = false;
    ssize_t got;
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return false;
    while (!found && (got = read(fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < got && !found; i++) {
            if (buf[i] != '\0') {
                if (len < sizeof arg)
                    arg[len] = buf[i];
                len++;
                continue;
            }
            const char *a = len > 1 && arg[0] == '-' && arg[1] == '-' ? arg + 1 : arg;
            size_t n = a == arg ? len : len - 1;
            found = n == strlen(INCOMING) && memcmp(a, INCOMING, n) == 0;
            len = 0;
        }
    }
    close(fd);
    return found;
}

/* Ask for the pages `count` pages at `first` need beyond the domain's base
 * limit, unless they fit already. 0 when the call may proceed. */
static int make_room(xc_interface *xch, uint32_t domid, uint64_t count, xen_pfn_t first)
{
    xc_domaininfo_t info;
    struct xsproto_decision decision;
    char err[XSPROTO_ERROR_MAX];
    char reason[XSPROTO_REASON_MAX + 1];

    if (xc_domain_getinfolist(xch, domid, 1, &info) != 1 || info.domain != domid) {
        fprintf(stderr, LOG "domain %" PRIu32 ": cannot read its page counts: %s\n", domid,
                strerror(errno));
        return -1;
    }
    if (info.tot_pages <= info.max_pages && count <= info.max_pages - info.tot_pages)
        return 0;
    xsproto *h = xsproto_open(domid, XSPROTO_DM_SELF, err, sizeof err);
    if (h == NULL) {
        fprintf(stderr, LOG "domain %" PRIu32 ": cannot ask for pages: %s\n", domid, err);
        return -1;
    }
    int found = xsproto_read_decision(h, &decision);
    if (found < 0) {
        fprintf(stderr, LOG "%s\n", xsproto_error(h));
        xsproto_close(h);
        return -1;
    }
    /* The base is libxl's limit: recorded at the first decision, else Xen's
     * limit now (nothing was granted yet). */
    uint64_t base = found ? decision.base_pages : info.max_pages;
    uint64_t total = count > UINT64_MAX - info.tot_pages ? UINT64_MAX : info.tot_pages + count;
    uint64_t extra = total > base ? total - base : 0;
    snprintf(reason, sizeof reason,
             "QEMU xen_ram_alloc: %" PRIu64 " pages at pfn 0x%" PRIx64, count,
             (uint64_t)first);
    fprintf(stderr,
            LOG "domain %" PRIu32 ": %" PRIu64 " pages at pfn 0x%" PRIx64 " do not fit "
            "(it holds %" PRIu64 " of max_pages %" PRIu64 "); asking for %" PRIu64
            " extra pages in total above base %" PRIu64 "\n",
            domid, count, (uint64_t)first, (uint64_t)info.tot_pages,
            (uint64_t)info.max_pages, extra, base);
    xsproto_status status = xsproto_ask(h, extra, reason, 0);
    if (status == XSPROTO_GRANTED) {
        fprintf(stderr, LOG "domain %" PRIu32 ": granted (request-id %" PRIu64
                "): max_pages %" PRIu64 "\n", domid, xsproto_request_id(h),
                xsproto_decision(h)->max_pages);
    } else {
        uint64_t now = xc_domain_getinfolist(xch, domid, 1, &info) == 1 ? info.max_pages : 0;
        fprintf(stderr, LOG "%s: not populating; max_pages stays %" PRIu64 "\n",
                xsproto_error(h), now);
    }
    xsproto_close(h);
    return status == XSPROTO_GRANTED ? 0 : -1;
}

int xc_domain_populate_physmap_exact(xc_interface *xch, uint32_t domid,
                                     unsigned long nr_extents, unsigned int extent_order,
                                     unsigned int mem_flags, xen_pfn_t *extent_start)
{
    populate_fn *real = (populate_fn *)dlvsym(RTLD_NEXT, POPULATE, XENCTRL_VERSION);

    if (real == NULL) {
        fprintf(stderr, LOG "no %s@%s after the shim: %s\n", POPULATE, XENCTRL_VERSION,
                dlerror());
        errno = ENOSYS;
        return -1;
    }
    uint64_t count = extent_order < 32 ? (uint64_t)nr_extents << extent_order : UINT64_MAX;

    if (nr_extents > 0 && !incoming() && make_room(xch, domid, count, extent_start[0]) != 0) {
        errno = EBUSY;  /* what Xen's refusal gives on stock Xen */
        return -1;
    }
    return real(xch, domid, nr_extents, extent_order, mem_flags, extent_start);
}

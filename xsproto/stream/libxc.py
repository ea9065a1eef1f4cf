"""The libxc migration stream v2/v3 (docs/specs/libxc-migration-stream.pandoc).

It carries the guest's memory and CPU state and sits inside the libxl stream, after a
LIBXC_CONTEXT record. Constants mirror Xen's ``xen.migration.libxc``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

from xsproto.errors import ImageError
from xsproto.stream.framing import (
    Record,
    read_record_header,
    require_empty,
    skip_record_body,
)
from xsproto.stream.reader import StreamReader

IHDR_FORMAT = "!QIIHHI"
IHDR_SIZE = struct.calcsize(IHDR_FORMAT)
IHDR_MARKER = 0xFFFFFFFFFFFFFFFF
IHDR_IDENT = 0x58454E46  # "XENF"
IHDR_VERSIONS = (2, 3)
IHDR_OPT_BE = 1 << 0
IHDR_OPT_RESZ_MASK = 0xFFFE

DHDR_FORMAT = "=IHHII"
DHDR_SIZE = struct.calcsize(DHDR_FORMAT)
DHDR_TYPE_X86_PV = 0x00000001
DHDR_TYPE_X86_HVM = 0x00000002
DHDR_TYPE_NAMES = {DHDR_TYPE_X86_PV: "x86 PV", DHDR_TYPE_X86_HVM: "x86 HVM"}
PAGE_SHIFT = 12

REC_TYPE_END = 0x00000000
REC_TYPE_PAGE_DATA = 0x00000001
REC_TYPE_X86_PV_INFO = 0x00000002
REC_TYPE_X86_PV_P2M_FRAMES = 0x00000003
REC_TYPE_X86_PV_VCPU_BASIC = 0x00000004
REC_TYPE_X86_PV_VCPU_EXTENDED = 0x00000005
REC_TYPE_X86_PV_VCPU_XSAVE = 0x00000006
REC_TYPE_SHARED_INFO = 0x00000007
REC_TYPE_X86_TSC_INFO = 0x00000008
REC_TYPE_HVM_CONTEXT = 0x00000009
REC_TYPE_HVM_PARAMS = 0x0000000A
REC_TYPE_TOOLSTACK = 0x0000000B
REC_TYPE_X86_PV_VCPU_MSRS = 0x0000000C
REC_TYPE_VERIFY = 0x0000000D
REC_TYPE_CHECKPOINT = 0x0000000E
REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST = 0x0000000F
REC_TYPE_STATIC_DATA_END = 0x00000010
REC_TYPE_X86_CPUID_POLICY = 0x00000011
REC_TYPE_X86_MSR_POLICY = 0x00000012
REC_TYPE_OPTIONAL = 0x80000000
"""Records with this bit set may be skipped by a restorer that does not know them."""

REC_TYPE_NAMES = {
    REC_TYPE_END: "END",
    REC_TYPE_PAGE_DATA: "PAGE_DATA",
    REC_TYPE_X86_PV_INFO: "X86_PV_INFO",
    REC_TYPE_X86_PV_P2M_FRAMES: "X86_PV_P2M_FRAMES",
    REC_TYPE_X86_PV_VCPU_BASIC: "X86_PV_VCPU_BASIC",
    REC_TYPE_X86_PV_VCPU_EXTENDED: "X86_PV_VCPU_EXTENDED",
    REC_TYPE_X86_PV_VCPU_XSAVE: "X86_PV_VCPU_XSAVE",
    REC_TYPE_SHARED_INFO: "SHARED_INFO",
    REC_TYPE_X86_TSC_INFO: "X86_TSC_INFO",
    REC_TYPE_HVM_CONTEXT: "HVM_CONTEXT",
    REC_TYPE_HVM_PARAMS: "HVM_PARAMS",
    REC_TYPE_TOOLSTACK: "TOOLSTACK",
    REC_TYPE_X86_PV_VCPU_MSRS: "X86_PV_VCPU_MSRS",
    REC_TYPE_VERIFY: "VERIFY",
    REC_TYPE_CHECKPOINT: "CHECKPOINT",
    REC_TYPE_CHECKPOINT_DIRTY_PFN_LIST: "CHECKPOINT_DIRTY_PFN_LIST",
    REC_TYPE_STATIC_DATA_END: "STATIC_DATA_END",
    REC_TYPE_X86_CPUID_POLICY: "X86_CPUID_POLICY",
    REC_TYPE_X86_MSR_POLICY: "X86_MSR_POLICY",
}

PAGE_DATA_FORMAT = "=II"
PAGE_DATA_SIZE = struct.calcsize(PAGE_DATA_FORMAT)
PFN_SIZE = 8


@dataclass(frozen=True)
class LibxcHeader:
    """The libxc image header and domain header, which open every libxc stream."""

    offset: int
    version: int
    domain_type: int
    xen_major: int
    xen_minor: int

    @property
    def domain_type_name(self) -> str:
        return DHDR_TYPE_NAMES[self.domain_type]

    @property
    def size(self) -> int:
        return IHDR_SIZE + DHDR_SIZE


def read_header(reader: StreamReader) -> LibxcHeader:
    """Read and check the image header and the domain header."""
    offset = reader.offset
    marker, ident, version, options, res1, res2 = struct.unpack(
        IHDR_FORMAT, reader.read_exact(IHDR_SIZE, "libxc image header"))
    if marker != IHDR_MARKER or ident != IHDR_IDENT:
        raise ImageError(f"bad libxc image header marker/ident 0x{marker:x}/0x{ident:x}",
                         offset=offset)
    if version not in IHDR_VERSIONS:
        raise ImageError(f"unknown libxc stream version {version}", offset=offset + 12)
    if options & IHDR_OPT_RESZ_MASK or res1 or res2:
        raise ImageError("reserved bits set in libxc image header", offset=offset + 16)
    if options & IHDR_OPT_BE:
        raise ImageError("big-endian libxc stream is not supported", offset=offset + 16)
    dhdr_offset = reader.offset
    dtype, page_shift, dres, major, minor = struct.unpack(
        DHDR_FORMAT, reader.read_exact(DHDR_SIZE, "libxc domain header"))
    if dtype not in DHDR_TYPE_NAMES:
        raise ImageError(f"unknown libxc domain type 0x{dtype:x}", offset=dhdr_offset)
    if page_shift != PAGE_SHIFT or dres:
        raise ImageError(f"bad libxc domain header (page shift {page_shift}, reserved "
                         f"0x{dres:x})", offset=dhdr_offset + 4)
    return LibxcHeader(offset, version, dtype, major, minor)


def walk(reader: StreamReader) -> Iterator[LibxcHeader | Record]:
    """Yield the libxc header, then each record up to and including END."""
    yield read_header(reader)
    while True:
        record = _read_record(reader)
        yield record
        if record.type == REC_TYPE_END:
            return


def _read_record(reader: StreamReader) -> Record:
    offset, rtype, length = read_record_header(reader, "libxc")
    name = REC_TYPE_NAMES.get(rtype)
    if name is None:
        if not rtype & REC_TYPE_OPTIONAL:
            raise ImageError(f"unknown libxc record type 0x{rtype:08x}", offset=offset)
        name = f"OPTIONAL_0x{rtype:08x}"
    record = Record("libxc", offset, rtype, name, length)
    if rtype == REC_TYPE_END:
        require_empty(record)
        return record
    if rtype != REC_TYPE_PAGE_DATA:
        skip_record_body(reader, record)
        return record
    if length < PAGE_DATA_SIZE:
        raise ImageError(f"PAGE_DATA record of {length} bytes is shorter than its header",
                         offset=offset)
    count, reserved = struct.unpack(
        PAGE_DATA_FORMAT, reader.read_exact(PAGE_DATA_SIZE, "libxc PAGE_DATA header"))
    if reserved or PAGE_DATA_SIZE + count * PFN_SIZE > length:
        raise ImageError(f"PAGE_DATA record of {length} bytes cannot hold {count} pfns "
                         f"(reserved 0x{reserved:x})", offset=offset)
    record = Record("libxc", offset, rtype, name, length, pfn_count=count)
    skip_record_body(reader, record, consumed=PAGE_DATA_SIZE)
    return record

"""Small, valid xl save images built in code, for tests and for trying filters.

The image mimics what xl 4.17 writes for an HVM/PVH guest (libxc stream v3: CPUID and
MSR policies, STATIC_DATA_END, PAGE_DATA, TSC info, HVM context and params) and passes
Xen's ``verify-stream-v2 -f xl``, so the filters can be exercised without a hypervisor.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from xsproto.stream import libxc, libxl
from xsproto.stream.framing import RH_FORMAT, padded
from xsproto.stream.image_record import ImageRecord, encode_record
from xsproto.stream.xl_header import MANDATORY_FLAG_JSON, MANDATORY_FLAG_STREAMV2, XlHeader

PAGE_SIZE = 1 << libxc.PAGE_SHIFT
EMULATOR_ID_QEMU_UPSTREAM = 2
DEFAULT_UUID = "5a4e36a6-1d6b-4b8e-9a53-0c3f6f1e2d7b"


def domain_config(name: str = "guest", *, uuid: str | None = DEFAULT_UUID,
                  memory_mb: int = 128, guest_type: str = "pvh") -> dict[str, Any]:
    """A trimmed libxl domain config with the fields xsproto reads."""
    c_info: dict[str, Any] = {"type": guest_type, "name": name}
    if uuid is not None:
        c_info["uuid"] = uuid
    memkb = memory_mb * 1024
    return {"c_info": c_info, "b_info": {"max_memkb": memkb, "target_memkb": memkb}}


def record(rtype: int, body: bytes = b"") -> bytes:
    """One v2 record (either layer): header, body, zero padding to 8 bytes."""
    return struct.pack(RH_FORMAT, rtype, len(body)) + body.ljust(padded(len(body)), b"\0")


def page_data(pfns: Sequence[int]) -> bytes:
    """A PAGE_DATA record with one recognisable page per (normal, type 0) pfn."""
    body = struct.pack(libxc.PAGE_DATA_FORMAT, len(pfns), 0)
    body += struct.pack(f"={len(pfns)}Q", *pfns)
    body += b"".join(bytes([pfn & 0xFF]) * PAGE_SIZE for pfn in pfns)
    return record(libxc.REC_TYPE_PAGE_DATA, body)


def libxc_stream(page_batches: Sequence[int] = (2, 1)) -> bytes:
    """A libxc v3 HVM stream with ``page_batches[i]`` pages in the i-th PAGE_DATA."""
    parts = [
        struct.pack(libxc.IHDR_FORMAT, libxc.IHDR_MARKER, libxc.IHDR_IDENT, 3, 0, 0, 0),
        struct.pack(libxc.DHDR_FORMAT, libxc.DHDR_TYPE_X86_HVM, libxc.PAGE_SHIFT, 0, 4, 17),
        record(libxc.REC_TYPE_X86_CPUID_POLICY, struct.pack("=6I", 0, 0xFFFFFFFF, 0xD, 0, 0, 0)),
        record(libxc.REC_TYPE_X86_MSR_POLICY, struct.pack("=QII", 0xCE, 0, 0)),
        record(libxc.REC_TYPE_STATIC_DATA_END),
    ]
    next_pfn = 0
    for count in page_batches:
        parts.append(page_data(range(next_pfn, next_pfn + count)))
        next_pfn += count
    parts += [
        record(libxc.REC_TYPE_X86_TSC_INFO, struct.pack("=IIQII", 0, 2_000_000, 0, 0, 0)),
        record(libxc.REC_TYPE_HVM_CONTEXT, b"hvm-context"),  # 11 bytes: padded
        record(libxc.REC_TYPE_HVM_PARAMS, struct.pack("=IIQQ", 1, 0, 1, 0xFEFFF)),
        record(libxc.REC_TYPE_END),
    ]
    return b"".join(parts)


def libxl_stream(page_batches: Sequence[int] = (2, 1)) -> bytes:
    """A libxl v2 stream: LIBXC_CONTEXT + libxc stream, an emulator context, END."""
    return b"".join([
        struct.pack(libxl.HDR_FORMAT, libxl.HDR_IDENT, libxl.HDR_VERSION, 0),
        record(libxl.REC_TYPE_LIBXC_CONTEXT),
        libxc_stream(page_batches),
        record(libxl.REC_TYPE_EMULATOR_CONTEXT,
               struct.pack("=II", EMULATOR_ID_QEMU_UPSTREAM, 0) + b"qemu"),
        record(libxl.REC_TYPE_END),
    ])


def xl_header(config: Mapping[str, Any] | None = None, *,
              image_record: ImageRecord | None = None, foreign: bytes = b"") -> XlHeader:
    """An xl header as xl writes it, plus optional foreign data and xsproto record."""
    config = domain_config() if config is None else config
    slot = json.dumps(config).encode() + b"\0"
    extra = foreign + (encode_record(image_record) if image_record is not None else b"")
    return XlHeader(MANDATORY_FLAG_JSON | MANDATORY_FLAG_STREAMV2, 0, slot, extra)


def build_image(config: Mapping[str, Any] | None = None, *,
                image_record: ImageRecord | None = None, foreign: bytes = b"",
                page_batches: Sequence[int] = (2, 1)) -> bytes:
    """A complete save image: xl header then the libxl stream."""
    header = xl_header(config, image_record=image_record, foreign=foreign)
    return header.to_bytes() + libxl_stream(page_batches)

"""``xsproto inspect-image FILE [--json]``: what an image holds, page data left unread.

Page bodies are skipped in bounded chunks (``xsproto.stream.summarize``); only record
headers are kept, so a multi-gigabyte image is inspected in constant memory.
"""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Any, BinaryIO

from xsproto.adapters import terminal
from xsproto.errors import XsprotoError, image_errors_from
from xsproto.exitcodes import Exit
from xsproto.stream import ImageSummary, summarize
from xsproto.stream.xl_header import MANDATORY_FLAG_JSON, MANDATORY_FLAG_STREAMV2
from xsproto.values import escaped


def run(file: str, *, as_json: bool, quiet: bool = False) -> int:
    """``xsproto inspect-image FILE`` (``-``: standard input, e.g. an image piped in); a
    terminal shows the walk's progress meanwhile (not with ``--json`` or ``-q``)."""
    try:
        with contextlib.ExitStack() as stack:
            if file == "-":
                if sys.stdin is None:  # started with file descriptor 0 closed
                    raise XsprotoError("standard input is closed")
                src: BinaryIO = sys.stdin.buffer
                stack.enter_context(image_errors_from("standard input"))
            else:
                src = stack.enter_context(open(file, "rb"))
                stack.enter_context(image_errors_from(file))
            progress = stack.enter_context(terminal.progress(
                "inspect", terminal.file_size(src.fileno()), log=None,
                shown=not (as_json or quiet)))
            summary = summarize(src, progress=progress)
    except OSError as e:
        raise XsprotoError(f"{file}: cannot read: {e.strerror or e}") from e
    print(json.dumps(to_json(summary), indent=2) if as_json else render(summary))
    return Exit.OK


def _flags(mandatory: int) -> list[str]:
    names = [(MANDATORY_FLAG_JSON, "json-config"), (MANDATORY_FLAG_STREAMV2, "stream-v2")]
    return [name for bit, name in names if mandatory & bit]


def to_json(s: ImageSummary) -> dict[str, Any]:
    """The summary as the ``--json`` document (xsproto/data/schemas/inspect-output.schema.json)."""
    # Imported here: the documents' declarations cost the text output a third of its
    # start-up (seconds under the lab's emulated CPU).
    from xsproto import fields, outputs

    h, c = s.header, s.config
    document: dict[str, Any] = fields.dump(outputs.ImageOutput(
        xl_header=outputs.XlHeaderSummary(
            mandatory_flags=h.mandatory_flags, flags=tuple(_flags(h.mandatory_flags)),
            optional_flags=h.optional_flags, optional_data_bytes=len(h.optional_data),
            size=h.size),
        config=None if c is None else outputs.ConfigSummary(
            name=c.name, uuid=c.uuid, type=c.type, target_memkb=c.target_memkb,
            max_memkb=c.max_memkb),
        record=s.record,
        libxl_header=outputs.LibxlHeaderSummary(
            offset=s.libxl_header.offset, version=s.libxl_header.version,
            legacy=s.libxl_header.legacy),
        libxc_headers=tuple(outputs.LibxcHeaderSummary(
            offset=x.offset, version=x.version, domain_type=x.domain_type_name,
            xen=f"{x.xen_major}.{x.xen_minor}") for x in s.libxc_headers),
        records=tuple(outputs.RecordSummary(
            offset=r.offset, layer=r.layer, type=r.name, length=r.length, size=r.size,
            pfns=r.pfn_count) for r in s.records),
        record_counts=dict(s.record_counts), pfns=s.pfn_count, end_offset=s.end_offset,
        trailing_bytes=s.trailing_bytes))
    return document


def _shown(text: str | None) -> str:
    """Text from the image, safe on a terminal (a crafted name cannot carry escapes)."""
    return "None" if text is None else escaped(text)


def render(s: ImageSummary) -> str:
    """The summary for people: header, config, record, then one line per record."""
    h = s.header
    lines = [f"xl header: {h.size} bytes, mandatory flags 0x{h.mandatory_flags:x} "
             f"({', '.join(_flags(h.mandatory_flags)) or 'none'}), optional flags "
             f"0x{h.optional_flags:x}, optional data {len(h.optional_data)} bytes"]
    if s.config is None:
        lines.append("config: none")
    else:
        c = s.config
        lines.append(f"config: name {_shown(c.name)}, type {_shown(c.type)}, memory "
                     f"{c.target_memkb} kB (max {c.max_memkb} kB), uuid {_shown(c.uuid)}")
    if s.record is None:
        lines.append("xsproto record: none (stock image)")
    else:
        r = s.record
        lines.append(f"xsproto record: v{r.version} for {_shown(r.domain_name)} (uuid "
                     f"{_shown(r.domain_uuid)}) "
                     f"from domain {r.source_domid}: base {r.base_pages} + granted "
                     f"{r.granted_pages} pages, max {r.max_pages}")
    lines.append(f"libxl stream v{s.libxl_header.version} at byte {s.libxl_header.offset}"
                 + (" (converted from legacy)" if s.libxl_header.legacy else ""))
    for x in s.libxc_headers:
        lines.append(f"libxc stream v{x.version} at byte {x.offset}: {x.domain_type_name} "
                     f"domain from Xen {x.xen_major}.{x.xen_minor}")
    lines.append(f"{'offset':>12}  {'layer':5}  {'record':26}  {'length':>10}  pfns")
    lines += [f"{r.offset:>12}  {r.layer:5}  {r.name:26}  {r.length:>10}  "
              f"{'' if r.pfn_count is None else r.pfn_count}" for r in s.records]
    counts = ", ".join(f"{name} {n}" for name, n in sorted(s.record_counts.items()))
    lines.append(f"{len(s.records)} records ({counts}); {s.pfn_count} pfns; stream ends at "
                 f"byte {s.end_offset}, {s.trailing_bytes} trailing bytes")
    return "\n".join(lines)

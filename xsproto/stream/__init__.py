"""Streaming codec for xl save images and migration streams.

Layers mirror Xen's ``xen.migration`` package: ``xl_header`` (owned by xl), ``libxl``
and ``libxc`` (the v2 record streams), plus ``image_record`` (xsproto's own record in
the xl header's optional data) and ``walk`` (whole-image summary and filter helpers).
Everything reads forward only, in bounded chunks, so pipes work as well as files.
"""

from xsproto.stream.image_record import (
    ImageRecord,
    check_record_matches_config,
    decode_record,
    encode_record,
    find_record,
    record_for_config,
)
from xsproto.stream.walk import (
    ImageSummary,
    copy_stream,
    rewrite_header_with_record,
    summarize,
)
from xsproto.stream.xl_header import XlHeader, read_header

__all__ = [
    "ImageRecord",
    "ImageSummary",
    "XlHeader",
    "check_record_matches_config",
    "copy_stream",
    "decode_record",
    "encode_record",
    "find_record",
    "read_header",
    "record_for_config",
    "rewrite_header_with_record",
    "summarize",
]

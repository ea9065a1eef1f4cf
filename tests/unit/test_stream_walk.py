"""Whole images: summaries, the header-rewriting filter, pipes, and Xen's own verifier."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from xsproto.errors import ImageError
from xsproto.grant import Grant
from xsproto.stream import (
    ImageRecord,
    copy_stream,
    read_header,
    record_for_config,
    rewrite_header_with_record,
    summarize,
    synthetic,
)
from xsproto.stream.image_record import encode_record, find_record
from xsproto.stream.xl_header import MAGIC, XlHeader

VERIFIER = Path("/usr/lib/xen-4.17/bin/verify-stream-v2")
XEN_PYTHONPATH = "/usr/lib/xen-4.17/lib/python"
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin")

RECORD = record_for_config(synthetic.domain_config(), source_domid=3,
                           grant=Grant(base_pages=32768, granted_pages=2048))


def test_summary_of_an_image_with_a_record() -> None:
    image = synthetic.build_image(image_record=RECORD, foreign=b"other", page_batches=(3, 2))
    summary = summarize(io.BytesIO(image))
    assert summary.record == RECORD
    assert summary.config is not None
    assert (summary.config.name, summary.config.type) == ("guest", "pvh")
    assert (summary.config.max_memkb, summary.config.target_memkb) == (131072, 131072)
    assert summary.config.uuid == synthetic.DEFAULT_UUID
    assert summary.pfn_count == 5
    assert summary.record_counts["libxc PAGE_DATA"] == 2
    assert summary.record_counts["libxl END"] == 1
    assert [h.version for h in summary.libxc_headers] == [3]
    assert summary.libxl_header.offset == summary.header.size
    assert not summary.libxl_header.legacy
    assert (summary.end_offset, summary.trailing_bytes) == (len(image), 0)


def test_summary_of_a_stock_image_and_trailing_bytes() -> None:
    image = synthetic.build_image(synthetic.domain_config(uuid=None))
    summary = summarize(io.BytesIO(image + b"tail"))
    assert summary.record is None
    assert summary.config is not None
    assert summary.config.uuid is None
    assert summary.trailing_bytes == 4


def test_summary_without_config() -> None:
    header = XlHeader(2, 0, None)
    summary = summarize(io.BytesIO(header.to_bytes() + synthetic.libxl_stream()))
    assert summary.config is None


def test_summary_refuses_a_record_for_another_domain() -> None:
    stranger = replace(RECORD, domain_name="someone-else")
    image = synthetic.build_image(image_record=stranger)
    with pytest.raises(ImageError, match="record for a different domain"):
        summarize(io.BytesIO(image))


def test_summary_refuses_legacy_streams() -> None:
    header = XlHeader(1, 0, b"{}\0")
    with pytest.raises(ImageError, match="legacy") as info:
        summarize(io.BytesIO(header.to_bytes()))
    assert info.value.offset == 36


def test_summary_names_the_offset_of_a_truncated_libxl_header() -> None:
    image = synthetic.build_image()
    header_size = synthetic.xl_header().size
    with pytest.raises(ImageError, match="truncated libxl stream header") as info:
        summarize(io.BytesIO(image[:header_size + 5]))
    assert info.value.offset == header_size


def test_rewrite_adds_the_record_and_keeps_the_stream_intact() -> None:
    stock = synthetic.build_image(foreign=b"kept")
    src = io.BytesIO(stock)
    header, raw = read_header(src)
    out = io.BytesIO()
    out.write(rewrite_header_with_record(header, RECORD))
    copied = copy_stream(src, out)
    assert copied == len(stock) - len(raw)
    rewritten = out.getvalue()
    assert rewritten.endswith(stock[len(raw):])
    summary = summarize(io.BytesIO(rewritten))
    assert summary.record == RECORD
    assert summary.header.mandatory_flags == header.mandatory_flags
    assert summary.header.config == header.config
    assert summary.header.extra_optional_data.startswith(b"kept")


def test_rewrite_replaces_an_earlier_record() -> None:
    header = synthetic.xl_header(image_record=RECORD, foreign=b"x")
    newer = replace(RECORD, granted_pages=4096, max_pages=32768 + 4096)
    rewritten, _ = read_header(io.BytesIO(rewrite_header_with_record(header, newer)))
    assert find_record(rewritten) == newer
    assert rewritten.extra_optional_data == b"x" + encode_record(newer)


def test_rewrite_refuses_a_record_for_another_domain() -> None:
    header = synthetic.xl_header(synthetic.domain_config("other"))
    with pytest.raises(ImageError, match="record for a different domain"):
        rewrite_header_with_record(header, RECORD)


def test_filter_over_real_pipes_forwards_bytes_as_they_arrive() -> None:
    """A filter between two pipes: the header is rewritten, the handshake passes at once."""
    image = synthetic.build_image()
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()

    def run_filter() -> None:
        with open(in_r, "rb") as src, open(out_w, "wb") as dst:
            header, _ = read_header(src)
            dst.write(rewrite_header_with_record(header, RECORD))
            copy_stream(src, dst, chunk=4096)

    worker = threading.Thread(target=run_filter)
    worker.start()
    with open(in_w, "wb", buffering=0) as sender, open(out_r, "rb", buffering=0) as receiver:
        sender.write(image + b"ping")  # the sender then waits for a reply
        expected = len(rewrite_header_with_record(read_header(io.BytesIO(image))[0], RECORD))
        expected += len(image) - synthetic.xl_header().size + 4
        received = b""
        while len(received) < expected:
            chunk = receiver.read(expected - len(received))
            assert chunk, "filter closed early"
            received += chunk
        assert received.endswith(b"ping")  # arrived without the sender closing
        sender.close()
        assert receiver.read() == b""
    worker.join(timeout=5)
    assert summarize(io.BytesIO(received[:-4])).record == RECORD


class ShortWriter(io.BytesIO):
    """A raw-file-like sink that accepts at most 7 bytes per write."""

    def write(self, data: object, /) -> int:
        assert isinstance(data, memoryview)
        return super().write(data[:7])


def test_copy_stream_handles_partial_writes() -> None:
    dst = ShortWriter()
    assert copy_stream(io.BytesIO(b"0123456789" * 10), dst, chunk=16) == 100
    assert dst.getvalue() == b"0123456789" * 10


@pytest.mark.skipif(not VERIFIER.exists() or SYSTEM_PYTHON is None,
                    reason="Xen's verify-stream-v2 is not installed")
@pytest.mark.parametrize("with_record", [False, True])
def test_real_verify_stream_v2_accepts_synthetic_images(tmp_path: Path,
                                                        with_record: bool) -> None:
    record: ImageRecord | None = RECORD if with_record else None
    image = tmp_path / "guest.save"
    image.write_bytes(synthetic.build_image(image_record=record, foreign=b"other"))
    assert image.read_bytes().startswith(MAGIC)
    assert SYSTEM_PYTHON is not None
    result = subprocess.run(
        [SYSTEM_PYTHON, str(VERIFIER), "-v", "-f", "xl", "-i", str(image)],
        env={**os.environ, "PYTHONPATH": XEN_PYTHONPATH}, capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Libxl Record: End" in result.stdout
    assert "Squashed 2 Page Data records together" in result.stdout

"""The xsproto image record: framing, checksums, and tying it to the right domain."""

from __future__ import annotations

import contextlib
import json
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xsproto import fields, schemas
from xsproto.errors import ImageError
from xsproto.grant import Grant
from xsproto.stream import synthetic
from xsproto.stream.image_record import (
    MAX_PAYLOAD,
    RECORD_MAGIC,
    ImageRecord,
    check_record_matches_config,
    decode_record,
    encode_record,
    find_record,
    foreign_optional_data,
    record_for_config,
)
from xsproto.stream.xl_header import CONFIG_OFFSET

RECORD = ImageRecord(domain_name="guest", domain_uuid=synthetic.DEFAULT_UUID, source_domid=7,
                     base_pages=33024, granted_pages=2048, max_pages=35072)
PAYLOAD = json.dumps(RECORD.to_json()).encode()


def _frame(payload: bytes, version: int = 1, magic: bytes = RECORD_MAGIC) -> bytes:
    framed = struct.pack("<8sII", magic, version, len(payload)) + payload
    return framed + struct.pack("<I", zlib.crc32(framed))


def test_exact_byte_layout() -> None:
    raw = encode_record(RECORD)
    payload = json.dumps(RECORD.to_json(), separators=(",", ":")).encode()
    assert raw[:8] == b"XSPROTO\x00"
    assert struct.unpack_from("<II", raw, 8) == (1, len(payload))
    assert raw[16:16 + len(payload)] == payload
    assert b" " not in payload  # compact JSON
    assert struct.unpack_from("<I", raw, 16 + len(payload))[0] == zlib.crc32(raw[:-4])
    assert len(raw) == 20 + len(payload)
    assert json.loads(payload) == {
        "version": 1, "domain_name": "guest", "domain_uuid": synthetic.DEFAULT_UUID,
        "source_domid": 7, "base_pages": 33024, "granted_pages": 2048, "max_pages": 35072}


def test_round_trip_reports_framed_size() -> None:
    raw = encode_record(RECORD)
    assert decode_record(raw + b"trailing") == (RECORD, len(raw))


records = st.builds(
    lambda name, uuid, domid, base, granted: ImageRecord(
        domain_name=name, domain_uuid=uuid, source_domid=domid, base_pages=base,
        granted_pages=granted, max_pages=base + granted),
    st.text(min_size=1, max_size=64),
    st.none() | st.uuids().map(str),
    st.integers(0, 0x7FEF),
    st.integers(0, 1 << 31),
    st.integers(0, (1 << 31) - 1),
)


@given(records)
def test_round_trip_property(record: ImageRecord) -> None:
    assert decode_record(encode_record(record)) == (record, len(encode_record(record)))


@given(st.binary(max_size=300))
def test_arbitrary_bytes_after_magic_raise_only_image_error(data: bytes) -> None:
    with contextlib.suppress(ImageError):
        decode_record(RECORD_MAGIC + data)


@pytest.mark.parametrize(
    ("raw", "offset", "message"),
    [
        (encode_record(RECORD)[:10], 100, "truncated xsproto record"),
        (_frame(b"{}", magic=b"XSPROTO\x01"), 100, "bad xsproto record magic"),
        (_frame(PAYLOAD, version=2), 108, "unknown .* version 2"),
        (encode_record(RECORD)[:-1], 112, "bad xsproto record length"),
        (struct.pack("<8sII", RECORD_MAGIC, 1, MAX_PAYLOAD + 1) + bytes(MAX_PAYLOAD + 5),
         112, "bad xsproto record length"),
        (_frame(b"not json"), 116, "invalid xsproto record payload"),
        (_frame(b'{"version": 2, "domain_name": "g", "source_domid": 1, "base_pages": 1,'
                b' "granted_pages": 0, "max_pages": 1}'), 116, "invalid"),
        (_frame(b'{"domain_name": "g", "source_domid": "1", "base_pages": 1,'
                b' "granted_pages": 0, "max_pages": 1}'), 116, "invalid"),
        (_frame(PAYLOAD.replace(b'"source_domid": 7', b'"source_domid": true')), 116,
         "source_domid: must be an integer, not True"),
        (_frame(PAYLOAD.replace(b'"base_pages": 33024', b'"base_pages": 33024.0')), 116,
         "base_pages: must be an integer"),
        (_frame(PAYLOAD.replace(b'"granted_pages": 2048', b'"granted_pages": 1099511627776')),
         116, "granted_pages: 1099511627776 is outside"),
        (_frame(PAYLOAD.replace(b'"base_pages": 33024', b'"base_pages": NaN')), 116,
         "base_pages: must be an integer"),
        (_frame(PAYLOAD.replace(b"}", b', "surprise": 1}')), 116, "surprise: unknown key"),
        (_frame(PAYLOAD.replace(b'"max_pages": 35072', b'"max_pages": 35073')), 116,
         "max_pages 35073 is not base_pages"),
        (_frame(b"[" * 60000), 116, "invalid xsproto record payload"),
        (_frame(b'{"domain_name": "\xff"}'), 116, "invalid xsproto record payload"),
        (_frame(b"1" * 5000), 116, "invalid xsproto record payload"),
        (_frame(b"[]"), 116, r"\(top level\): must be an object"),
    ],
)
def test_bad_records(raw: bytes, offset: int, message: str) -> None:
    with pytest.raises(ImageError, match=message) as info:
        decode_record(raw, offset=100)
    assert info.value.offset == offset


def test_corrupt_payload_fails_the_checksum() -> None:
    raw = bytearray(encode_record(RECORD))
    raw[20] ^= 0x01
    with pytest.raises(ImageError, match="checksum mismatch") as info:
        decode_record(bytes(raw))
    assert info.value.offset == len(raw) - 4


@pytest.mark.parametrize("max_pages", [14, 16])
def test_record_limit_is_exactly_the_grant(max_pages: int) -> None:
    with pytest.raises(ValueError, match=f"max_pages {max_pages} is not base_pages 10"):
        ImageRecord(domain_name="g", source_domid=1, base_pages=10, granted_pages=5,
                    max_pages=max_pages)


@pytest.mark.parametrize("field", [{"domain_uuid": "nope"}, {"source_domid": 0x7FF0},
                                   {"domain_name": ""}, {"surprise": 1}])
def test_record_rejects_bad_fields(field: dict[str, object]) -> None:
    values: dict[str, object] = {"domain_name": "g", "source_domid": 1, "base_pages": 1,
                                 "granted_pages": 0, "max_pages": 1, **field}
    name = next(iter(field))
    with pytest.raises(fields.FieldError, match=name):
        fields.load(ImageRecord, values)
    with pytest.raises(TypeError if name == "surprise" else ValueError, match=name):
        ImageRecord(**values)  # type: ignore[arg-type]


def test_find_record_skips_foreign_optional_data() -> None:
    header = synthetic.xl_header(image_record=RECORD, foreign=b"\x01other tool\x00")
    assert find_record(header) == RECORD
    assert foreign_optional_data(header) == b"\x01other tool\x00"


def test_find_record_without_record() -> None:
    header = synthetic.xl_header(foreign=b"unrelated")
    assert find_record(header) is None
    assert foreign_optional_data(header) == b"unrelated"


def test_find_record_reports_offsets_in_the_image() -> None:
    raw = bytearray(encode_record(RECORD))
    raw[-1] ^= 0xFF
    header = synthetic.xl_header().with_extra_optional_data(b"abc" + bytes(raw))
    with pytest.raises(ImageError, match="checksum") as info:
        find_record(header)
    start = CONFIG_OFFSET + len(header.config or b"") + 3
    assert info.value.offset == start + len(raw) - 4
    image = header.to_bytes()
    assert image[start:start + 8] == RECORD_MAGIC


def test_two_records_are_refused() -> None:
    header = synthetic.xl_header().with_extra_optional_data(encode_record(RECORD) * 2)
    with pytest.raises(ImageError, match="2 xsproto records"):
        find_record(header)


def test_record_for_config_takes_identity_from_c_info() -> None:
    config = synthetic.domain_config("vm7", uuid=None)
    record = record_for_config(config, source_domid=4, grant=Grant(10, 2))
    assert (record.domain_name, record.domain_uuid) == ("vm7", None)
    assert (record.grant, record.max_pages) == (Grant(10, 2), 12)
    with pytest.raises(ImageError, match=r"no c_info\.name"):
        record_for_config({"b_info": {}}, source_domid=4, grant=Grant(1, 0))


def test_record_matches_its_own_config() -> None:
    check_record_matches_config(RECORD, synthetic.domain_config())
    check_record_matches_config(RECORD, synthetic.domain_config(
        uuid=synthetic.DEFAULT_UUID.upper()))
    check_record_matches_config(RECORD, synthetic.domain_config(uuid=None))


@pytest.mark.parametrize("config", [
    synthetic.domain_config("other"),
    synthetic.domain_config(uuid="00000000-0000-0000-0000-000000000001"),
    {},
])
def test_record_for_a_different_domain_is_refused(config: dict[str, object]) -> None:
    with pytest.raises(ImageError, match="record for a different domain"):
        check_record_matches_config(RECORD, config)


def test_payload_validates_against_the_published_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    path = schemas.SCHEMA_DIR / "image-record.schema.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    raw = encode_record(RECORD)
    jsonschema.validate(json.loads(raw[16:-4]), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**json.loads(raw[16:-4]), "version": 2}, schema)

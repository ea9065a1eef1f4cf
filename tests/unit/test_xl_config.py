"""Replacement configs: xl.cfg read as xl 4.17 reads it, and the rule a replacement for a
domain whose image carries a grant must follow (docs/protocol.md section 6)."""

from __future__ import annotations

import pytest

from xsproto import carrying, xl_config
from xsproto.errors import ReplacementRefused, XlConfigError
from xsproto.grant import Grant
from xsproto.stream import synthetic
from xsproto.stream.image_record import record_for_config
from xsproto.stream.walk import ConfigSummary
from xsproto.xl_config import DomainSettings

TYPICAL = """\
# A guest as the admin wrote it
name = "guest"
type = 'pvh'
memory = 128 ; vcpus = 2
kernel = "/boot/vmlinuz"
extra = "console=hvc0 " # a comment after a value
extra += "quiet"
disk = [ 'format=raw, vdev=xvda, access=w, target=/dev/vg/guest',
         "/dev/vg/swap,raw,xvdb,w",
       ]
vif = [ ]
cpus = [ [ "0-1" ], "2" ]
on_crash = "des\\"troy"
"""


def settings(text: str) -> DomainSettings:
    return xl_config.domain_settings(xl_config.parse(text, source="g.cfg"), source="g.cfg")


def test_a_typical_config() -> None:
    parsed = xl_config.parse(TYPICAL, source="g.cfg")
    assert parsed["name"].value == "guest" and parsed["name"].line == 2
    assert parsed["memory"].value == "128" and parsed["vcpus"].line == 4
    assert parsed["extra"].value == "console=hvc0 quiet"
    assert parsed["disk"].value == ["format=raw, vdev=xvda, access=w, target=/dev/vg/guest",
                                    "/dev/vg/swap,raw,xvdb,w"]
    assert parsed["vif"].value == [] and parsed["cpus"].value == [["0-1"], "2"]
    assert parsed["on_crash"].value == 'des"troy'
    assert settings(TYPICAL) == DomainSettings(source="g.cfg", name="guest", uuid=None,
                                               target_memkb=128 * 1024,
                                               memory_from="memory = 128")


def test_the_last_assignment_wins_and_lists_add_up() -> None:
    parsed = xl_config.parse("name='a'\nname='b'\ndisk=['x']\ndisk+=['y']\n", source="c")
    assert parsed["name"].value == "b" and parsed["disk"].value == ["x", "y"]


@pytest.mark.parametrize(("text", "memkb", "source"), [
    ("memory = 0x100", 256 * 1024, "memory = 256"),  # strtol's base 0, as xl reads numbers
    ("memory = 0100", 64 * 1024, "memory = 64"),
    ('memory = "512"', 512 * 1024, "memory = 512"),
    ("maxmem = 256", 256 * 1024, "maxmem = 256 (no memory setting)"),
    ("memory = 128\nmaxmem = 256", 128 * 1024, "memory = 128"),
    ("", 32 * 1024, "libxl's default of 32 MiB (no memory setting)"),
], ids=["hex", "octal", "string", "maxmem", "memory-and-maxmem", "default"])
def test_the_memory_target_is_libxls(text: str, memkb: int, source: str) -> None:
    got = settings(f"name = 'g'\n{text}\n")
    assert (got.target_memkb, got.memory_from) == (memkb, source)


@pytest.mark.parametrize(("text", "where", "message"), [
    ("name = guest\n", "g.cfg:1", "syntax error: expected a value, found 'guest'"),
    ("name = 'g'\nMemory = 1\n", "g.cfg:2", "lexical error at 'Memory = 1'"),
    ("name = 'g'\nmemory = 1 2\n", "g.cfg:2", "syntax error: expected the end of the "
                                              "statement setting memory, found '2'"),
    ("disk = [ 'a' 'b' ]\n", "g.cfg:1", "syntax error: expected , or ] in a list, found "
                                      "\"'b'\""),
    ("disk = [ 'a',\n", "g.cfg:2", "syntax error: expected a value, found 'end of file'"),
    ("name = 'a\nb'\n", "g.cfg:1", "lexical error at \"'a\""),
    ("name = 'g'\nmemory = 'lots'\n", "g.cfg:2", "memory = 'lots' is not a positive number"),
    ("name = 'g'\nmemory = 0\n", "g.cfg:2", "memory = '0' is not a positive number"),
    ("name = 'g'\nmemory = 1\nmemory += 2\n", "g.cfg:3", "memory = '12' is not a positive"),
    ("name = ['g']\n", "g.cfg:1", "name is a list but should be a single value"),
    ("name = 'g'\nname += ['h']\n", "g.cfg:2", "name: can't add [list] to \"string\""),
    ("name = 'g\\x41'\n", "g.cfg:1", "unsupported escape \\x"),
], ids=["unquoted", "uppercase-key", "two-values", "list-comma", "unclosed-list",
        "newline-in-string", "memory-word", "memory-zero", "memory-added", "name-list",
        "string-plus-list", "numeric-escape"])
def test_what_xl_refuses_is_an_error_naming_file_and_line(text: str, where: str,
                                                          message: str) -> None:
    with pytest.raises(XlConfigError) as err:
        settings(text)
    assert err.value.where == where
    assert str(err.value).startswith(f"{where}: {message}")


# The rule.

GRANT = Grant(base_pages=33024, granted_pages=2048)
OWN = synthetic.domain_config()  # guest, 128 MiB
RECORD = record_for_config(OWN, source_domid=3, grant=GRANT)


def replacement(name: str | None = "guest", *, memory: int = 128,
                uuid: str | None = None) -> DomainSettings:
    return DomainSettings(source="/etc/xen/g.cfg", name=name, uuid=uuid,
                          target_memkb=memory * 1024, memory_from=f"memory = {memory}")


@pytest.mark.parametrize("fits", [replacement(), replacement(memory=256),
                                  replacement(uuid=synthetic.DEFAULT_UUID.upper())],
                         ids=["same", "more-memory", "same-uuid"])
def test_a_replacement_for_the_same_domain_with_as_much_memory_fits(
        fits: DomainSettings) -> None:
    carrying.check_replacement(RECORD, ConfigSummary.from_config(OWN), fits)


@pytest.mark.parametrize(("refused", "message"), [
    (replacement("clone"), "/etc/xen/g.cfg: name = 'clone' is not 'guest', the domain whose "
                           "2048 granted pages the image carries; use its name (and xl rename "
                           "the domain afterwards)"),
    (replacement(None), "/etc/xen/g.cfg: no name setting: it must be name = 'guest', the "
                        "domain whose 2048 granted pages the image carries"),
    (replacement(uuid="00000000-0000-0000-0000-000000000001"),
     "/etc/xen/g.cfg: uuid = '00000000-0000-0000-0000-000000000001' is not "
     f"'{synthetic.DEFAULT_UUID}', the uuid of domain 'guest' in the image's record"),
    (replacement(memory=127), "/etc/xen/g.cfg: memory = 127 gives 130048 kB, less than the "
                              "131072 kB of the image's own config (target_memkb): its memory "
                              "and 2048 granted pages would not fit; give memory = 128 or "
                              "more"),
], ids=["other-name", "no-name", "other-uuid", "less-memory"])
def test_a_replacement_that_does_not_fit_the_grant_is_refused(
        refused: DomainSettings, message: str) -> None:
    with pytest.raises(ReplacementRefused) as err:
        carrying.check_replacement(RECORD, ConfigSummary.from_config(OWN), refused)
    assert str(err.value).startswith(message)
    assert err.value.path == "/etc/xen/g.cfg"

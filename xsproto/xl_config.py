"""An xl domain config file (xl.cfg(5)), read as xl 4.17 reads it, for the few keys a
replacement config must agree on with the grant an image carries.

``xl restore CONFIG FILE``, ``xl save DOM FILE CONFIG`` and ``xl migrate -C CONFIG`` make
the new domain from CONFIG instead of the image's own config, and xl parses it only once
it runs. To refuse an inconsistent replacement before anything starts, this module
mirrors libxlutil's grammar (tools/libs/util/libxlu_cfg_l.l and _y.y): ``key = value``
or ``key += value`` statements ended by a newline or ``;``, ``#`` comments, values that
are quoted strings, numbers or ``[...]`` lists; the last assignment of a key wins. Only
the meaning of ``name``, ``uuid``, ``memory`` and ``maxmem`` is interpreted (as
tools/xl/xl_parse.c and libxl's defaults do); everything else is left to xl.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from xsproto.errors import XlConfigError

Value = str | list["Value"]

LIBXL_DEFAULT_MAX_MEMKB = 32 * 1024
"""libxl's max_memkb when a config gives neither memory nor maxmem (and target = max)."""

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+)
  | (?P<newline>(\#[^\n]*)?\n)
  | (?P<comment>\#[^\n]*\Z)
  | (?P<ident>[a-z][._0-9a-z]*)
  | (?P<number>[0-9][0-9a-fx]*)
  | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<op>\+=|[=;,\[\]])
""", re.VERBOSE)
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t", "v": "\v"}
_ESCAPE = re.compile(r"\\(.)")


@dataclass(frozen=True)
class Setting:
    """A key's value after every assignment to it, and the line of the last one."""

    value: Value
    line: int
    added: bool = False
    """Whether the last assignment was ``+=``: xl then refuses it as a number."""


def _dequote(token: str, *, where: str) -> str:
    """A quoted string's text with its escapes decoded. xl 4.17 mangles numeric escapes
    (``\\x41``, ``\\101``: libxlu_cfg.c reads them wrongly or not at all), so those are
    refused rather than guessed at."""

    def one(m: re.Match[str]) -> str:
        if m.group(1) in _ESCAPES:
            return _ESCAPES[m.group(1)]
        raise XlConfigError(f"unsupported escape \\{m.group(1)} in {token}", where=where)

    return _ESCAPE.sub(one, token[1:-1])


def parse(text: str, *, source: str) -> dict[str, Setting]:
    """Every key of an xl config and its final value; XlConfigError, naming the file and
    line, for what xl's parser refuses. Two things it refuses pass here (a carriage
    return, a last-line comment without a newline): xl itself says so when it runs."""
    tokens: list[tuple[str, str, int]] = []
    line, position = 1, 0
    while position < len(text):
        m = _TOKEN.match(text, position)
        if m is None:
            near = text[position:].partition("\n")[0][:20]
            raise XlConfigError(f"lexical error at {near!r}", where=f"{source}:{line}")
        kind = m.lastgroup or ""
        if kind in ("ident", "number", "string", "op", "newline"):
            tokens.append((kind, m.group(), line))
        line += m.group().count("\n")
        position = m.end()
    tokens.append(("end", "", line))
    return _Parser(tokens, source).settings()


class _Parser:
    """Recursive descent over the tokens, statement by statement."""

    def __init__(self, tokens: list[tuple[str, str, int]], source: str) -> None:
        self.tokens, self.source, self.at = tokens, source, 0

    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.at]

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def fail(self, what: str) -> XlConfigError:
        kind, text, line = self.peek()
        near = "end of file" if kind == "end" else "end of line" if kind == "newline" else text
        return XlConfigError(f"syntax error: {what}, found {near!r}",
                             where=f"{self.source}:{line}")

    def skip_newlines(self) -> None:
        while self.peek()[0] == "newline":
            self.take()

    def settings(self) -> dict[str, Setting]:
        found: dict[str, Setting] = {}
        while self.peek()[0] != "end":
            kind, text, _ = self.take()
            if kind == "newline" or text == ";":
                continue
            if kind != "ident":
                self.at -= 1
                raise self.fail("expected a key")
            op = self.take()[1]
            if op not in ("=", "+="):
                self.at -= 1
                raise self.fail(f"expected = or += after {text}")
            value_line = self.peek()[2]
            value = self.value()
            if op == "+=" and text in found:
                value = self.concatenated(text, found[text].value, value, value_line)
            found[text] = Setting(value, value_line, added=op == "+=")
            if self.peek()[0] not in ("newline", "end") and self.peek()[1] != ";":
                raise self.fail(f"expected the end of the statement setting {text}")
        return found

    def concatenated(self, key: str, before: Value, added: Value, line: int) -> Value:
        if isinstance(before, str) and isinstance(added, str):
            return before + added
        if isinstance(before, list) and isinstance(added, list):
            return before + added
        raise XlConfigError(f"{key}: can't add [list] to \"string\" or vice versa",
                            where=f"{self.source}:{line}")

    def value(self) -> Value:
        kind, text, line = self.take()
        if kind == "string":
            return _dequote(text, where=f"{self.source}:{line}")
        if kind == "number":
            return text
        if text != "[":
            self.at -= 1
            raise self.fail("expected a value")
        values: list[Value] = []
        self.skip_newlines()
        while self.peek()[1] != "]":
            values.append(self.value())
            self.skip_newlines()
            if self.peek()[1] == ",":
                self.take()
                self.skip_newlines()
            elif self.peek()[1] != "]":
                raise self.fail("expected , or ] in a list")
        self.take()
        return values


def _strtol(text: str) -> int | None:
    """The number C's ``strtol(text, &end, 0)`` reads when it reads all of ``text``
    (xl's way with numbers: 0x hexadecimal, a leading 0 octal), else None."""
    m = re.fullmatch(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text)
    if m is None:
        return None
    digits = m.group(2)
    value = int(digits, 16 if digits[:2].lower() == "0x" else 8 if digits[0] == "0" else 10)
    return -value if m.group(1) == "-" else value


@dataclass(frozen=True)
class DomainSettings:
    """What a config makes of the domain it creates, as xl and libxl 4.17 read it."""

    source: str
    name: str | None
    uuid: str | None
    target_memkb: int
    """What libxl sets the new domain's limit from (plus its 1 MiB slack): ``memory``,
    else ``maxmem``, else libxl's default."""
    memory_from: str
    """Which setting gave ``target_memkb``, as the file spells it (for error messages)."""


def domain_settings(settings: dict[str, Setting], *, source: str) -> DomainSettings:
    """The name, uuid and memory target of the domain a parsed config creates."""

    def atom(key: str) -> str | None:
        setting = settings.get(key)
        if setting is None:
            return None
        if isinstance(setting.value, list):
            raise XlConfigError(f"{key} is a list but should be a single value",
                                where=f"{source}:{setting.line}")
        return setting.value

    def mebibytes(key: str) -> int | None:
        text = atom(key)
        if text is None:
            return None
        setting = settings[key]
        number = None if setting.added else _strtol(text)
        if number is None or number <= 0:
            raise XlConfigError(f"{key} = {text!r} is not a positive number of MiB",
                                where=f"{source}:{setting.line}")
        return number

    memory, maxmem = mebibytes("memory"), mebibytes("maxmem")
    if memory is not None:
        target, memory_from = memory * 1024, f"memory = {memory}"
    elif maxmem is not None:
        target, memory_from = maxmem * 1024, f"maxmem = {maxmem} (no memory setting)"
    else:
        target = LIBXL_DEFAULT_MAX_MEMKB
        memory_from = (f"libxl's default of {LIBXL_DEFAULT_MAX_MEMKB // 1024} MiB (no memory "
                       "setting)")
    return DomainSettings(source=source, name=atom("name"), uuid=atom("uuid"),
                          target_memkb=target, memory_from=memory_from)

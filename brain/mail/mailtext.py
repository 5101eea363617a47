"""Text out of mail: bytes in whatever charset a sender claimed, encoded words, HTML, quotes.

Real mail lies about its charset, puts raw 8-bit bytes in headers, breaks RFC 2047 words and
sends HTML only. Every function here answers with text for any input and never raises on
content: a message must never be lost to a decoding error.

- Charsets: the declared one, read through the WHATWG-style aliases browsers use (a label of
  ISO-8859-1 or US-ASCII means windows-1252, GB2312 means GB18030, Shift_JIS means cp932); a
  Latin label on bytes that are valid UTF-8 is taken as UTF-8 (the common mislabel); unknown
  labels fall back to UTF-8, then windows-1252, then Latin-1, which cannot fail.
- HTML to text: resiliparse (Lexbor, a maintained C++ HTML5 parser with block-aware text
  extraction). inscriptis and html2text give comparable text but cost over ten times as
  much per message; the figures are in docs/mail-model.md.
- Clean text: mail-parser-reply cuts the quoted history ("On ... wrote:", Outlook's
  From:/Sent: block, "-----Original Message-----") and sign-offs and signatures; only the
  answer before the first quote header is searched for them (`_answer`).
"""

from __future__ import annotations

import binascii
import codecs
import email.quoprimime
import functools
import re
import re._constants as _sre_constants  # reading a pattern's structure: see _starts_at_lines
import re._parser as _sre_parser
from typing import Any

from mailparser_reply.constants import OUTLOOK_MAIL_SEPARATOR
from mailparser_reply.parser import EmailMessage as ReplyParse
from mailparser_reply.parser import EmailReply
from resiliparse.extract.html2text import extract_plain_text
from resiliparse.parse.html import HTMLTree

__all__ = [
    "clean_text",
    "clip_utf8",
    "decode_bytes",
    "decode_header_text",
    "html_to_text",
    "normalise_text",
    "snippet_of",
]

# Labels that name a codec other than the one real mail in that label uses (WHATWG Encoding).
_ALIASES = {
    "iso-8859-1": "cp1252",
    "iso8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "ansi_x3.4-1968": "cp1252",
    "iso-8859-9": "cp1254",
    "iso-8859-11": "cp874",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "euc-cn": "gb18030",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "windows-31j": "cp932",
    "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "big5": "big5hkscs",
    "utf8": "utf-8",
    "unicode-1-1-utf-8": "utf-8",
}
# Python codecs that are not a mail charset, or decode into something other than the text.
_REFUSED_CODECS = {"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined", "mbcs", "oem"}
# Single-byte Latin codecs: bytes that are valid UTF-8 under such a label are UTF-8 in practice.
_LATIN = {"cp1252", "latin-1", "iso8859-15", "cp1254", "ascii"}
# Codecs whose encoded form is plain ASCII: ASCII bytes still need decoding.
_SEVEN_BIT_PREFIXES = ("iso2022", "utf-7", "hz", "utf-16", "utf-32")

_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([qQbB])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(\?=)[ \t\r\n]+(=\?)")
# A line end after a blank (\\s but \\n), or the first of four line ends in a row. It starts
# with the line end, so a search skips from one line end to the next.
_UNTIDY_LINE_END = re.compile(r"\n(?:(?<=[^\S\n]\n)|\n\n\n)")
_QP_LOOSE_EQUALS = re.compile(r"=(?![0-9A-Fa-f]{2})")  # an "=" that starts no escape
# Characters that carry no text: C0 controls (but tab and newline), DEL, and the invisible
# format characters newsletters pad their preview text with (zero-width space and joiners,
# BOM, soft hyphen, combining grapheme joiner).
_INVISIBLE_CHARS = "".join(map(chr, [*range(0, 9), 11, 12, *range(14, 32), 0x7F, 0xAD, 0x34F, 0x200B, 0x200C, 0x200D, 0x2060, 0xFEFF]))
_INVISIBLE = re.compile(f"[{re.escape(_INVISIBLE_CHARS)}]+")
# The reply parser's regular expressions cost time in proportion to the text (and it reads
# every quoted reply, not only the answer). In a reply it reads the start, where the answer,
# its sign-off and the quote header are: a short window first (most answers are short), the
# long one only when nothing was cut in the short one. A message that is no reply has no
# quoted history and is read only when short (for its sign-off and signature): a long
# newsletter is its own clean text.
REPLY_WINDOWS = (1024, 4096)
SHORT_TEXT = 2048


@functools.lru_cache(maxsize=256)
def codec_for(label: str | None) -> str | None:
    """The Python codec name for a charset label, or None when the label is unknown or unfit."""
    if not label:
        return None
    name = label.strip().strip("\"'").lower()
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if info.name in _REFUSED_CODECS or not getattr(info, "_is_text_encoding", True):
        return None
    return info.name


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes of text in the declared ``charset`` (trusted only as far as it holds) as str."""
    codec = codec_for(charset)
    if data.isascii() and (codec is None or not codec.startswith(_SEVEN_BIT_PREFIXES)):
        return data.decode("ascii")
    if codec is None or codec in _LATIN:
        tries, last = ("utf-8", codec or "cp1252"), "latin-1"
    elif codec == "utf-8":
        tries, last = ("utf-8", "cp1252"), "latin-1"
    else:
        tries, last = (codec, "utf-8"), codec
    for name in tries:
        try:
            return data.decode(name)
        except UnicodeDecodeError:
            continue
    try:
        return data.decode(last, "replace")
    except (UnicodeError, LookupError):  # a stateful codec can still fail on garbage
        return data.decode("latin-1")


def decode_header_text(value: str) -> str:
    """A header value as readable text: 8-bit bytes repaired, RFC 2047 words decoded, folded.

    ``value`` may carry raw bytes as surrogate escapes (how the stdlib parser keeps 8-bit
    headers); they are read as UTF-8, else windows-1252. Malformed encoded words (a bad
    charset, broken base64) are decoded as far as possible, never dropped.
    """
    if (
        value.isascii() and value.isprintable() and "=?" not in value and "  " not in value
        and value[:1] != " " and value[-1:] != " "
    ):
        # Printable ASCII without an encoded word, double or outer spaces: nothing below
        # changes it (its only blank is the space, and every invisible character is
        # unprintable or not ASCII). Addresses, Message-IDs, most names take this way.
        return value
    value = _repair_8bit(value)
    if "=?" in value:
        # RFC 2047: space between words is not text. Searched first: sub with a template
        # string goes through re's Python-level template code even when nothing matches.
        if _BETWEEN_WORDS.search(value) is not None:
            value = _BETWEEN_WORDS.sub(r"\1\2", value)
        value = _ENCODED_WORD.sub(_decode_word, value)
    return " ".join(_without_invisible(value).split())


def _repair_8bit(value: str) -> str:
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value  # already real text
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogateescape")
        return decode_bytes(raw, None)


def _decode_word(match: re.Match[str]) -> str:
    charset, encoding, text = match.group(1), match.group(2).lower(), match.group(3)
    charset = charset.split("*", 1)[0]  # RFC 2231 language suffix: utf-8*en
    try:
        if encoding == "b":
            data = binascii.a2b_base64(text + "=" * (-len(text) % 4))
        elif _QP_LOOSE_EQUALS.search(text) is None:
            # binascii decodes "_" and "=XX" in C as header_decode does with a regular
            # expression and a Python call per escape, when every "=" starts one.
            data = binascii.a2b_qp(text.encode("latin-1"), header=True)
        else:
            data = email.quoprimime.header_decode(text).encode("latin-1")
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return match.group(0)
    return decode_bytes(data, charset)


def html_to_text(html: str) -> str:
    """The visible text of an HTML document, paragraphs and list items on their own lines."""
    if not html.strip():
        return ""
    try:
        # Given a tree parsed here, resiliparse extracts the same text as from the string, in
        # less time (`python -m bench.mail_convert`, HTML -> text alone).
        text = extract_plain_text(
            HTMLTree.parse(html), preserve_formatting=True, main_content=False, list_bullets=True, alt_texts=False,
            links=False,
        )
    except Exception:  # noqa: BLE001 - the parser's own errors; retry on text it surely takes
        try:
            text = extract_plain_text(html.encode("utf-8", "replace").decode("utf-8"), main_content=False, links=False)
        except Exception:  # noqa: BLE001 - give the message without a body rather than lose it
            return ""
    return normalise_text(text)


def normalise_text(text: str) -> str:
    """Line endings as ``\\n``, no trailing spaces, at most two blank lines in a row, trimmed."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _without_invisible(text)
    # Text whose lines (but the last, which strip() ends) end without blanks and that has no
    # four line ends in a row is already normal: one pass over its line ends tells, where
    # splitting it into lines costs a pass over every character and a string a line.
    if _UNTIDY_LINE_END.search(text) is None:
        return text.strip()
    lines = list(map(str.rstrip, text.split("\n")))
    text = "\n".join(lines)
    # Three blank lines in a row are three empty strings in a row: a byte a line finds them
    # without searching the whole text for four line ends.
    if b"\0\0\0" in bytes(map(bool, lines)):
        # str.replace rather than a regular expression: it is many times faster on long text.
        while "\n\n\n\n" in text:
            text = text.replace("\n\n\n\n", "\n\n\n")
    return text.strip()


def _without_invisible(text: str) -> str:
    # Every invisible character but the combining grapheme joiner is unprintable (a control or
    # a format character): a header value is done with in one pass, a body at its first line end.
    if text.isprintable() and "\u034f" not in text:
        return text
    # Testing for each character first costs a fraction of one regex pass over the text.
    if any(c in text for c in _INVISIBLE_CHARS):
        return _INVISIBLE.sub("", text)
    return text


def clean_text(text: str, languages: tuple[str, ...], *, reply: bool) -> str:
    """``text`` without the quoted history and the signature: what the sender wrote this time.

    mail-parser-reply reads the start of a reply or forward (``reply``; up to the last of
    `REPLY_WINDOWS`) and any message of at most `SHORT_TEXT` characters. When it finds a
    quote header or a signature, the text before it is the answer; when it finds none, the
    sender's own text runs past the window and the whole text is kept, as is a longer
    message that is no reply. Hyphenated lists are kept (a line starting with "- " is not
    a signature here).
    """
    if not text or (not reply and len(text) > SHORT_TEXT):
        return text
    for size in REPLY_WINDOWS:
        try:
            answer, quoted = _answer(text[:size], languages)
        except Exception:  # noqa: BLE001 - a parser bug must not lose the message; keep the text
            return text
        if quoted or answer.signatures or len(text) <= size:
            break  # the answer ends inside this window: a longer one would cut it the same
    else:
        return text  # the answer runs on past the last window: nothing was cut from it
    body = answer.body
    return normalise_text(body) if body.strip() else text


def _answer(window: str, languages: tuple[str, ...]) -> tuple[EmailReply, bool]:
    """The first reply mail-parser-reply finds in ``window``, and whether a quote header ends it.

    ``EmailMessage.read`` splits the whole text at every quote header and looks for a
    signature and disclaimers in every part, the quoted replies included; only the first
    part is the answer. So the answer is cut at the first quote header (the parser's own
    pattern) and only it is searched for a signature and disclaimers, with the parser's
    patterns, as ``read`` does for each part. A text that opens with a quote header (a
    forward) is read by ``read`` itself: its first reply is the quoted one.
    """
    header, signature_regex, disclaimers = _reply_patterns(languages)
    text = _reply_text(window)
    quote = _first_match(header, text)
    if quote is not None and not text[: quote.start()].strip():
        reader = ReplyParse(
            text=window, languages=list(languages), keep_hyphen_lists=True,
            _header_regex=header, _signature_regex=signature_regex, _disclaimers_regex=disclaimers,
        )
        replies = reader.read().replies
        return replies[0], len(replies) > 1
    content = text[: quote.start()] if quote is not None else text
    signature = _first_match(signature_regex, content)
    answer = EmailReply(
        content=content,
        signatures=signature.group() if signature is not None else "",
        disclaimers=disclaimers.findall(content),
    )
    return answer, quote is not None


_OUTLOOK_SEPARATOR_AFTER_TEXT = re.compile(f"([^\n]){OUTLOOK_MAIL_SEPARATOR}")
# What every match of the pattern above contains: two line ends and the start of the separator.
# A search for it starts with a literal and skips along the text; the pattern above starts with
# a class nearly every character is in, and is tried at each one.
_OUTLOOK_SEPARATOR_START = re.compile(r"\n\n ?[_-]{32}")


def _reply_text(window: str) -> str:
    """``window`` as mail-parser-reply normalises the text it reads (``EmailMessage._normalize_text``).

    The same steps without building a reader, and the separator's rewrite only when the text
    has a separator; tests/test_mail_content.py holds the two to the same result.
    """
    text = window.replace("\r\n", "\n")
    text = "\n".join([line.strip() for line in text.split("\n")])
    if _OUTLOOK_SEPARATOR_START.search(text) is not None:
        # A count of 8: the parser hands re.sub re.MULTILINE where it takes the count.
        text = _OUTLOOK_SEPARATOR_AFTER_TEXT.sub("\\1\n", text, 8)
    return text


def _first_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    """``pattern.search(text)``, tried only where a match can start when `_starts_at_lines` says so.

    A search tries the pattern at every character, and the reply patterns cost far more per
    character tried than their one successful match. Every match of theirs starts at a line
    start, at a line end or in blanks that run up to a line start; those positions are
    tried here in order, so the first match is the search's: the same span and groups.
    """
    if not _starts_at_lines(pattern):
        return pattern.search(text)
    match = pattern.match
    found = match(text, 0)
    tried = 1  # every position before this was tried
    end = text.find("\n")
    while found is None and end >= 0:
        start = end
        while start > tried and text[start - 1].isspace():
            start -= 1
        for position in range(max(start, tried), end + 2):  # the blanks, the line end, the next line's start
            found = match(text, position)
            if found is not None:
                break
        tried = end + 2
        end = text.find("\n", end + 1)
    return found


@functools.lru_cache(maxsize=64)
def _starts_at_lines(pattern: re.Pattern[str]) -> bool:
    """Whether every match of ``pattern`` starts at a line start, at ``\\n``, or in blanks (``\\s``)
    that run up to a line start: what `_first_match` relies on. False when unsure."""
    try:
        return _anchored(list(_sre_parser.parse(pattern.pattern, pattern.flags)))
    except Exception:  # noqa: BLE001 - the parser's layout is the stdlib's own: unsure, search
        return False


def _anchored(items: list[tuple[Any, Any]]) -> bool:
    c = _sre_constants
    for index, (op, arg) in enumerate(items):
        if op in (c.ASSERT, c.ASSERT_NOT):
            continue  # a lookaround takes no characters: the match starts where the next item does
        if op is c.AT:
            return arg in (c.AT_BEGINNING, c.AT_BEGINNING_STRING)  # ^ (a line start with MULTILINE), \A
        if op is c.LITERAL:
            return arg == ord("\n")
        if op is c.SUBPATTERN:
            _group, add_flags, del_flags, inner = arg
            return not add_flags and not del_flags and _anchored(list(inner))
        if op is c.ATOMIC_GROUP:
            return _anchored(list(arg))
        if op is c.BRANCH:
            return all(_anchored(list(branch)) for branch in arg[1])
        if op in (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT):
            low, _high, inner = arg
            if low >= 1:
                return _anchored(list(inner))
            if list(inner) == [(c.IN, [(c.CATEGORY, c.CATEGORY_SPACE)])]:
                return _anchored(items[index + 1 :])  # \s* then a start of these kinds: in blanks before one
            return False
        return False
    return False


@functools.lru_cache(maxsize=16)
def _reply_patterns(languages: tuple[str, ...]) -> tuple[re.Pattern[str], re.Pattern[str], re.Pattern[str]]:
    """mail-parser-reply's quote header, signature and disclaimer patterns for ``languages``.

    The parser builds each pattern's source from its language tables for every message it
    reads (re's cache then finds the compiled pattern); they depend on the languages alone, so
    they are built here once and handed to each reader, which uses them as its own.
    """
    reader = ReplyParse(text="", languages=list(languages), keep_hyphen_lists=True)
    return reader.HEADER_REGEX, reader.SIGNATURE_REGEX, reader.DISCLAIMERS_REGEX


def clip_utf8(text: str, limit: int) -> tuple[str, int | None]:
    """``text`` cut to at most ``limit`` UTF-8 bytes on a character boundary, and its full size if cut."""
    if len(text) <= limit // 4:  # cannot exceed: a character is at most 4 bytes
        return text, None
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= limit:
        return text, None
    return encoded[:limit].decode("utf-8", "ignore"), len(encoded)


def snippet_of(text: str, chars: int) -> str:
    """The first ``chars`` characters of ``text`` on one line."""
    # Folded from the first chars * 4 characters: enough for the result without folding a
    # whole body. Most text has its chars characters, complete words, in the first chars * 2:
    # every word of such a shorter fold before its last blank is a whole word of the text.
    short = " ".join(text[: chars * 2].split())
    if short.rfind(" ") >= chars or len(text) <= chars * 2:
        return short[:chars]
    return " ".join(text[: chars * 4].split())[:chars]

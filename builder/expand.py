"""Docker's word expansion (``$a``, ``${a:-b}``, quotes, escapes) as the Dockerfile builder does it.

This follows the behaviour of BuildKit's shell lexer (``frontend/dockerfile/shell/lex.go``,
``ProcessWord`` / ``ProcessWords``); it is a re-implementation from that behaviour, not a port.

What a word goes through, left to right:

* ``$name`` / ``${name}``: the value from ``env``; an unset name expands to ``""``. A name is a
  letter or ``_`` followed by letters, digits, ``_``; ``$1`` reads digits; ``$@ $* $# $? $- $$ $!
  $0`` are names of one character (never set, so ``""``); ``$`` before anything else stays ``$``.
* ``${a:-w}`` ``${a-w}`` (default), ``${a:+w}`` ``${a+w}`` (alternative), ``${a:?w}`` ``${a?w}``
  (required: raises :class:`ExpansionError` with ``"a: w"``), where the ``:`` forms also treat an
  empty value as unset. ``w`` is itself expanded (nested ``${…}``, quotes, escapes).
* ``${a#p}`` ``${a##p}`` ``${a%p}`` ``${a%%p}`` (prefix/suffix removal, ``*`` and ``?``
  wildcards) and ``${a/p/r}`` ``${a//p/r}`` (first/all replacement), as newer Dockerfile syntax.
* ``'…'``: literal, no expansion, no escapes. ``"…"``: expansion; the escape character escapes
  only ``"``, ``$`` and itself, otherwise it stays literally.
* The escape character (``\\`` by default, or `````) outside quotes makes the next character
  literal; at the very end of the word it is dropped.
* Word splitting (:func:`expand_words`) happens after expansion, at unquoted white space, also
  white space that a ``$var`` produced; ``<<`` keeps the blanks after it in its word
  (``<< EOF`` is one word), as newer BuildKit does for heredoc markers.

Errors raise :class:`ExpansionError` (a ``ValueError``), which carries the ``word`` and the
``reason``; callers that know the Dockerfile line wrap it into a
:class:`pybuild.errors.DockerfileError` (see :func:`pybuild.builder.dockerfile.expansion_error`).

Which instructions the builder expands is :data:`EXPANDED_INSTRUCTIONS`; RUN, CMD, ENTRYPOINT,
SHELL and HEALTHCHECK are left to the shell at run time.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "EXPANDED_INSTRUCTIONS",
    "ExpansionError",
    "ShellLexer",
    "env_pairs_expand",
    "expand_heredoc",
    "expand_word",
    "expand_words",
    "is_go_space",
]

#: Instructions whose arguments the builder expands with the ARG/ENV state before the line
#: (docker's ``replaceEnvAllowed`` set). EXPOSE is expanded into several words
#: (:func:`expand_words`), the others word by word (:func:`expand_word`). ONBUILD is not expanded
#: when defined; its trigger is expanded when it runs in the child build.
EXPANDED_INSTRUCTIONS: frozenset[str] = frozenset({
    "ADD", "ARG", "COPY", "ENV", "EXPOSE", "FROM", "LABEL", "STOPSIGNAL", "USER", "VOLUME",
    "WORKDIR",
})

_SPECIAL_PARAMS = frozenset("@*#?-$!0")
_HEREDOC_BLANKS = frozenset(" \t\r\n")
_LATIN1_SPACES = frozenset("\t\n\v\f\r \x85\xa0")


def is_go_space(ch: str) -> bool:
    """True when Go's ``unicode.IsSpace`` says ``ch`` is white space (Python's is broader)."""
    if ord(ch) <= 0xFF:
        return ch in _LATIN1_SPACES
    return ch.isspace()


class ExpansionError(ValueError):
    """A word could not be expanded (bad ``${…}`` syntax, unterminated quote, ``${a?msg}``).

    ``word`` is the text being expanded, ``reason`` the cause as docker words it. ``str()`` is
    ``failed to process "<word>": <reason>``.
    """

    def __init__(self, word: str, reason: str) -> None:
        super().__init__(f'failed to process "{word}": {reason}')
        self.word = word
        self.reason = reason


class _Fail(Exception):
    """Internal: a lexing failure before the source word is known to the message."""


_EOF = ""


class _Scanner:
    """A cursor over a string: ``peek``/``next`` return ``""`` at the end."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else _EOF

    def next(self) -> str:
        if self.pos >= len(self.text):
            return _EOF
        ch = self.text[self.pos]
        self.pos += 1
        return ch


@dataclass
class _Words:
    """Collects the words of :meth:`ShellLexer.process_words` as characters arrive."""

    word: str = ""
    words: list[str] = field(default_factory=list)
    in_word: bool = False

    def add_char(self, ch: str) -> None:
        """An unquoted character: white space ends a non-empty word."""
        if is_go_space(ch):
            if self.in_word and self.word:
                self.words.append(self.word)
                self.word = ""
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.word += ch
        self.in_word = True

    def add_string(self, text: str) -> None:
        for ch in text:
            self.add_char(ch)

    def add_raw_string(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def result(self) -> list[str]:
        if self.word:
            self.words.append(self.word)
            self.word = ""
            self.in_word = False
        return self.words


class ShellLexer:
    """Docker's Dockerfile word lexer with its knobs.

    ``escape`` is ``\\\\`` or `````. ``raw_quotes`` keeps quote characters in the result,
    ``raw_escapes`` keeps escape characters, ``skip_unset`` leaves references to unset names as
    written (``$x``, ``${x:-y}``), ``process_quotes=False`` treats quotes as ordinary characters
    (used for heredoc bodies). The defaults are what the builder uses for instruction words.
    """

    def __init__(self, escape: str = "\\", *, raw_quotes: bool = False, raw_escapes: bool = False,
                 skip_unset: bool = False, process_quotes: bool = True) -> None:
        if escape not in ("\\", "`"):
            raise ValueError(f"escape must be \\ or `, not {escape!r}")
        self.escape = escape
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_unset = skip_unset
        self.process_quotes = process_quotes

    def process_word(self, word: str, env: Mapping[str, str]) -> str:
        """``word`` expanded into one string (quotes removed, inner spaces kept).

        Raises :class:`ExpansionError`.
        """
        return self._run(word, env)[0]

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """``word`` expanded and split at unquoted white space (also white space that came out of
        a ``$`` expansion); quoted or escaped white space stays inside a word; empty words
        (e.g. ``""``) are dropped, as docker does. Raises :class:`ExpansionError`."""
        return self._run(word, env)[1]

    def _run(self, word: str, env: Mapping[str, str]) -> tuple[str, list[str]]:
        state = _Lexing(self, _Scanner(word), env)
        try:
            return state.stop_on(_EOF, self.raw_escapes)
        except _Fail as e:
            raise ExpansionError(word, str(e)) from None


class _Lexing:
    """One run of the lexer over one word."""

    def __init__(self, lexer: ShellLexer, scanner: _Scanner, env: Mapping[str, str]) -> None:
        self.lx = lexer
        self.sc = scanner
        self.env = env
        self.raw_escapes = lexer.raw_escapes

    # -- the main loop -------------------------------------------------------------------------
    def stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        """Process until ``stop`` (consumed) or the end (when ``stop`` is ``""``)."""
        saved, self.raw_escapes = self.raw_escapes, raw_escapes
        try:
            return self._stop_on(stop)
        finally:
            self.raw_escapes = saved

    def _stop_on(self, stop: str) -> tuple[str, list[str]]:
        out: list[str] = []
        words = _Words()
        sc, esc = self.sc, self.lx.escape
        while sc.peek() != _EOF:
            ch = sc.peek()
            if stop and ch == stop:
                sc.next()
                return "".join(out), words.result()
            if ch == "$":
                text = self._dollar()
                out.append(text)
                words.add_string(text)
            elif ch == "<":
                text = self._angle()
                out.append(text)
                words.add_raw_string(text)
            elif self.lx.process_quotes and ch in "'\"":
                text = self._single_quoted() if ch == "'" else self._double_quoted()
                out.append(text)
                words.add_raw_string(text)
            else:
                ch = sc.next()
                if ch == esc:
                    if self.raw_escapes:
                        words.add_raw_char(ch)
                        out.append(ch)
                    ch = sc.next()
                    if ch == _EOF:
                        break
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                out.append(ch)
        if stop:
            raise _Fail(f"unexpected end of statement while looking for matching {stop}")
        return "".join(out), words.result()

    # -- quotes --------------------------------------------------------------------------------
    def _single_quoted(self) -> str:
        """Everything up to the next ``'`` literally."""
        out: list[str] = []
        quote = self.sc.next()
        if self.lx.raw_quotes:
            out.append(quote)
        while True:
            ch = self.sc.next()
            if ch == _EOF:
                raise _Fail("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.lx.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def _double_quoted(self) -> str:
        """Up to the next unescaped ``"``, expanding ``$`` and escaping ``" $`` and the escape."""
        out: list[str] = []
        sc, esc = self.sc, self.lx.escape
        quote = sc.next()
        if self.lx.raw_quotes:
            out.append(quote)
        while True:
            peek = sc.peek()
            if peek == _EOF:
                raise _Fail("unexpected end of statement while looking for matching double-quote")
            if peek == '"':
                ch = sc.next()
                if self.lx.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if peek == "$":
                out.append(self._dollar())
                continue
            ch = sc.next()
            if ch == esc:
                if self.raw_escapes:
                    out.append(ch)
                nxt = sc.peek()
                if nxt == _EOF:
                    continue  # dropped; the loop then reports the missing quote
                if nxt in ('"', "$", esc):
                    ch = sc.next()
            out.append(ch)

    def _angle(self) -> str:
        """``<``; for ``<<`` also the blanks right after it, so ``<< EOF`` stays one word (newer
        BuildKit accepts white space between a heredoc's ``<<`` and its delimiter)."""
        sc = self.sc
        sc.next()
        if sc.peek() != "<":
            return "<"
        sc.next()
        blanks: list[str] = []
        while sc.peek() != _EOF and sc.peek() in _HEREDOC_BLANKS:
            blanks.append(sc.next())
        return "<<" + "".join(blanks)

    # -- $ ---------------------------------------------------------------------------------------
    def _dollar(self) -> str:
        sc = self.sc
        sc.next()  # the $
        if sc.peek() != "{":
            name = self._name()
            if not name:
                return "$"
            value = self.env.get(name)
            if value is None:
                return "$" + name if self.lx.skip_unset else ""
            return value
        sc.next()  # the {
        peek = sc.peek()
        if peek == _EOF:
            raise _Fail("syntax error: missing '}'")
        if peek in "{}:":
            raise _Fail("syntax error: bad substitution")
        name = self._name()
        ch = sc.next()
        if ch == "}":
            value = self.env.get(name)
            if value is None:
                return "${" + name + "}" if self.lx.skip_unset else ""
            return value
        if ch == ":":
            return self._modifier(name, ":", sc.next(), null_is_unset=True)
        if ch in ("+", "-", "?", "#", "%"):
            return self._modifier(name, "", ch, null_is_unset=False)
        if ch == "/":
            return self._replace(name)
        if ch == _EOF:
            raise _Fail("syntax error: missing '}'")
        raise _Fail(f"unsupported modifier ({ch}) in substitution")

    def _name(self) -> str:
        """A variable name: letters/digits/_, or a run of digits, or one special character."""
        sc = self.sc
        name: list[str] = []
        while sc.peek() != _EOF:
            ch = sc.peek()
            if not name and ch.isdecimal():
                while sc.peek() != _EOF and sc.peek().isdecimal():
                    name.append(sc.next())
                return "".join(name)
            if not name and ch in _SPECIAL_PARAMS:
                return sc.next()
            if not (ch.isalpha() or ch.isdecimal() or ch == "_"):
                break
            name.append(sc.next())
        return "".join(name)

    def _modifier(self, name: str, colon: str, op: str, *, null_is_unset: bool) -> str:
        """``${name[:]op word}`` after ``op`` was read; ``op`` may be anything after a ``:``."""
        word = self._until_brace(raw_escapes=op in ("#", "%"))
        value = self.env.get(name)
        if value is None and self.lx.skip_unset:
            return "${" + name + colon + op + word + "}"
        missing = value is None or (null_is_unset and value == "")
        if op == "-":
            return word if missing else value  # type: ignore[return-value]
        if op == "+":
            return "" if missing else word
        if op == "?":
            if value is None:
                raise _Fail(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _Fail(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if op in ("#", "%"):
            greedy = word.startswith(op)
            pattern = word[1:] if greedy else word
            if op == "%":
                return _trim_suffix(pattern, value or "", greedy)
            return _trim_prefix(pattern, value or "", greedy)
        raise _Fail(f"unsupported modifier ({colon}{op}) in substitution")

    def _until_brace(self, *, raw_escapes: bool) -> str:
        try:
            return self.stop_on("}", raw_escapes)[0]
        except _Fail:
            if self.sc.peek() == _EOF:
                raise _Fail("syntax error: missing '}'") from None
            raise

    def _replace(self, name: str) -> str:
        """``${name/pattern/replacement}`` and ``${name//pattern/replacement}``."""
        sc = self.sc
        replace_all = sc.peek() == "/"
        if replace_all:
            sc.next()
        try:
            pattern = self.stop_on("/", True)[0]
        except _Fail:
            if sc.peek() == _EOF:
                raise _Fail("syntax error: missing '/' in ${}") from None
            raise
        replacement = self._until_brace(raw_escapes=True)
        value = self.env.get(name)
        if value is None and self.lx.skip_unset:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        regex = _pattern_regex(pattern, greedy=True, anchored=False)
        return _substitute(regex, value or "", replacement, replace_all)


# -- shell patterns (#, %, /) ----------------------------------------------------------------------
_REGEX_SPECIAL = frozenset("[]{}.+()|^$")


def _pattern_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """A shell wildcard pattern (``*``, ``?``, ``\\`` escapes; no brackets) as a regex."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    sc = _Scanner(pattern)
    while (tok := sc.next()) != _EOF:
        if tok == "*":
            out.append(star)
            continue
        if tok == "?":
            out.append(".")
            continue
        if tok == "\\":
            if sc.peek() in ("}", "/") and sc.peek() != _EOF:
                continue  # the escape only protected the ${} syntax
            tok = sc.next()
            if tok not in ("*", "?", "\\") or tok == _EOF:
                raise _Fail(f"invalid pattern ({pattern}) in substitution: "
                            f"invalid escape '\\{tok}'")
            out.append("\\" + tok)
            continue
        out.append("\\" + tok if tok in _REGEX_SPECIAL else tok)
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = _pattern_regex(pattern, greedy=greedy, anchored=True).match(value)
    return value[m.end():] if m else value


def _reverse_pattern(pattern: str) -> str:
    """The pattern reversed, keeping each ``\\x`` escape pair in order."""
    units: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            units.append(pattern[i:i + 2])
            i += 2
        else:
            units.append(pattern[i])
            i += 1
    return "".join(reversed(units))


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    reversed_value = value[::-1]
    regex = _pattern_regex(_reverse_pattern(pattern), greedy=greedy, anchored=True)
    m = regex.match(reversed_value)
    return reversed_value[m.end():][::-1] if m else value


def _substitute(regex: re.Pattern[str], value: str, replacement: str, replace_all: bool) -> str:
    """Replace the first (or every) match literally; like Go, an empty match right after a
    previous match is not replaced."""
    if not replace_all:
        m = regex.search(value)
        return value[:m.start()] + replacement + value[m.end():] if m else value
    out: list[str] = []
    last = 0
    prev_end = -1
    for m in regex.finditer(value):
        if m.start() == m.end() and m.start() == prev_end:
            continue
        out.append(value[last:m.start()])
        out.append(replacement)
        last = prev_end = m.end()
    out.append(value[last:])
    return "".join(out)


# -- the public helpers ----------------------------------------------------------------------------
def expand_word(word: str, env: Mapping[str, str], *, escape: str = "\\") -> str:
    """``word`` with variables expanded and quotes/escapes removed, as one string.

    This is docker's ``ProcessWord``: white space inside the result is kept. Raises
    :class:`ExpansionError` for malformed substitutions, unterminated quotes and ``${a?msg}``.
    """
    return ShellLexer(escape).process_word(word, env)


def expand_words(text: str, env: Mapping[str, str], *, escape: str = "\\") -> list[str]:
    """``text`` expanded and split into words (docker's ``ProcessWords``, used for EXPOSE).

    Unquoted white space separates words, including white space produced by ``$var``;
    ``"a b"``, ``'a b'`` and ``a\\ b`` stay one word; empty words are dropped.
    Raises :class:`ExpansionError`.
    """
    return ShellLexer(escape).process_words(text, env)


def expand_heredoc(body: str, env: Mapping[str, str]) -> str:
    """A heredoc body expanded the way BuildKit does for ``COPY <<EOF`` with an unquoted
    delimiter: ``$var`` and ``${…}`` are replaced, quotes are left as they are, and the escape is
    always ``\\`` (whatever the escape directive says). Raises :class:`ExpansionError`."""
    return ShellLexer("\\", process_quotes=False).process_word(body, env)


def env_pairs_expand(pairs: Iterable[tuple[str, str]], env: Mapping[str, str], *,
                     escape: str = "\\") -> list[tuple[str, str]]:
    """Expand the keys and values of one ENV (or LABEL) line.

    Every word of the line is expanded against ``env`` as it was *before* the line, so
    ``ENV a=new b=$a`` gives ``b`` the old value of ``a``. The caller applies the returned pairs
    in order afterwards. Raises :class:`ExpansionError`.
    """
    lexer = ShellLexer(escape)
    return [(lexer.process_word(k, env), lexer.process_word(v, env)) for k, v in pairs]

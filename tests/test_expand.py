"""Word expansion as docker's Dockerfile builder does it.

The vectors follow the behaviour pinned down by BuildKit's shell lexer tests (its ``envVarTest``
and ``wordsTest`` files and ``lex_test.go``), restated here as our own cases. Unless a case says
otherwise the environment is :data:`ENV`.
"""
from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pybuild.builder.expand import (
    EXPANDED_INSTRUCTIONS,
    ExpansionError,
    ShellLexer,
    env_pairs_expand,
    expand_heredoc,
    expand_word,
    expand_words,
)

ENV = {"HOME": "/root", "SHELL": "sh", "GREETING": "안녕", "BLANK": ""}

ERROR = object()  # marks a word that must not expand

# (source word, expected result) — one string out, quotes and escapes consumed.
WORD_CASES = [
    # plain words, quotes and escapes
    ("plain", "plain"),
    ("ab'cd'ef", "abcdef"),
    ("ab'cd", ERROR),                        # single quote never closed
    ("ab\\'cd", "ab'cd"),                    # escaped quote is literal
    ("ab\\\\'cd", ERROR),                    # escaped escape, then an open quote
    ("x\\ny", "xny"),                        # unquoted escape just keeps the next char
    ('"x\\ny"', "x\\ny"),                    # in double quotes \n is not special: kept
    ('"x\\\\ny"', "x\\ny"),                  # in double quotes \\ is one backslash
    ("'x\\ny'", "x\\ny"),                    # single quotes keep everything
    ("tail\\", "tail"),                      # escape at the very end disappears
    ("tail\\\\", "tail\\"),
    ('"open', ERROR),
    ('"open\\"', ERROR),                     # the only quote is escaped
    ('"it\'s"', "it's"),
    ("'open", ERROR),
    ("'end\\'", "end\\"),                    # no escaping inside single quotes
    ('"\'\'"', "''"),
    ("'\"dq\"'", '"dq"'),
    # $name forms
    ("$", "$"),
    ("$.", "$."),
    ("a$.b", "a$.b"),
    ("x$1y", "xy"),                          # positional: digits make the name
    ("x$home.", "x."),                       # names are case-sensitive on Linux
    ("x$HOME", "x/root"),
    ("x\\$HOME", "x$HOME"),
    ("x\\\\$HOME", "x\\/root"),
    ('"x\\$HOME"', "x$HOME"),
    ('"x\\\\$HOME"', "x\\/root"),
    ("'x$HOME'", "x$HOME"),
    ("'\\$HOME'", "\\$HOME"),
    ('"\'$HOME\'"', "'/root'"),
    ("$$", ""),                              # special one-char names are never set
    ("$GREETING!", "안녕!"),
    ("안'녕'", "안녕"),
    # ${name} forms
    ("\\${}", "${}"),
    ("x\\${}y", "x${}y"),
    ("${}", ERROR),
    ("x${}y", ERROR),
    ("x${unset}y", "xy"),
    ("x${HOME}y", "x/rooty"),
    ("x${.}", ERROR),
    ("x${HOME", ERROR),
    ("${{a}", ERROR),
    ("${{a}}", ERROR),
    ("${a}}", "}"),
    ("${a}}}", "}}"),
    ("${:-x}", ERROR),
    # default / alternative / required
    ("x${unset:-dflt}y", "xdflty"),
    ("x${HOME:-dflt}y", "x/rooty"),
    ("x${unset:-$HOME}y", "x/rooty"),
    ("x${unset:-${other:-deep}}y", "xdeepy"),
    ("x${BLANK:-dflt}", "xdflt"),            # with ':' empty counts as unset
    ("x${BLANK-dflt}", "x"),                 # without ':' only unset counts
    ("x${unset-dflt}", "xdflt"),
    ("x${HOME:+alt}y", "xalty"),
    ("x${unset:+alt}y", "xy"),
    ("x${BLANK:+alt}", "x"),
    ("x${BLANK+alt}", "xalt"),
    ("x${HOME:+${SHELL}}y", "xshy"),
    ("x${HOME:+${unset}}y", "xy"),
    ("x${HOME+${HOME}:}y", "x/root:y"),
    ("x${unset:-\\$HOME:}y", "x$HOME:y"),
    ("x${unset:-\\${HOME}z}y", "x${HOMEz}y"),  # the } of the default ends at the first }
    ("${unset:-'single $HOME'}", "single $HOME"),
    ('${unset:-"double $HOME"}', "double /root"),
    ("x${HOME?}", "x/root"),
    ("x${HOME:?}", "x/root"),
    ("x${BLANK?}", "x"),
    ("x${BLANK:?}", ERROR),
    ("x${unset?}", ERROR),
    ("x${unset:?}", ERROR),
    ("x${HOME:bad}", ERROR),                 # ':' must be followed by - + ? (or # %)
    ("x${HOME=v}", ERROR),                   # assignment is not supported
    # pattern removal and replacement
    ("${HOME#/}", "root"),
    ("${HOME#*o}", "ot"),
    ("${HOME##*o}", "t"),
    ("${HOME%o*}", "/ro"),
    ("${HOME%%o*}", "/r"),
    ("${HOME#x}", "/root"),
    ("${HOME/o/0}", "/r0ot"),
    ("${HOME//o/0}", "/r00t"),
    ("${HOME//o}", ERROR),                   # the replacement part needs its own /
    ("${HOME#\\x}", ERROR),                  # only \\* \\? \\\\ are valid escapes in patterns
]


@pytest.mark.parametrize("word, expected", WORD_CASES, ids=[c[0] for c in WORD_CASES])
def test_expand_word(word: str, expected: object) -> None:
    if expected is ERROR:
        with pytest.raises(ExpansionError) as info:
            expand_word(word, ENV)
        assert info.value.word == word
        assert str(info.value).startswith(f'failed to process "{word}": ')
    else:
        assert expand_word(word, ENV) == expected


def test_there_are_enough_word_cases() -> None:
    assert len(WORD_CASES) >= 40


# Splitting: the environment of the wordsTest file.
WORDS_ENV = {"hi": "hi", "twospace": "abc  def", "lead": "  ab c", "trail": "ab c   "}

WORDS_CASES = [
    ("hello", ["hello"]),
    ("hello${nothere}bye", ["hellobye"]),
    ("hello${hi}bye", ["hellohibye"]),
    ("hello${twospace}bye", ["helloabc", "defbye"]),
    ('hello"${twospace}"bye', ["helloabc  defbye"]),
    ('hello "${twospace}"bye', ["hello", "abc  defbye"]),
    ("hello${lead}def", ["hello", "ab", "cdef"]),
    ('hello"${lead}" def', ["hello  ab c", "def"]),
    ('hello"${lead}"', ["hello  ab c"]),
    ("hello${lead}", ["hello", "ab", "c"]),
    ("hello${trail}", ["helloab", "c"]),
    ("hello${trail}d", ["helloab", "c", "d"]),
    ('hello"${trail}"d', ["helloab c   d"]),
    ('hel"lo${trail}"', ["helloab c   "]),
    ('hello"   there  "', ["hello   there  "]),
    ("hello there     ", ["hello", "there"]),
    ("hello\\ there", ["hello there"]),
    ('hello\\" there', ['hello"', "there"]),
    ('hello"\\\\there"', ["hello\\there"]),
    ('hello"\\there"', ["hello\\there"]),
    ("hello'\\\\there'", ["hello\\\\there"]),
    ("hello'$there'", ["hello$there"]),
    ('a "" b', ["a", "b"]),                  # empty quoted words vanish, as in docker
    ("80/tcp $PORTS", ["80/tcp", "443", "8080/udp"]),
]


@pytest.mark.parametrize("text, expected", WORDS_CASES, ids=[c[0] for c in WORDS_CASES])
def test_expand_words(text: str, expected: list[str]) -> None:
    assert expand_words(text, {**WORDS_ENV, "PORTS": " 443  8080/udp "}) == expected


def test_expand_words_reports_unterminated_quotes() -> None:
    with pytest.raises(ExpansionError, match="double-quote"):
        expand_words('hello" there', WORDS_ENV)


def test_heredoc_marker_with_spaces_stays_one_word() -> None:
    assert expand_words("cat << EOF > f", {}) == ["cat", "<< EOF", ">", "f"]
    assert expand_word("a < b", {}) == "a < b"


# Options
def test_backtick_escape() -> None:
    assert expand_word("c:\\dir`$HOME", ENV, escape="`") == "c:\\dir$HOME"
    assert expand_word('"a`"b"', ENV, escape="`") == 'a"b'
    assert expand_word("a\\$HOME", ENV, escape="`") == "a\\/root"
    assert expand_words("a` b c", {}, escape="`") == ["a b", "c"]


def test_bad_escape_is_rejected() -> None:
    with pytest.raises(ValueError):
        expand_word("x", {}, escape="^")


def test_required_variable_message() -> None:
    with pytest.raises(ExpansionError) as info:
        expand_word("${VAR:?set VAR with --build-arg $HINT}", {"VAR": "", "HINT": "now"})
    assert info.value.reason == "VAR: set VAR with --build-arg now"
    with pytest.raises(ExpansionError) as info:
        expand_word("${VAR?}", {})
    assert info.value.reason == "VAR: is not allowed to be unset"
    with pytest.raises(ExpansionError) as info:
        expand_word("${VAR:?}", {"VAR": ""})
    assert info.value.reason == "VAR: is not allowed to be empty"
    assert isinstance(info.value, ValueError)


def test_pattern_edge_cases() -> None:
    env = {"F": "()[]{}^$.*?|\\x", "S": "xx**", "T": "a***yy*", "P": "/foo*/*/*.txt",
           "N": "\\*/", "U": "/tmp/foo.txt"}
    assert expand_word("${F#()[]{\\}^$.\\*\\?|\\\\}", env) == "x"
    assert expand_word("${S%%\\**}", env) == "xx"
    assert expand_word("${T%%\\**\\*}", env) == "a"
    assert expand_word("${P/$N/.} - ${P//$N/.}", env) == "/foo.*/*.txt - /foo..*.txt"
    assert expand_word("${U//\\//\\/}", env) == "\\/tmp\\/foo.txt"
    assert expand_word("${U/$unset/ww}", env) == "ww/tmp/foo.txt"
    assert expand_word("${U///}", env) == "/tmp/foo.txt"
    assert expand_word("${unset///}", env) == ""


def test_raw_lexer_modes_used_for_heredoc_detection() -> None:
    raw = ShellLexer("\\", raw_quotes=True, raw_escapes=True, skip_unset=True)
    assert raw.process_words("RUN <<'EOF' $X ${Y:-z} a\\ b", {}) == \
        ["RUN", "<<'EOF'", "$X", "${Y:-z}", "a\\ b"]
    assert ShellLexer("\\", skip_unset=True).process_word("$X-${X}", {"X": "1"}) == "1-1"


def test_heredoc_body_expansion_keeps_quotes() -> None:
    body = 'echo "$HOME" \'$SHELL\' \\$HOME ${unset:-d}\n'
    # quotes are not processed, so even '$SHELL' is expanded (as BuildKit does)
    assert expand_heredoc(body, ENV) == "echo \"/root\" 'sh' $HOME d\n"
    with pytest.raises(ExpansionError):
        expand_heredoc("${HOME\n", ENV)


def test_env_line_uses_values_from_before_the_line() -> None:
    pairs = [("a", "new"), ("b", "$a"), ('"c d"', "${a}-${b:-none}")]
    assert env_pairs_expand(pairs, {"a": "old"}) == [
        ("a", "new"), ("b", "old"), ("c d", "old-none")]


def test_env_pairs_expand_reports_errors() -> None:
    with pytest.raises(ExpansionError):
        env_pairs_expand([("a", '"unterminated')], {})


def test_expanded_instruction_set() -> None:
    assert EXPANDED_INSTRUCTIONS == {"ADD", "ARG", "COPY", "ENV", "EXPOSE", "FROM", "LABEL",
                                     "STOPSIGNAL", "USER", "VOLUME", "WORKDIR"}
    for never in ("RUN", "CMD", "ENTRYPOINT", "SHELL", "HEALTHCHECK", "ONBUILD", "MAINTAINER"):
        assert never not in EXPANDED_INSTRUCTIONS


# Properties
_PLAIN = st.text(alphabet=string.ascii_letters + string.digits + "/._-:@+,=", min_size=1)


@given(_PLAIN)
def test_words_without_special_characters_are_unchanged(word: str) -> None:
    assert expand_word(word, ENV) == word


@given(st.lists(_PLAIN, min_size=1, max_size=6))
def test_plain_words_split_back(words: list[str]) -> None:
    assert expand_words("  ".join(words), ENV) == words


@given(st.text(alphabet=string.ascii_letters + " $'\"\\{}", max_size=30))
def test_single_quoting_protects_anything(text: str) -> None:
    quoted = "'" + text.replace("'", "'\\''") + "'"
    assert expand_word(quoted, ENV) == text


@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True),
                       st.text(max_size=10), max_size=4))
def test_braced_reference_returns_the_value(env: dict[str, str]) -> None:
    for name, value in env.items():
        assert expand_word("${" + name + "}", env) == value
        assert expand_word('"$' + name + '"', env) == value

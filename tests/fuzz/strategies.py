"""Hypothesis strategies for the fuzz targets: Dockerfile-ish text, expansion words, image
references, tar member names and small (possibly broken) layer tars.

Generated text is built from the pieces that matter to the parsers (keywords, flags, quotes,
``$``/``${``, heredoc markers, escapes, continuations, directives, JSON brackets) mixed with
random unicode, and from mutations of the seed corpus (``corpus/``).
"""
from __future__ import annotations

import io
import json
import tarfile
from functools import lru_cache
from pathlib import Path

from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
REPO = HERE.parent.parent

VALID_KEYWORDS = ["FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                  "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
                  "from", "run", "Copy", "onbuild"]
ODD_KEYWORDS = ["FROMM", "RUN\u00a0", "ＲＵＮ", "AS", "as", "NONE", "scratch", "", "#RUN", "RUN#"]
KEYWORDS = VALID_KEYWORDS + ODD_KEYWORDS
FLAGS = ["--from=", "--from=base", "--from=0", "--chown=", "--chown=1:1", "--chown=a:b", "--chmod=", "--chmod=755",
         "--chmod=u+x", "--link", "--link=false", "--parents", "--exclude=*.md", "--mount=type=cache,target=/x",
         "--mount=type=bind,source=.,target=/c", "--mount=type=secret,id=s", "--mount=", "--mount=type=tmpfs",
         "--network=none", "--network=", "--security=insecure", "--platform=linux/amd64", "--platform=$TARGETPLATFORM",
         "--interval=5s", "--timeout=1m30s", "--start-period=", "--start-interval=1ms", "--retries=3",
         "--retries=-1", "--retries=x", "--keep-git-dir", "--checksum=sha256:00", "--", "--=", "-", "--unknown",
         "--from", "--chown", "--interval=1h2m3s4ms5us6ns", "--interval=1.5h", "--interval=999999999999h"]
PIECES = ["$", "${", "}", "{", "$$", "$1", "$@", "$*", "$#", "${a}", "${a:-b}", "${a:+b}", "${a:?msg}", "${a?}",
          "${a#p}", "${a##*}", "${a%p}", "${a%%*}", "${a/p/r}", "${a//p/r}", "${a:", "${:}", "${}", "${a-",
          "'", '"', "\\", "`", "\\\\", "\\\n", "`\n", "\\ \n", " ", "\t", "\r", "\n", "\r\n", "=", "a=b", "a=",
          "=b", "#", "# c", "<<", "<<EOF", "<<-EOF", "<<'EOF'", '<<"EOF"', "<<E\"O\"F", "3<<EOF", "<< EOF", "EOF",
          "\tEOF", "[", "]", '["a"]', '["a", "b"]', '[ "x" ]', '["unterminated', "[1, 2]", "[]", '["\\u0000"]',
          ",", ":", "/", "/..", "..", "*", "?", "[a-z]", "!", "0", "1", "-1", "99999999999999999999", "1/tcp",
          "80-90/udp", "SIGKILL", "9", "a b", "\u00a0", "\u0085", "\u2028", "\ufeff", "\x00", "\x0b", "\x0c",
          "é", "안녕", "😀", "\udcff"]
DIRECTIVES = ["# escape=`", "# escape=\\", "# escape=x", "#escape=`", "# syntax=docker/dockerfile:1",
              "# check=skip=all", "# ESCAPE=`", "# escape = `", "# syntax=a", "# syntax=b", "#"]
ENV_NAMES = ["a", "A", "HOME", "_", "a1", "PATH", "empty", "sp"]


@lru_cache(maxsize=None)
def corpus_dockerfiles() -> tuple[str, ...]:
    """The seed Dockerfiles: corpus/dockerfiles/*.Dockerfile and the parser's golden files."""
    files = sorted((CORPUS / "dockerfiles").glob("*.Dockerfile")) + sorted((REPO / "testdata" / "parser").glob("*.Dockerfile"))
    return tuple(p.read_text(encoding="utf-8", errors="surrogateescape") for p in files)


@lru_cache(maxsize=None)
def corpus_words() -> tuple[str, ...]:
    return tuple(json.loads((CORPUS / "words.json").read_text(encoding="utf-8")))


@lru_cache(maxsize=None)
def corpus_references() -> tuple[str, ...]:
    return tuple(json.loads((CORPUS / "references.json").read_text(encoding="utf-8")))


# -- generic mutation --------------------------------------------------------------------------

@st.composite
def mutated(draw: st.DrawFn, seeds: st.SearchStrategy[str], pieces: st.SearchStrategy[str]) -> str:
    """A seed with a few random edits: insert a piece, delete or duplicate a slice, swap case."""
    text = draw(seeds)
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["insert", "delete", "dup", "replace", "truncate", "case"]))
        n = len(text)
        i = draw(st.integers(0, n))
        if op == "insert":
            text = text[:i] + draw(pieces) + text[i:]
        elif op == "delete" and n:
            j = draw(st.integers(i, min(n, i + 16)))
            text = text[:i] + text[j:]
        elif op == "dup" and n:
            j = draw(st.integers(i, min(n, i + 32)))
            text = text[:j] + text[i:j] + text[j:]
        elif op == "replace" and n and i < n:
            text = text[:i] + draw(pieces) + text[i + 1:]
        elif op == "truncate":
            text = text[:i]
        elif op == "case":
            text = text[:i] + text[i:i + 8].swapcase() + text[i + 8:]
    return text


# -- Dockerfiles -------------------------------------------------------------------------------

piece = st.one_of(st.sampled_from(PIECES), st.text(min_size=1, max_size=3),
                  st.sampled_from(list("abcxyzAB019_-./")))
word = st.lists(piece, min_size=1, max_size=6).map("".join)
simple_word = st.one_of(st.sampled_from(["busybox", "/x", "a=b", "x", "80", "/bin/sh", "AS", "stage", "1"]),
                        st.text("abcxyz019/_.-=", min_size=1, max_size=8))
flag = st.one_of(st.sampled_from(FLAGS), st.builds(lambda f, w: f + w, st.sampled_from(FLAGS), word))


@st.composite
def instruction_line(draw: st.DrawFn) -> str:
    kw = draw(st.sampled_from(ODD_KEYWORDS if draw(st.integers(0, 9)) == 0 else VALID_KEYWORDS))
    if kw.upper() == "ONBUILD" and draw(st.booleans()):
        kw += " " + draw(st.sampled_from(KEYWORDS))
    plain = draw(st.integers(0, 2)) == 0      # a third of the lines stay simple, to get past them
    flags = [] if plain else draw(st.lists(flag, max_size=3))
    sep = " " if plain else draw(st.sampled_from([" ", "  ", "\t", " \\\n ", "`\n"]))
    args = draw(st.lists(simple_word if plain else word, min_size=2 if plain else 0, max_size=6))
    if draw(st.integers(0, 4)) == 0:
        args = [json.dumps(draw(st.lists(word, max_size=3)))]
    return sep.join([kw, *flags, *args]) if draw(st.integers(0, 9)) else kw


@st.composite
def heredoc_block(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["EOF", "END", "x", "E O F", "-", "'"]))
    quote = draw(st.sampled_from(["", "'", '"']))
    dash = draw(st.sampled_from(["", "-"]))
    cmd = draw(st.sampled_from(["RUN", "COPY", "ADD", "ONBUILD RUN", "RUN cat", "COPY --chmod=755", "CMD"]))
    tail = draw(st.sampled_from(["", " /dst", " && echo hi", " <<EOF2", " > /x"]))
    body = draw(st.lists(st.one_of(word, st.just("$a ${b} \\$c")), max_size=3))
    end = draw(st.sampled_from([name, "\t" + name, name + " ", "", "EOF"]))
    return f"{cmd} <<{dash}{quote}{name}{quote}{tail}\n" + "".join(b + "\n" for b in body) + end


line = st.one_of(instruction_line(), instruction_line(), instruction_line(), instruction_line(), heredoc_block(),
                 st.sampled_from(DIRECTIVES), st.just(""), st.builds(lambda w: "# " + w, word),
                 st.text(max_size=20), word)


@st.composite
def generated_dockerfile(draw: st.DrawFn) -> str:
    lines = draw(st.lists(line, max_size=draw(st.sampled_from([3, 6, 12]))))
    if draw(st.integers(0, 3)):
        lines.insert(0, draw(st.sampled_from(["FROM busybox", "FROM scratch AS a", "ARG x=1\nFROM $x",
                                               "FROM busybox AS base\nFROM base"])))
    if draw(st.booleans()):
        lines.insert(0, draw(st.sampled_from(DIRECTIVES)))
    nl = draw(st.sampled_from(["\n", "\r\n", "\n\n", "\r"]))
    return nl.join(lines) + draw(st.sampled_from(["", "\n", "\\", "\\\n", "`"]))


@lru_cache(maxsize=None)
def corpus_lines() -> tuple[str, ...]:
    """Single instructions (with their continuation and heredoc lines) from the seed corpus."""
    out = []
    for text in corpus_dockerfiles():
        for chunk in text.split("\n"):
            if chunk.strip() and not chunk.startswith("#"):
                out.append(chunk)
    return tuple(out)


instruction_text = st.one_of(
    instruction_line(), heredoc_block(),
    mutated(st.sampled_from(corpus_lines()), st.one_of(st.sampled_from(PIECES), st.sampled_from(FLAGS))),
    st.text(max_size=60),
)

dockerfile_text = st.one_of(
    generated_dockerfile(),
    mutated(st.sampled_from(corpus_dockerfiles()), st.one_of(st.sampled_from(PIECES), st.sampled_from(FLAGS),
                                                             st.sampled_from(KEYWORDS), st.text(max_size=4))),
    st.text(max_size=200),
)


# -- expansion words ---------------------------------------------------------------------------

expansion_word = st.one_of(
    st.lists(piece, max_size=12).map("".join),
    mutated(st.sampled_from(corpus_words()), st.sampled_from(PIECES)),
    st.text(max_size=40),
)
env_value = st.one_of(st.sampled_from(["", " ", "a b", "x", "/root", "*", "$a", "${a}", "'", '"', "\\", "\n",
                                       "안녕", "a  b\tc"]), st.text(max_size=8))
environment = st.dictionaries(st.one_of(st.sampled_from(ENV_NAMES), st.text(max_size=4)), env_value, max_size=5)
escape_char = st.sampled_from(["\\", "`"])


# -- references --------------------------------------------------------------------------------

REF_PIECES = ["docker.io", "localhost", ":5000", "/", ":", "@", "sha256:", "a" * 64, "A", "library", "busybox",
              "latest", ".", "-", "_", "__", "..", "192.168.0.1", "[::1]", ":0", "a" * 129, "b" * 300, "@sha512:",
              "\u00e9", " ", "\t", "\n", "x"]
reference_text = st.one_of(
    st.lists(st.sampled_from(REF_PIECES), max_size=8).map("".join),
    mutated(st.sampled_from(corpus_references()), st.sampled_from(REF_PIECES)),
    st.text(max_size=40),
)


# -- tar member names and layer tars -----------------------------------------------------------

NAME_PARTS = ["fzA", "fzB", "fzC", ".", "..", "", ".wh.fzA", ".wh..wh..opq", ".wh...", ".wh..", ".wh.",
              "fz\u00e9", "fz\\x", " ", "fz:" ]
member_name = st.lists(st.sampled_from(NAME_PARTS), min_size=0, max_size=5).flatmap(
    lambda parts: st.sampled_from(["", "/", "./", "//"]).map(lambda pre: pre + "/".join(parts)))


@st.composite
def layer_members(draw: st.DrawFn, outside: str) -> list[tuple]:
    """Member specs: (name, kind, payload, mode). ``outside`` is an absolute path the link
    targets aim at (a directory holding the canary)."""
    link_target = st.one_of(member_name, st.sampled_from(["/", outside, outside + "/canary", outside + "/dir",
                                                          "../" * 8 + outside.lstrip("/"), "..", "../..",
                                                          "fzA/../..", "/fzA", "fzA", "fzA/fzB"]))
    kinds = st.sampled_from(["file", "dir", "symlink", "hardlink", "fifo", "char0", "char13"])
    out = []
    for _ in range(draw(st.integers(0, 10))):
        kind = draw(kinds)
        name = draw(member_name)
        payload = draw(link_target) if kind in ("symlink", "hardlink") else draw(st.binary(max_size=16))
        mode = draw(st.sampled_from([0o644, 0o755, 0o000, 0o4755, 0o1777, 0o7777]))
        out.append((name, kind, payload, mode))
    return out


def build_tar(members: list[tuple], pax_extra: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, payload, mode in members:
            ti = tarfile.TarInfo(name)
            ti.mode = mode
            if pax_extra:
                ti.pax_headers = dict(pax_extra)
            if kind == "file":
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
                continue
            ti.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                       "fifo": tarfile.FIFOTYPE, "char0": tarfile.CHRTYPE, "char13": tarfile.CHRTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                ti.linkname = payload
            if kind == "char13":
                ti.devmajor, ti.devminor = 1, 3
            tf.addfile(ti)
    return buf.getvalue()


class TarBytes(bytes):
    """Layer bytes with a short, reproducible repr (zlib + base64) for Hypothesis's reports:
    ``TarBytes.decode('...')`` gives the bytes back."""

    def __repr__(self) -> str:
        import base64
        import zlib
        return f"TarBytes.decode({base64.b64encode(zlib.compress(bytes(self), 9)).decode()!r})"

    @staticmethod
    def decode(text: str) -> "TarBytes":
        import base64
        import zlib
        return TarBytes(zlib.decompress(base64.b64decode(text)))


@st.composite
def layer_tar(draw: st.DrawFn, outside: str) -> bytes:
    """A small tar: well-formed hostile members, sometimes with PAX xattrs, sometimes corrupted
    (bytes flipped or cut) or gzip'd."""
    members = draw(layer_members(outside))
    pax = draw(st.one_of(st.none(), st.just({"SCHILY.xattr.user.fz": "v"}),
                         st.just({"SCHILY.xattr.trusted.overlay.opaque": "y"}),
                         st.just({"path": "../fzPAX"}), st.just({"linkpath": "/"}),
                         st.just({"size": "-1"}), st.just({"mtime": "nan"}), st.just({"uid": "x"})))
    try:
        data = build_tar(members, pax)
    except (ValueError, tarfile.TarError, UnicodeError):
        data = build_tar(members)
    how = draw(st.sampled_from(["plain", "plain", "plain", "flip", "cut", "gzip", "junk"]))
    if how == "flip" and data:
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
    elif how == "cut":
        data = data[:draw(st.integers(0, len(data)))]
    elif how == "gzip":
        import gzip
        data = gzip.compress(data, mtime=0)
        if draw(st.booleans()):
            data = data[:draw(st.integers(0, len(data)))]
    elif how == "junk":
        data = draw(st.binary(max_size=1024))
    return TarBytes(data)

"""Dockerfile text → typed, frozen instructions with line numbers, grouped into stages.

Two layers, both following docker/BuildKit's documented and observed behaviour:

1. **Lines** (:class:`_Reader`): parser directives at the top (``# escape=``, ``# syntax=``,
   ``# check=``; only before the first instruction, comment or blank line, each at most once),
   a UTF-8 BOM, CRLF endings, line continuations with the escape character (an escaped escape
   character at the end of a line does *not* continue it), comment lines and blank lines inside
   a continuation (skipped), and heredoc bodies for RUN/COPY/ADD (and ONBUILD of those):
   ``<<EOF``, ``<<-EOF``, ``<<"EOF"``, ``<<'EOF'``, ``3<<EOF``, ``<< EOF``, several per line.
2. **Instructions** (:func:`_build`): keyword, ``--flags`` (quotes and ``\\`` processed, validated
   per instruction), then the arguments split exactly as docker splits them — whitespace for
   FROM/EXPOSE/COPY/ADD/VOLUME, quote-aware words for ENV/LABEL/ARG, one string for
   USER/WORKDIR/STOPSIGNAL/MAINTAINER, JSON-or-shell for RUN/CMD/ENTRYPOINT/SHELL/HEALTHCHECK.
   Values stay **unexpanded** (quotes and escapes included); :mod:`pybuild.builder.expand` does
   that at build time with the ARG/ENV state of the line.

About dockerfile-parse: this module does not use it on the parse path. Its ``.structure`` is
right for plain files (keyword, start/end line, comments inside continuations, the escape
directive), but it gets the line layer wrong where docker's rules matter: a blank line inside a
continuation ends the instruction, ``RUN echo \\\\`` is taken as a continuation, heredoc bodies
become instructions, and a bare keyword on the last line (``WORKDIR`` with no newline) is dropped;
its value helpers dequote eagerly. Patching each of those around it would have meant running this
tokenizer anyway, so the tests use dockerfile-parse as an independent oracle instead: for every
golden file without those constructs, its instruction boundaries must equal ours.

Errors are :class:`pybuild.errors.DockerfileError` naming the file and the 1-based line where the
instruction starts, with the offending line and a hint.
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pybuild.builder.expand import ExpansionError, ShellLexer, is_go_space
from pybuild.errors import DockerfileError

__all__ = [
    "INSTRUCTIONS",
    "Add",
    "Arg",
    "Cmd",
    "Copy",
    "Directives",
    "Dockerfile",
    "Entrypoint",
    "Env",
    "Expose",
    "From",
    "Healthcheck",
    "Heredoc",
    "Instruction",
    "Label",
    "Maintainer",
    "Onbuild",
    "Run",
    "Shell",
    "Stage",
    "Stopsignal",
    "User",
    "Volume",
    "Workdir",
    "expansion_error",
    "parse",
    "parse_instruction",
]

#: Every instruction keyword docker knows (upper case).
INSTRUCTIONS: frozenset[str] = frozenset({
    "ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK", "LABEL",
    "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME", "WORKDIR",
})

_HEREDOC_CMDS = frozenset({"RUN", "COPY", "ADD"})
_NETWORK_MODES = ("default", "none", "host")
_SECURITY_MODES = ("sandbox", "insecure")

# Flag kinds: "str" needs --name=value, "bool" is --name or --name=true|false, "list" repeats.
_FLAG_SPECS: dict[str, dict[str, str]] = {
    "FROM": {"platform": "str"},
    "RUN": {"mount": "list", "network": "str", "security": "str"},
    "COPY": {"from": "str", "chown": "str", "chmod": "str", "link": "bool", "parents": "bool",
             "exclude": "list"},
    "ADD": {"chown": "str", "chmod": "str", "link": "bool", "keep-git-dir": "bool",
            "checksum": "str", "exclude": "list", "unpack": "bool"},
    "HEALTHCHECK": {"interval": "str", "timeout": "str", "start-period": "str",
                    "start-interval": "str", "retries": "str"},
}
_ALL_FLAGS = frozenset(name for spec in _FLAG_SPECS.values() for name in spec)

_WS_SPLIT = re.compile(r"[\t\v\f\r ]+")  # docker's reWhitespace (no newline, no Unicode)
_DIRECTIVE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[ \t\n\f\r]*=[ \t\n\f\r]*(.+?)[ \t\n\f\r]*\Z")
_HEREDOC_WORD = re.compile(r"([0-9]*)<<(-?)[ \t\n\f\r]*([^<]*)\Z")
_BARE_MARKER = re.compile(r"[0-9]*<<")
_LEADING_TABS = re.compile(r"^\t+", re.MULTILINE)
_ONBUILD_PREFIX = re.compile(r"^[ \t\n\f\r]*ONBUILD[ \t\n\f\r]*", re.IGNORECASE)
_STAGE_NAME = re.compile(r"[a-z][a-z0-9\-_.]*\Z")
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_DURATION_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
                   "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_MIN_DURATION_NS = 1_000_000  # docker rejects non-zero durations below 1ms


# ================================================================================================
# Values
# ================================================================================================
def _jsonable(value: Any) -> Any:
    """A JSON-friendly copy: dataclasses become dicts (``from_`` → ``from``), tuples lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return {f.name.rstrip("_"): _jsonable(getattr(value, f.name))
                for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, kw_only=True)
class Heredoc:
    """An inline document: ``name`` is the delimiter word with quotes removed, ``body`` the lines
    between the instruction and the delimiter exactly as written (line endings kept, tabs not yet
    stripped), ``expand`` is False when any part of the delimiter was quoted, ``chomp`` is True
    for ``<<-`` (strip leading tabs), ``fd`` the file descriptor prefix (``3<<EOF``; 0 if none)."""

    name: str
    body: str
    expand: bool = True
    chomp: bool = False
    fd: int = 0

    @property
    def content(self) -> str:
        """The body as the builder uses it: leading tabs removed from every line if ``chomp``."""
        return _LEADING_TABS.sub("", self.body) if self.chomp else self.body

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "body": self.body, "expand": self.expand, "chomp": self.chomp,
                "fd": self.fd}


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """What every instruction has.

    ``line``/``end_line`` are 1-based and include continuation lines and heredoc bodies;
    ``original`` is the source text of those lines as written; ``logical`` is docker's one-line
    form (continuations joined, embedded comments dropped, no heredoc bodies); ``cmd`` the
    upper-case keyword; ``flags`` the parsed ``--flags`` (str, bool, or list for repeatable ones).
    """

    line: int
    end_line: int
    original: str
    logical: str
    cmd: str
    flags: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A stable, JSON-ready dump: cmd, lines, flags, the typed fields, then the source."""
        head = {"cmd": self.cmd, "line": self.line, "end_line": self.end_line,
                "flags": _jsonable(self.flags)}
        base = {f.name for f in dataclasses.fields(Instruction)}
        typed = {f.name.rstrip("_"): _jsonable(getattr(self, f.name))
                 for f in dataclasses.fields(self) if f.name not in base}
        return {**head, **typed, "original": self.original, "logical": self.logical}


@dataclass(frozen=True, kw_only=True)
class From(Instruction):
    """``FROM [--platform=P] image [AS name]``; ``name`` is lower-cased; nothing is expanded."""

    image: str
    name: str | None = None
    platform: str | None = None


@dataclass(frozen=True, kw_only=True)
class Run(Instruction):
    """``RUN``: ``command`` is the shell string (``shell_form``) or the exec list; ``heredocs``
    in the order they appear; ``mounts`` the raw ``--mount`` specs; ``network``/``security``
    None when not given."""

    command: list[str] | str
    shell_form: bool
    heredocs: list[Heredoc] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)
    network: str | None = None
    security: str | None = None


@dataclass(frozen=True, kw_only=True)
class Cmd(Instruction):
    """``CMD``: shell string or exec list (a bare ``CMD`` is the empty shell string)."""

    command: list[str] | str
    shell_form: bool


@dataclass(frozen=True, kw_only=True)
class Entrypoint(Instruction):
    """``ENTRYPOINT``: shell string or exec list (a bare ``ENTRYPOINT`` is the empty string)."""

    command: list[str] | str
    shell_form: bool


@dataclass(frozen=True, kw_only=True)
class Shell(Instruction):
    """``SHELL ["executable", "args"…]`` (JSON only)."""

    shell: list[str]


@dataclass(frozen=True, kw_only=True)
class Label(Instruction):
    """``LABEL k=v …`` or legacy ``LABEL k v…``: raw ``(key, value)`` pairs, quotes kept."""

    pairs: list[tuple[str, str]]


@dataclass(frozen=True, kw_only=True)
class Maintainer(Instruction):
    """``MAINTAINER text`` (deprecated; the whole rest of the line)."""

    maintainer: str


@dataclass(frozen=True, kw_only=True)
class Expose(Instruction):
    """``EXPOSE``: raw words in source order (each may expand to several ports)."""

    ports: list[str]


@dataclass(frozen=True, kw_only=True)
class Env(Instruction):
    """``ENV k=v …`` or legacy ``ENV k v…``: raw ``(key, value)`` pairs, quotes kept."""

    pairs: list[tuple[str, str]]


@dataclass(frozen=True, kw_only=True)
class Add(Instruction):
    """``ADD``: ``sources`` are the path/URL words (heredoc sources are in ``heredocs``),
    ``dest`` the last word; ``json_form`` for ``ADD ["a", "b"]``."""

    sources: list[str]
    dest: str
    heredocs: list[Heredoc] = field(default_factory=list)
    json_form: bool = False
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    keep_git_dir: bool = False
    checksum: str | None = None
    exclude: list[str] = field(default_factory=list)
    unpack: bool | None = None


@dataclass(frozen=True, kw_only=True)
class Copy(Instruction):
    """``COPY``: like :class:`Add`; ``from_`` is the raw ``--from`` value (a stage name, an index
    or an image; resolve it with :meth:`Dockerfile.resolve_stage` after expansion)."""

    sources: list[str]
    dest: str
    heredocs: list[Heredoc] = field(default_factory=list)
    json_form: bool = False
    from_: str | None = None
    chown: str | None = None
    chmod: str | None = None
    link: bool = False
    parents: bool = False
    exclude: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class Volume(Instruction):
    """``VOLUME ["/a", "/b"]`` or ``VOLUME /a /b``."""

    paths: list[str]
    json_form: bool = False


@dataclass(frozen=True, kw_only=True)
class User(Instruction):
    """``USER user[:group]`` (the rest of the line)."""

    user: str


@dataclass(frozen=True, kw_only=True)
class Workdir(Instruction):
    """``WORKDIR path`` (the rest of the line)."""

    path: str


@dataclass(frozen=True, kw_only=True)
class Arg(Instruction):
    """``ARG name[=default] …``: raw ``(name, default or None)`` pairs."""

    pairs: list[tuple[str, str | None]]


@dataclass(frozen=True, kw_only=True)
class Onbuild(Instruction):
    """``ONBUILD <instruction>``: ``trigger`` is the wrapped instruction (parsed, its line numbers
    those of the ONBUILD), ``raw`` the trigger text as docker stores it in the image config
    (heredoc bodies appended), to be parsed again with :func:`parse_instruction` in a child
    build."""

    trigger: Instruction
    raw: str


@dataclass(frozen=True, kw_only=True)
class Stopsignal(Instruction):
    """``STOPSIGNAL signal`` (the rest of the line)."""

    signal: str


@dataclass(frozen=True, kw_only=True)
class Healthcheck(Instruction):
    """``HEALTHCHECK NONE`` or ``HEALTHCHECK [--interval=… …] CMD command``.

    ``kind`` is ``"NONE"`` or ``"CMD"``; durations are nanoseconds (None when not given; 0 means
    "inherit"), ``retries`` None when not given.
    """

    kind: str
    command: list[str] | str | None = None
    shell_form: bool = False
    interval: int | None = None
    timeout: int | None = None
    start_period: int | None = None
    start_interval: int | None = None
    retries: int | None = None

    @property
    def test(self) -> list[str]:
        """The image config's ``Healthcheck.Test``: ``["NONE"]``, ``["CMD", …]`` or
        ``["CMD-SHELL", command]``."""
        if self.kind == "NONE":
            return ["NONE"]
        if self.shell_form:
            return ["CMD-SHELL", str(self.command)]
        return ["CMD", *(self.command or [])]


@dataclass(frozen=True)
class Stage:
    """One build stage: its position, lower-cased name (or None), FROM, and what follows it."""

    index: int
    name: str | None
    from_: From
    instructions: list[Instruction]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "name": self.name, "from": self.from_.to_dict(),
                "instructions": [i.to_dict() for i in self.instructions]}


@dataclass(frozen=True)
class Directives:
    """Parser directives: ``escape`` (``\\\\`` or `````), ``syntax`` and ``check`` (recorded
    as written, not acted on)."""

    escape: str = "\\"
    syntax: str | None = None
    check: str | None = None


@dataclass(frozen=True)
class Dockerfile:
    """A parsed Dockerfile: ``global_args`` are the ARGs before the first FROM."""

    file: str
    directives: Directives
    global_args: list[Arg]
    stages: list[Stage]

    def instructions(self) -> list[Instruction]:
        """Every instruction in source order (global ARGs, then each FROM and its stage)."""
        out: list[Instruction] = list(self.global_args)
        for stage in self.stages:
            out.append(stage.from_)
            out.extend(stage.instructions)
        return out

    def stage_named(self, name: str) -> Stage | None:
        """The stage called ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((s for s in self.stages if s.name == wanted), None)

    def resolve_stage(self, ref: str, before_index: int, *, line: int = 0) -> int | None:
        """Which stage an (already expanded) ``FROM <ref>`` or ``COPY --from=<ref>`` in stage
        ``before_index`` means: the index of a *previous* stage whose name equals ``ref``
        (case-insensitive), the stage with that number if ``ref`` is a number, or None when it
        names an image.

        Raises DockerfileError (at ``line``, default: that stage's FROM) when a number refers
        to the current stage, a later one, or no stage at all.
        """
        wanted = ref.lower()
        for stage in self.stages[:before_index]:
            if stage.name is not None and stage.name == wanted:
                return stage.index
        if not re.fullmatch(r"[+-]?[0-9]+", ref):
            return None
        index = int(ref)
        if 0 <= index < before_index:
            return index
        if 0 <= before_index < len(self.stages) and not line:
            line = self.stages[before_index].from_.line
        text = _first_line(self.stages[before_index].from_.original) \
            if 0 <= before_index < len(self.stages) else ""
        if index == before_index:
            reason = f"stage reference {ref!r} refers to the current stage"
        elif index > before_index and index < len(self.stages):
            reason = f"stage reference {ref!r} refers to a later stage"
        else:
            reason = f"stage reference {ref!r} is not a valid stage index"
        raise DockerfileError(reason, file=self.file, line=line, text=text,
                              hint=f"use the name or index of a stage defined before this one "
                                   f"(0..{before_index - 1})" if before_index > 0 else
                              "the first stage cannot refer to another stage")

    def to_dict(self) -> dict[str, Any]:
        """A stable, JSON-ready dump (used by the golden tests)."""
        return {
            "file": self.file,
            "directives": _jsonable(self.directives),
            "global_args": [a.to_dict() for a in self.global_args],
            "stages": [s.to_dict() for s in self.stages],
        }


# ================================================================================================
# Public entry points
# ================================================================================================
def parse(text: str, file: str = "Dockerfile") -> Dockerfile:
    """Parse a whole Dockerfile.

    Guarantees: every instruction is validated (arguments, flags, JSON forms, heredocs), stage
    names are valid and unique, only ARG precedes the first FROM, and at least one stage exists.
    Raises DockerfileError (file, start line, offending line, hint) on the first problem, in
    source order.
    """
    reader = _Reader(text, file, parse_directives=True)
    logicals = reader.read()
    directives = reader.directives()
    if not logicals:
        raise DockerfileError("the Dockerfile has no instructions", file=file, line=1,
                              hint="a Dockerfile needs at least `FROM <image>`")
    global_args: list[Arg] = []
    stages: list[Stage] = []
    current: list[Instruction] = []
    for logical in logicals:
        instr = _build(logical, file, directives.escape)
        if isinstance(instr, From):
            _check_new_stage(instr, stages, file)
            current = []
            stages.append(Stage(len(stages), instr.name, instr, current))
        elif not stages:
            if not isinstance(instr, Arg):
                raise _error(logical, file, f"{instr.cmd} before the first FROM",
                             "a Dockerfile starts with FROM; only ARG may come before it")
            global_args.append(instr)
        else:
            current.append(instr)
    if not stages:
        last = logicals[-1]
        raise _error(last, file, "no FROM instruction: the Dockerfile has no build stage",
                     "add `FROM <image>` after the global ARGs")
    return Dockerfile(file, directives, global_args, stages)


def parse_instruction(text: str, *, file: str = "Dockerfile", line: int = 1,
                      escape: str = "\\") -> Instruction:
    """Parse exactly one instruction (it may span continuation lines and heredoc bodies), e.g.
    an ONBUILD trigger stored in an image. ``line`` numbers its first line. No directives are
    read. Raises DockerfileError when the text holds no instruction or more than one."""
    logicals = _Reader(text, file, escape=escape, first_line=line).read()
    if len(logicals) != 1:
        what = "no instruction" if not logicals else f"{len(logicals)} instructions"
        raise DockerfileError(f"expected one instruction, found {what}", file=file, line=line,
                              text=_first_line(text),
                              hint="pass a single instruction such as `RUN make`")
    return _build(logicals[0], file, escape)


def expansion_error(err: ExpansionError, instruction: Instruction,
                    file: str = "Dockerfile") -> DockerfileError:
    """The DockerfileError to raise when expanding a word of ``instruction`` failed."""
    return DockerfileError(str(err), file=file, line=instruction.line,
                           text=_first_line(instruction.original),
                           hint="check the ${…} syntax and the quotes on this line; "
                                "${VAR?message} fails when VAR is unset")


# ================================================================================================
# The line layer
# ================================================================================================
@dataclass
class _Logical:
    """One instruction's worth of lines."""

    line: int
    end_line: int
    source: list[str]          # physical lines, endings removed
    text: str                  # docker's logical line
    heredocs: list[Heredoc]


def _split_lines(text: str) -> list[str]:
    """Lines with their ``\\n`` kept (only ``\\n`` separates lines, as in docker)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _strip_eol(line: str) -> str:
    return line.rstrip("\r\n")


def _lstrip(text: str) -> str:
    i = 0
    while i < len(text) and is_go_space(text[i]):
        i += 1
    return text[i:]


def _strip(text: str) -> str:
    text = _lstrip(text)
    j = len(text)
    while j > 0 and is_go_space(text[j - 1]):
        j -= 1
    return text[:j]


def _is_comment(line: str) -> bool:
    return _lstrip(line).startswith("#")


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].rstrip("\r")


class _Reader:
    """Turns text into :class:`_Logical` lines (directives, continuations, heredoc bodies)."""

    def __init__(self, text: str, file: str, *, escape: str = "\\", parse_directives: bool = False,
                 first_line: int = 1) -> None:
        self.lines = _split_lines(text)
        if self.lines and self.lines[0].startswith("\ufeff"):
            self.lines[0] = self.lines[0][1:]
        self.file = file
        self.first_line = first_line
        self.pos = 0
        self.escape = escape
        self.done = not parse_directives
        self.seen: dict[str, str] = {}
        self._set_escape(escape)

    def directives(self) -> Directives:
        return Directives(self.escape, self.seen.get("syntax"), self.seen.get("check"))

    def _set_escape(self, escape: str) -> None:
        self.escape = escape
        e = re.escape(escape)
        self.continuation = re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")

    def _lineno(self, index: int) -> int:
        return index + self.first_line

    def _fail(self, index: int, message: str, hint: str | None = None) -> DockerfileError:
        return DockerfileError(message, file=self.file, line=self._lineno(index),
                               text=_strip_eol(self.lines[index]), hint=hint)

    def _directive(self, token: str, index: int) -> None:
        """Record ``token`` if it is a parser directive; the first non-directive ends them."""
        if self.done:
            return
        m = _DIRECTIVE.match(_lstrip(token[1:])) if token.startswith("#") else None
        key = m.group(1).lower() if m else ""
        if not m or key not in ("escape", "syntax", "check"):
            self.done = True
            return
        if key in self.seen:
            raise self._fail(index, f"only one {key} parser directive can be used",
                             "remove the repeated directive")
        value = m.group(2)
        self.seen[key] = value
        if key == "escape":
            if value not in ("\\", "`"):
                raise self._fail(index, f"invalid escape token {value!r}: it must be \\ or `",
                                 "write `# escape=\\` or `# escape=`` on the first line")
            self._set_escape(value)

    def _trim_continuation(self, line: str) -> tuple[str, bool]:
        """``(line without the continuation mark, continues?)``."""
        m = self.continuation.search(line)
        if not m:
            return line, False
        return line[:m.start()] + (m.group(1) or ""), True

    def read(self) -> list[_Logical]:
        """All logical lines. Raises DockerfileError for bad directives and unterminated
        heredocs."""
        out: list[_Logical] = []
        while self.pos < len(self.lines):
            logical = self._next()
            if logical is not None:
                out.append(logical)
        return out

    def _next(self) -> _Logical | None:
        start = self.pos
        token = _lstrip(_strip_eol(self.lines[start]))
        self.pos += 1
        self._directive(token, start)
        if _is_comment(token):
            token = ""
        content, continues = self._trim_continuation(token)
        if not continues and not content:
            return None
        parts = [content]
        while continues and self.pos < len(self.lines):
            raw = _strip_eol(self.lines[self.pos])
            self.pos += 1
            if _is_comment(raw) or not _lstrip(raw):
                continue
            content, continues = self._trim_continuation(raw)
            parts.append(content)
        text = "".join(parts)
        if not _strip(text):
            return None
        heredocs = self._read_heredocs(text, start)
        source = [_strip_eol(line) for line in self.lines[start:self.pos]]
        return _Logical(self._lineno(start), self._lineno(self.pos - 1), source, text, heredocs)

    def _read_heredocs(self, text: str, start: int) -> list[Heredoc]:
        try:
            markers = _heredoc_markers(text)
        except ExpansionError as e:
            raise self._fail(start, f"bad heredoc delimiter: {e.reason}") from None
        out = []
        for marker in markers:
            body: list[str] = []
            while True:
                if self.pos >= len(self.lines):
                    dash = "-" if marker.chomp else ""
                    raise self._fail(
                        start, f"unterminated heredoc <<{dash}{marker.name}",
                        f"end it with a line that is exactly {marker.name!r}"
                        + (" (leading tabs allowed with <<-)" if marker.chomp else ""))
                raw = self.lines[self.pos]
                self.pos += 1
                candidate = _strip_eol(raw)
                if marker.chomp:
                    candidate = candidate.lstrip("\t")
                if candidate == marker.name:
                    break
                body.append(raw)
            out.append(dataclasses.replace(marker, body="".join(body)))
        return out


def _heredoc_markers(text: str) -> list[Heredoc]:
    """The heredocs (without bodies) a logical line opens, in order: only RUN/COPY/ADD (also
    under ONBUILD) in shell form. Raises ExpansionError for a malformed delimiter."""
    if "<<" not in text:
        return []
    keyword, _, rest = _split_command(text)
    cmd = keyword.upper()
    if cmd == "ONBUILD":
        keyword, _, rest = _split_command(rest)
        cmd = keyword.upper()
    if cmd not in _HEREDOC_CMDS or _json_list(rest) is not None:
        return []
    lexer = ShellLexer("\\", raw_quotes=True, raw_escapes=True, skip_unset=True)
    try:
        words = lexer.process_words(text, {})
    except ExpansionError:
        return []  # docker ignores a line it cannot split here
    return [h for h in (_heredoc_from_word(w) for w in words) if h is not None]


def _heredoc_from_word(word: str) -> Heredoc | None:
    """``<<EOF``, ``<<-'EOF'``, ``3<<EOF``… as a body-less Heredoc, or None if ``word`` is not a
    heredoc marker. ``expand`` is False when any part of the delimiter is quoted."""
    m = _HEREDOC_WORD.match(word)
    if not m or not m.group(3):
        return None
    rest = m.group(3)
    plain = ShellLexer("\\", skip_unset=True).process_words(rest, {})
    if len(plain) != 1:
        return None
    raw = ShellLexer("\\", skip_unset=True, raw_quotes=True).process_words(rest, {})
    quotes_plain = plain[0].count("'") + plain[0].count('"')
    quotes_raw = raw[0].count("'") + raw[0].count('"') if len(raw) == 1 else -1
    return Heredoc(name=plain[0], body="", expand=quotes_plain == quotes_raw,
                   chomp=m.group(2) == "-", fd=int(m.group(1) or 0))


# ================================================================================================
# The instruction layer
# ================================================================================================
def _split_command(text: str) -> tuple[str, list[str], str]:
    """``(keyword as written, flag words, rest)`` of a logical line."""
    parts = _WS_SPLIT.split(_strip(text), maxsplit=1)
    keyword = parts[0]
    rest = parts[1] if len(parts) == 2 else ""
    flags, rest = _extract_flags(rest)
    return keyword, flags, _strip(rest)


def _extract_flags(line: str) -> tuple[list[str], str]:
    """Leading ``--flag`` words (quotes removed, ``\\`` escapes applied; ``--`` ends them) and
    the rest of the line."""
    words: list[str] = []
    pos, n = 0, len(line)
    while True:
        while pos < n and is_go_space(line[pos]):
            pos += 1
        if pos >= n:
            return words, ""
        if not line.startswith("--", pos):
            return words, line[pos:]
        word, blank_ok, pos = _read_flag_word(line, pos)
        if word == "--":
            return words, line[pos:] if pos < n else ""
        if word or blank_ok:
            words.append(word)


def _read_flag_word(line: str, pos: int) -> tuple[str, bool, int]:
    """One flag word from ``pos``: ``(word, had quotes, position after it)``."""
    out: list[str] = []
    quote = ""
    blank_ok = False
    n = len(line)
    while pos < n:
        ch = line[pos]
        if not quote and is_go_space(ch):
            break
        pos += 1
        if quote and ch == quote:
            quote = ""
            continue
        if not quote and ch in "'\"":
            quote, blank_ok = ch, True
            continue
        if ch == "\\":
            if pos >= n:
                break
            ch = line[pos]
            pos += 1
        out.append(ch)
    return "".join(out), blank_ok, pos


def _parse_words(rest: str, escape: str) -> list[str]:
    """docker's ``parseWords`` (ENV, LABEL, ARG): split at unquoted white space, keeping quotes
    and escapes in the words; an escape character at the very end is dropped."""
    words: list[str] = []
    buf: list[str] = []
    quote = ""
    in_word = blank_ok = False
    i, n = 0, len(rest)
    while i < n:
        ch = rest[i]
        if not in_word:
            if is_go_space(ch):
                i += 1
                continue
            in_word = True
        if quote:
            if ch == quote:
                quote = ""
            elif ch == escape and quote != "'":
                if i + 1 == n:
                    break
                buf.append(ch)
                i += 1
                ch = rest[i]
        elif is_go_space(ch):
            if blank_ok or buf:
                words.append("".join(buf))
            buf, blank_ok, in_word = [], False, False
            i += 1
            continue
        elif ch in "'\"":
            quote, blank_ok = ch, True
        elif ch == escape:
            if i + 1 == n:
                break
            buf.append(ch)
            i += 1
            ch = rest[i]
        buf.append(ch)
        i += 1
    if in_word and (blank_ok or buf):
        words.append("".join(buf))
    return words


def _split_ws(rest: str) -> list[str]:
    """docker's whitespace split (FROM, EXPOSE, COPY, ADD, VOLUME): no quote handling."""
    return [w for w in _WS_SPLIT.split(rest) if w] if rest else []


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name}")


def _json_list(rest: str) -> list[Any] | None:
    """The JSON array ``rest`` holds, or None when it is not (valid) JSON."""
    text = _lstrip(rest)
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


class _Ctx:
    """Everything a builder needs about one instruction, and its error helper."""

    def __init__(self, logical: _Logical, file: str, escape: str) -> None:
        self.logical = logical
        self.file = file
        self.escape = escape
        self.keyword, self.flag_words, self.rest = _split_command(logical.text)
        self.cmd = self.keyword.upper()

    def error(self, message: str, hint: str | None = None) -> DockerfileError:
        return _error(self.logical, self.file, message, hint)

    def base(self, flags: dict[str, Any]) -> dict[str, Any]:
        lg = self.logical
        return {"line": lg.line, "end_line": lg.end_line, "original": "\n".join(lg.source),
                "logical": lg.text, "cmd": self.cmd, "flags": flags}

    def flags(self) -> dict[str, Any]:
        """The ``--flags`` parsed against what this instruction accepts."""
        return _parse_flags(self.flag_words, self.cmd, self)

    def maybe_json(self, rest: str | None = None) -> list[str] | None:
        """The exec-form list, None for shell form; a JSON array of non-strings is an error."""
        value = _json_list(self.rest if rest is None else rest)
        if value is not None and not all(isinstance(v, str) for v in value):
            raise self.error("when using JSON array syntax, arrays must be comprised of strings "
                             "only", 'quote every element: ["executable", "arg"]')
        return value

    def require(self, ok: bool, what: str) -> None:
        if not ok:
            raise self.error(f"{self.cmd} requires {what}", _USAGE.get(self.cmd))


def _error(logical: _Logical, file: str, message: str, hint: str | None) -> DockerfileError:
    return DockerfileError(message, file=file, line=logical.line, text=logical.source[0],
                           hint=hint)


_USAGE = {
    "ADD": "write `ADD [--flags] <src>... <dest>`",
    "ARG": "write `ARG <name>[=<default>]`",
    "COPY": "write `COPY [--flags] <src>... <dest>`",
    "ENV": "write `ENV <key>=<value> ...`",
    "EXPOSE": "write `EXPOSE <port>[/<protocol>] ...`",
    "FROM": "write `FROM [--platform=<platform>] <image> [AS <name>]`",
    "HEALTHCHECK": "write `HEALTHCHECK [--flags] CMD <command>` or `HEALTHCHECK NONE`",
    "LABEL": "write `LABEL <key>=<value> ...`",
    "MAINTAINER": "write `MAINTAINER <name>` (or better `LABEL maintainer=<name>`)",
    "ONBUILD": "write `ONBUILD <instruction>`, e.g. `ONBUILD RUN make`",
    "RUN": "write `RUN <command>` or `RUN [\"executable\", \"arg\"]`",
    "SHELL": 'write `SHELL ["executable", "parameters"]`, e.g. `SHELL ["/bin/bash", "-c"]`',
    "STOPSIGNAL": "write `STOPSIGNAL <signal>`, e.g. `STOPSIGNAL SIGTERM`",
    "USER": "write `USER <user>[:<group>]`",
    "VOLUME": "write `VOLUME [\"/path\"]` or `VOLUME /path ...`",
    "WORKDIR": "write `WORKDIR /path`",
}


# -- flags ---------------------------------------------------------------------------------------
def _parse_flags(words: list[str], cmd: str, ctx: _Ctx) -> dict[str, Any]:
    """Validate ``--flag[=value]`` words for ``cmd``: known, well-formed, not repeated (except
    list flags). Raises DockerfileError."""
    spec = _FLAG_SPECS.get(cmd, {})
    out: dict[str, Any] = {}
    for word in words:
        name, eq, value = word[2:].partition("=")
        kind = spec.get(name)
        if kind is None:
            raise ctx.error(*_unknown_flag_message(name, cmd, spec))
        if name in out and kind != "list":
            raise ctx.error(f"flag --{name} given more than once", f"keep one --{name}")
        if kind == "bool":
            if eq and value.lower() not in ("true", "false"):
                raise ctx.error(f"flag --{name} expects true or false, not {value!r}",
                                f"write --{name} or --{name}=false")
            out[name] = not eq or value.lower() == "true"
        elif not eq:
            raise ctx.error(f"flag --{name} needs a value", f"write --{name}=<value>")
        elif kind == "list":
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out


def _unknown_flag_message(name: str, cmd: str, spec: dict[str, str]) -> tuple[str, str]:
    accepted = ", ".join(f"--{n}" for n in sorted(spec)) or "no flags"
    if name in _ALL_FLAGS:
        return f"flag --{name} is not allowed on {cmd}", f"{cmd} accepts {accepted}"
    near = _nearest(name, spec)
    hint = f"did you mean --{near}? " if near else ""
    return f"unknown flag --{name} for {cmd}", f"{hint}{cmd} accepts {accepted}"


def _osa_distance(a: str, b: str) -> int:
    """Edit distance counting an adjacent transposition as one edit."""
    d = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        d[i][0] = i
    for j in range(len(b) + 1):
        d[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


def _nearest(word: str, candidates: Any) -> str | None:
    """The closest candidate within two edits (and at most half the word), if any."""
    best: tuple[int, str] | None = None
    for cand in sorted(candidates):
        dist = _osa_distance(word.lower(), cand.lower())
        if dist <= 2 and dist <= max(1, len(word) // 2) and (best is None or dist < best[0]):
            best = (dist, cand)
    return best[1] if best else None


# -- builders --------------------------------------------------------------------------------------
def _build(logical: _Logical, file: str, escape: str) -> Instruction:
    """The typed instruction for one logical line. Raises DockerfileError."""
    ctx = _Ctx(logical, file, escape)
    builder = _BUILDERS.get(ctx.cmd)
    if builder is None:
        near = _nearest(ctx.cmd, INSTRUCTIONS)
        hint = (f"did you mean {near}?" if near else
                "if this line belongs to the previous instruction, end that line with "
                f"'{escape}'; instructions are {', '.join(sorted(INSTRUCTIONS))}")
        raise ctx.error(f"unknown instruction: {ctx.keyword}", hint)
    return builder(ctx)


def _build_from(ctx: _Ctx) -> From:
    args = _split_ws(ctx.rest)
    name: str | None = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME.match(name):
            raise ctx.error(f"invalid stage name {args[2]!r}: a name starts with a letter and "
                            "has only letters, digits, '-', '_' and '.'", _USAGE["FROM"])
    elif len(args) == 2 and args[1].lower() == "as":
        raise ctx.error("FROM … AS needs a stage name after AS", _USAGE["FROM"])
    elif len(args) != 1:
        raise ctx.error("FROM requires either one or three arguments", _USAGE["FROM"])
    flags = ctx.flags()
    return From(**ctx.base(flags), image=args[0], name=name, platform=flags.get("platform"))


def _build_run(ctx: _Ctx) -> Run:
    flags = ctx.flags()
    command = ctx.maybe_json()
    ctx.require(bool(command) if command is not None else bool(ctx.rest), "at least one argument")
    network = flags.get("network")
    if network is not None and network not in _NETWORK_MODES:
        raise ctx.error(f"unsupported network mode {network!r}",
                        "--network takes " + ", ".join(_NETWORK_MODES))
    security = flags.get("security")
    if security is not None and security not in _SECURITY_MODES:
        raise ctx.error(f"unsupported security mode {security!r}",
                        "--security takes " + ", ".join(_SECURITY_MODES))
    return Run(**ctx.base(flags), command=ctx.rest if command is None else command,
               shell_form=command is None, heredocs=list(ctx.logical.heredocs),
               mounts=list(flags.get("mount", [])), network=network, security=security)


def _build_cmd(ctx: _Ctx) -> Cmd:
    flags = ctx.flags()
    command = ctx.maybe_json()
    return Cmd(**ctx.base(flags), command=ctx.rest if command is None else command,
               shell_form=command is None)


def _build_entrypoint(ctx: _Ctx) -> Entrypoint:
    flags = ctx.flags()
    command = ctx.maybe_json()
    return Entrypoint(**ctx.base(flags), command=ctx.rest if command is None else command,
                      shell_form=command is None)


def _build_shell(ctx: _Ctx) -> Shell:
    flags = ctx.flags()
    ctx.require(bool(ctx.rest), "at least one argument")
    shell = ctx.maybe_json()
    if shell is None:
        raise ctx.error("SHELL requires the arguments to be in JSON form", _USAGE["SHELL"])
    ctx.require(bool(shell), "at least one argument")
    return Shell(**ctx.base(flags), shell=shell)


def _name_values(ctx: _Ctx) -> list[tuple[str, str]]:
    """ENV/LABEL pairs: ``k=v …`` (every word needs ``=``) or legacy ``k v…``."""
    words = _parse_words(ctx.rest, ctx.escape)
    ctx.require(bool(words), "at least one argument")
    if "=" not in words[0]:
        parts = _WS_SPLIT.split(ctx.rest, maxsplit=1)
        if len(parts) < 2:
            raise ctx.error(f"{ctx.cmd} must have two arguments",
                            f"write `{ctx.cmd} {parts[0]}=<value>`")
        pairs = [(parts[0], parts[1])]
    else:
        pairs = []
        for word in words:
            if "=" not in word:
                raise ctx.error(f"syntax error: can't find = in {word!r}; it must be of the form "
                                "name=value", _USAGE[ctx.cmd])
            key, _, value = word.partition("=")
            pairs.append((key, value))
    if any(not key for key, _ in pairs):
        raise ctx.error(f"{ctx.cmd} names can not be blank", _USAGE[ctx.cmd])
    return pairs


def _build_env(ctx: _Ctx) -> Env:
    flags = ctx.flags()
    return Env(**ctx.base(flags), pairs=_name_values(ctx))


def _build_label(ctx: _Ctx) -> Label:
    flags = ctx.flags()
    return Label(**ctx.base(flags), pairs=_name_values(ctx))


def _build_arg(ctx: _Ctx) -> Arg:
    flags = ctx.flags()
    words = _parse_words(ctx.rest, ctx.escape)
    ctx.require(bool(words), "at least one argument")
    pairs: list[tuple[str, str | None]] = []
    for word in words:
        key, eq, value = word.partition("=")
        if eq and not key:
            raise ctx.error("ARG names can not be blank", _USAGE["ARG"])
        pairs.append((key, value if eq else None))
    return Arg(**ctx.base(flags), pairs=pairs)


def _build_maintainer(ctx: _Ctx) -> Maintainer:
    flags = ctx.flags()
    ctx.require(bool(ctx.rest), "exactly one argument")
    return Maintainer(**ctx.base(flags), maintainer=ctx.rest)


def _build_expose(ctx: _Ctx) -> Expose:
    flags = ctx.flags()
    ports = _split_ws(ctx.rest)
    ctx.require(bool(ports), "at least one argument")
    return Expose(**ctx.base(flags), ports=ports)


def _build_volume(ctx: _Ctx) -> Volume:
    flags = ctx.flags()
    listed = ctx.maybe_json()
    paths = _split_ws(ctx.rest) if listed is None else [_strip(p) for p in listed]
    ctx.require(bool(paths), "at least one argument")
    if any(not p for p in paths):
        raise ctx.error("VOLUME specified can not be an empty string", _USAGE["VOLUME"])
    return Volume(**ctx.base(flags), paths=paths, json_form=listed is not None)


def _one_string(ctx: _Ctx) -> str:
    ctx.flags()  # none accepted: rejects any flag
    ctx.require(bool(ctx.rest), "exactly one argument")
    return ctx.rest


def _build_user(ctx: _Ctx) -> User:
    return User(**ctx.base({}), user=_one_string(ctx))


def _build_workdir(ctx: _Ctx) -> Workdir:
    return Workdir(**ctx.base({}), path=_one_string(ctx))


def _build_stopsignal(ctx: _Ctx) -> Stopsignal:
    return Stopsignal(**ctx.base({}), signal=_one_string(ctx))


def _sources_and_dest(ctx: _Ctx) -> tuple[list[str], str, list[Heredoc], bool]:
    """``(path sources, dest, heredoc sources, json form)`` of COPY/ADD."""
    listed = ctx.maybe_json()
    args = _split_ws(ctx.rest) if listed is None else list(listed)
    if len(args) < 2:
        raise ctx.error(f"{ctx.cmd} requires at least two arguments, but only one was provided. "
                        "Destination could not be determined", _USAGE[ctx.cmd])
    *sources, dest = args
    if _safe_heredoc(dest) is not None:
        raise ctx.error(f"{ctx.cmd} cannot accept a heredoc as a destination", _USAGE[ctx.cmd])
    bodies = {h.name: h for h in ctx.logical.heredocs}
    paths: list[str] = []
    docs: list[Heredoc] = []
    for src in _join_spaced_markers(sources):
        marker = _safe_heredoc(src)
        if marker is None:
            paths.append(src)
            continue
        read = bodies.get(marker.name)
        docs.append(dataclasses.replace(marker, body=read.body if read else ""))
    return paths, dest, docs, listed is not None


def _join_spaced_markers(words: list[str]) -> list[str]:
    """``<<`` ``EOF`` (split by the whitespace split) back into one ``<< EOF`` marker word."""
    out: list[str] = []
    for word in words:
        if out and _BARE_MARKER.fullmatch(out[-1]):
            out[-1] = f"{out[-1]} {word}"
        else:
            out.append(word)
    return out


def _safe_heredoc(word: str) -> Heredoc | None:
    try:
        return _heredoc_from_word(word)
    except ExpansionError:
        return None


def _build_copy(ctx: _Ctx) -> Copy:
    flags = ctx.flags()
    sources, dest, docs, json_form = _sources_and_dest(ctx)
    return Copy(**ctx.base(flags), sources=sources, dest=dest, heredocs=docs, json_form=json_form,
                from_=flags.get("from"), chown=flags.get("chown"), chmod=flags.get("chmod"),
                link=flags.get("link", False), parents=flags.get("parents", False),
                exclude=list(flags.get("exclude", [])))


def _build_add(ctx: _Ctx) -> Add:
    flags = ctx.flags()
    sources, dest, docs, json_form = _sources_and_dest(ctx)
    return Add(**ctx.base(flags), sources=sources, dest=dest, heredocs=docs, json_form=json_form,
               chown=flags.get("chown"), chmod=flags.get("chmod"), link=flags.get("link", False),
               keep_git_dir=flags.get("keep-git-dir", False), checksum=flags.get("checksum"),
               exclude=list(flags.get("exclude", [])), unpack=flags.get("unpack"))


def _build_onbuild(ctx: _Ctx) -> Onbuild:
    flags = ctx.flags()
    ctx.require(bool(ctx.rest), "at least one argument")
    trigger_cmd = _WS_SPLIT.split(ctx.rest, maxsplit=1)[0].upper()
    if trigger_cmd == "ONBUILD":
        raise ctx.error("chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed", _USAGE["ONBUILD"])
    if trigger_cmd in ("FROM", "MAINTAINER"):
        raise ctx.error(f"{trigger_cmd} isn't allowed as an ONBUILD trigger", _USAGE["ONBUILD"])
    raw = _ONBUILD_PREFIX.sub("", ctx.logical.text, count=1)
    raw += "".join(f"\n{h.body}{h.name}" for h in ctx.logical.heredocs)
    try:
        trigger = parse_instruction(raw, file=ctx.file, line=ctx.logical.line, escape=ctx.escape)
    except DockerfileError as e:
        raise ctx.error(f"ONBUILD trigger: {e.reason}", e.hint) from None
    trigger = dataclasses.replace(trigger, line=ctx.logical.line, end_line=ctx.logical.end_line)
    return Onbuild(**ctx.base(flags), trigger=trigger, raw=raw)


def _build_healthcheck(ctx: _Ctx) -> Healthcheck:
    flags = ctx.flags()
    ctx.require(bool(ctx.rest), "at least one argument")
    kind_end = 0
    while kind_end < len(ctx.rest) and not is_go_space(ctx.rest[kind_end]):
        kind_end += 1
    kind = ctx.rest[:kind_end].upper()
    command_text = _lstrip(ctx.rest[kind_end:])
    if kind == "NONE":
        if command_text:
            raise ctx.error("HEALTHCHECK NONE takes no arguments", _USAGE["HEALTHCHECK"])
        return Healthcheck(**ctx.base(flags), kind="NONE")
    if kind != "CMD":
        raise ctx.error(f"unknown type {ctx.rest[:kind_end]!r} in HEALTHCHECK (try CMD)",
                        _USAGE["HEALTHCHECK"])
    command = ctx.maybe_json(command_text)
    if not (command if command is not None else command_text):
        raise ctx.error("missing command after HEALTHCHECK CMD", _USAGE["HEALTHCHECK"])
    durations = {key: _duration_flag(ctx, flags, key)
                 for key in ("interval", "timeout", "start-period", "start-interval")}
    return Healthcheck(**ctx.base(flags), kind="CMD",
                       command=command_text if command is None else command,
                       shell_form=command is None, interval=durations["interval"],
                       timeout=durations["timeout"], start_period=durations["start-period"],
                       start_interval=durations["start-interval"], retries=_retries(ctx, flags))


def _duration_flag(ctx: _Ctx, flags: dict[str, Any], name: str) -> int | None:
    """A HEALTHCHECK duration flag in nanoseconds (None if absent or empty)."""
    text = flags.get(name)
    if not text:
        return None
    ns = _parse_go_duration(text)
    if ns is None:
        raise ctx.error(f"invalid duration {text!r} for --{name}",
                        "durations look like 30s, 1m30s, 500ms or 1h")
    if ns != 0 and ns < _MIN_DURATION_NS:
        raise ctx.error(f"--{name} cannot be less than 1ms (got {text!r})",
                        "use 0 to inherit the default, or at least 1ms")
    return ns


def _parse_go_duration(text: str) -> int | None:
    """Go's ``time.ParseDuration`` in nanoseconds (``1h2m3.5s``, ``-1s``, ``0``), or None."""
    s, sign = text, 1
    if s[:1] in ("+", "-"):
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    if s == "0":
        return 0
    if not s:
        return None
    total = 0
    while s:
        m = _DURATION_PART.match(s)
        if not m or not (m.group(1) or m.group(2)) or m.group(3) not in _DURATION_UNITS:
            return None
        unit = _DURATION_UNITS[m.group(3)]
        whole, frac = int(m.group(1) or 0), m.group(2) or ""
        total += whole * unit + (int(frac) * unit // 10 ** len(frac) if frac else 0)
        s = s[m.end():]
    return sign * total


def _retries(ctx: _Ctx, flags: dict[str, Any]) -> int | None:
    text = flags.get("retries")
    if not text:
        return None
    if not re.fullmatch(r"[+-]?[0-9]+", text) or not -2**31 <= int(text) < 2**31:
        raise ctx.error(f"--retries must be an integer, not {text!r}", "e.g. --retries=3")
    if int(text) < 0:
        raise ctx.error(f"--retries cannot be negative ({text})", "e.g. --retries=3")
    return int(text)


_BUILDERS: dict[str, Callable[[_Ctx], Instruction]] = {
    "ADD": _build_add,
    "ARG": _build_arg,
    "CMD": _build_cmd,
    "COPY": _build_copy,
    "ENTRYPOINT": _build_entrypoint,
    "ENV": _build_env,
    "EXPOSE": _build_expose,
    "FROM": _build_from,
    "HEALTHCHECK": _build_healthcheck,
    "LABEL": _build_label,
    "MAINTAINER": _build_maintainer,
    "ONBUILD": _build_onbuild,
    "RUN": _build_run,
    "SHELL": _build_shell,
    "STOPSIGNAL": _build_stopsignal,
    "USER": _build_user,
    "VOLUME": _build_volume,
    "WORKDIR": _build_workdir,
}


def _check_new_stage(instr: From, stages: list[Stage], file: str) -> None:
    """Stage names are unique (they are already lower-cased and validated)."""
    if instr.name is None:
        return
    for stage in stages:
        if stage.name == instr.name:
            raise DockerfileError(
                f"duplicate stage name {instr.name!r} (first used at line {stage.from_.line})",
                file=file, line=instr.line, text=_first_line(instr.original),
                hint="give every stage its own name")


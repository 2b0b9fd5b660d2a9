"""The Dockerfile front end: golden files, an independent oracle, every error, and the helpers.

Golden cases live in ``testdata/parser/NAME.Dockerfile`` with the expected dump in ``NAME.json``.
``PYBUILD_UPDATE_GOLDEN=1 pytest tests/test_parser.py`` rewrites the JSON files; a rewritten file
must be checked by hand against docker's documented behaviour before it is committed.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from hypothesis import given, settings
from hypothesis import strategies as st

from pybuild.builder.dockerfile import (
    Copy,
    Dockerfile,
    Healthcheck,
    Onbuild,
    Run,
    expansion_error,
    parse,
    parse_instruction,
)
from pybuild.builder.expand import ExpansionError, expand_word
from pybuild.errors import DockerfileError

GOLDEN = Path(__file__).resolve().parent.parent / "testdata" / "parser"
CASES = sorted(p.name[: -len(".Dockerfile")] for p in GOLDEN.glob("*.Dockerfile"))


def _read(name: str) -> str:
    return (GOLDEN / f"{name}.Dockerfile").read_bytes().decode("utf-8")


def _dump(df: Dockerfile) -> str:
    return json.dumps(df.to_dict(), indent=2, ensure_ascii=False) + "\n"


# ---------------------------------------------------------------------------------------------
# Golden files
# ---------------------------------------------------------------------------------------------
def test_there_are_enough_golden_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", CASES)
def test_golden(name: str) -> None:
    got = _dump(parse(_read(name)))
    expected_file = GOLDEN / f"{name}.json"
    if os.environ.get("PYBUILD_UPDATE_GOLDEN") == "1":
        expected_file.write_bytes(got.encode("utf-8"))
        return
    assert expected_file.exists(), f"missing {expected_file.name}; run with PYBUILD_UPDATE_GOLDEN=1"
    assert json.loads(got) == json.loads(expected_file.read_bytes().decode("utf-8"))


# Cases where dockerfile-parse departs from docker, so it cannot serve as the oracle there.
DFP_KNOWN_DIFFERENT = {
    "continuation_at_eof": "drops an instruction whose last line ends with the escape",
    "continuation_comments_blank": "a blank line inside a continuation ends the instruction",
    "continuation_escaped_escape": "takes an escaped escape character as a continuation",
    **{c: "has no heredoc support" for c in CASES
       if c.startswith("heredoc_") and c != "heredoc_not_heredoc"},
}


def _boundaries(text: str) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """(ours, dockerfile-parse's) list of (keyword, start line, end line)."""
    structure = DockerfileParser(fileobj=io.BytesIO(text.encode()), env_replace=False).structure
    theirs = [(s["instruction"], s["startline"] + 1, s["endline"] + 1)
              for s in structure if s["instruction"] != "COMMENT"]
    ours = [(i.cmd, i.line, i.end_line) for i in parse(text).instructions()]
    return ours, theirs


@pytest.mark.parametrize("name", [c for c in CASES if c not in DFP_KNOWN_DIFFERENT])
def test_instruction_boundaries_agree_with_dockerfile_parse(name: str) -> None:
    """dockerfile-parse is an independent implementation of the line layer: on files without
    heredocs or the constructs it gets wrong, keywords and start/end lines must match ours."""
    ours, theirs = _boundaries(_read(name))
    assert ours == theirs


@pytest.mark.parametrize("name", sorted(DFP_KNOWN_DIFFERENT))
def test_dockerfile_parse_known_differences_are_real(name: str) -> None:
    """Each exclusion above must still be a real disagreement (else it belongs to the oracle)."""
    ours, theirs = _boundaries(_read(name))
    assert ours != theirs, DFP_KNOWN_DIFFERENT[name]


# ---------------------------------------------------------------------------------------------
# Errors: one case per error, each at the right line with a hint
# ---------------------------------------------------------------------------------------------
ERRORS = [
    # (id, text, line, fragment of the message, fragment of the hint or None)
    ("unknown_instruction_near_miss", "FROM a\nCOPPY x y\n", 2, "unknown instruction: COPPY",
     "did you mean COPY?"),
    ("unknown_instruction_transposed", "FORM a\n", 1, "unknown instruction: FORM",
     "did you mean FROM?"),
    ("unknown_instruction_far", "FROM a\napt-get install x\n", 2, "unknown instruction: apt-get",
     "end that line with"),
    ("from_without_arguments", "FROM\n", 1, "FROM requires either one or three arguments", None),
    ("from_as_without_name", "FROM a AS\n", 1, "needs a stage name after AS", None),
    ("from_three_words_without_as", "FROM a to b\n", 1, "one or three arguments", None),
    ("from_too_many_words", "FROM a AS b c\n", 1, "one or three arguments", None),
    ("copy_one_argument", "FROM a\nCOPY onlyone\n", 2, "COPY requires at least two arguments",
     None),
    ("add_one_argument", "FROM a\nADD onlyone\n", 2, "ADD requires at least two arguments", None),
    ("copy_json_one_argument", 'FROM a\nCOPY ["onlyone"]\n', 2, "at least two arguments", None),
    ("workdir_empty", "FROM a\nWORKDIR\n", 2, "WORKDIR requires exactly one argument", None),
    ("user_empty", "FROM a\nUSER   \n", 2, "USER requires exactly one argument", None),
    ("stopsignal_empty", "FROM a\nSTOPSIGNAL\n", 2, "STOPSIGNAL requires exactly one argument",
     None),
    ("maintainer_empty", "FROM a\nMAINTAINER\n", 2, "MAINTAINER requires exactly one argument",
     None),
    ("env_empty", "FROM a\nENV\n", 2, "ENV requires at least one argument", None),
    ("label_empty", "FROM a\nLABEL\n", 2, "LABEL requires at least one argument", None),
    ("arg_empty", "ARG\nFROM a\n", 1, "ARG requires at least one argument", None),
    ("expose_empty", "FROM a\nEXPOSE\n", 2, "EXPOSE requires at least one argument", None),
    ("volume_empty", "FROM a\nVOLUME\n", 2, "VOLUME requires at least one argument", None),
    ("volume_empty_json", "FROM a\nVOLUME []\n", 2, "VOLUME requires at least one argument",
     None),
    ("volume_blank_path", 'FROM a\nVOLUME ["/a", "  "]\n', 2, "can not be an empty string", None),
    ("run_empty", "FROM a\nRUN\n", 2, "RUN requires at least one argument", None),
    ("run_empty_json", "FROM a\nRUN []\n", 2, "RUN requires at least one argument", None),
    ("onbuild_empty", "FROM a\nONBUILD\n", 2, "ONBUILD requires at least one argument", None),
    ("healthcheck_empty", "FROM a\nHEALTHCHECK\n", 2, "HEALTHCHECK requires at least one argument",
     None),
    ("shell_empty", "FROM a\nSHELL\n", 2, "SHELL requires at least one argument", None),
    ("env_legacy_single_word", "FROM a\nENV ONLYKEY\n", 2, "ENV must have two arguments",
     "ONLYKEY=<value>"),
    ("label_word_without_equals", "FROM a\nLABEL a=b c\n", 2, "can't find = in 'c'", None),
    ("env_blank_name", "FROM a\nENV =x\n", 2, "ENV names can not be blank", None),
    ("arg_blank_name", "FROM a\nARG =x\n", 2, "ARG names can not be blank", None),
    ("unknown_flag_near_miss", "FROM a\nCOPY --frm=x a b\n", 2, "unknown flag --frm for COPY",
     "did you mean --from?"),
    ("flag_names_are_case_sensitive", "FROM a\nCOPY --FROM=x a b\n", 2, "unknown flag --FROM",
     "did you mean --from?"),
    ("unknown_flag_on_env", "FROM a\nENV --x=1 a=b\n", 2, "unknown flag --x for ENV",
     "ENV accepts no flags"),
    ("flag_not_allowed_on_add", "FROM a\nADD --from=x a b\n", 2,
     "flag --from is not allowed on ADD", "ADD accepts"),
    ("flag_not_allowed_on_workdir", "FROM a\nWORKDIR --chown=1 /a\n", 2,
     "flag --chown is not allowed on WORKDIR", "WORKDIR accepts no flags"),
    ("flag_not_allowed_on_run", "FROM a\nRUN --platform=linux/amd64 true\n", 2,
     "flag --platform is not allowed on RUN", "--mount"),
    ("flag_missing_value", "FROM a\nCOPY --chown a b\n", 2, "flag --chown needs a value",
     "--chown=<value>"),
    ("flag_bad_boolean", "FROM a\nCOPY --link=maybe a b\n", 2,
     "flag --link expects true or false, not 'maybe'", None),
    ("flag_repeated", "FROM a\nCOPY --from=a --from=b x y\n", 2, "flag --from given more than once",
     None),
    ("run_bad_network", "FROM a\nRUN --network=bridge true\n", 2,
     "unsupported network mode 'bridge'", "default, none, host"),
    ("run_bad_security", "FROM a\nRUN --security=root true\n", 2,
     "unsupported security mode 'root'", "sandbox, insecure"),
    ("instruction_before_from", "RUN echo hi\nFROM a\n", 1, "RUN before the first FROM",
     "only ARG may come before it"),
    ("instruction_before_from_after_args", "ARG X=1\nENV A=1\nFROM a\n", 2,
     "ENV before the first FROM", None),
    ("duplicate_stage_name", "FROM a AS x\nRUN true\nFROM b AS X\n", 3,
     "duplicate stage name 'x' (first used at line 1)", None),
    ("invalid_stage_name_digit", "FROM a AS 1st\n", 1, "invalid stage name '1st'", None),
    ("invalid_stage_name_symbol", "FROM a AS my$stage\n", 1, "invalid stage name 'my$stage'",
     None),
    ("shell_not_json", "FROM a\nSHELL /bin/bash -c\n", 2,
     "SHELL requires the arguments to be in JSON form", '["/bin/bash", "-c"]'),
    ("shell_invalid_json", 'FROM a\nSHELL ["/bin/sh", ]\n', 2, "JSON form", None),
    ("shell_empty_json", "FROM a\nSHELL []\n", 2, "SHELL requires at least one argument", None),
    ("json_array_of_non_strings", 'FROM a\nCMD ["a", 1]\n', 2, "comprised of strings only", None),
    ("unterminated_heredoc", "FROM a\nRUN <<EOF\necho hi\n", 2, "unterminated heredoc <<EOF",
     "exactly 'EOF'"),
    ("heredoc_terminator_with_trailing_space", "FROM a\nCOPY <<EOF /x\nhi\nEOF \n", 2,
     "unterminated heredoc", None),
    ("heredoc_chomp_needs_tabs_not_spaces", "FROM a\nRUN <<-EOF\n  EOF\n", 2,
     "unterminated heredoc <<-EOF", "leading tabs"),
    ("second_heredoc_unterminated", "FROM a\nCOPY <<A <<B /d\na\nA\nb\n", 2,
     "unterminated heredoc <<B", None),
    ("heredoc_as_destination", "FROM a\nCOPY a <<EOF\nx\nEOF\n", 2,
     "COPY cannot accept a heredoc as a destination", None),
    ("onbuild_onbuild", "FROM a\nONBUILD ONBUILD RUN x\n", 2, "ONBUILD ONBUILD", None),
    ("onbuild_from", "FROM a\nONBUILD FROM b\n", 2, "FROM isn't allowed as an ONBUILD trigger",
     None),
    ("onbuild_maintainer", "FROM a\nonbuild maintainer me\n", 2,
     "MAINTAINER isn't allowed as an ONBUILD trigger", None),
    ("onbuild_bad_trigger", "FROM a\nONBUILD COPPY a b\n", 2,
     "ONBUILD trigger: unknown instruction: COPPY", "did you mean COPY?"),
    ("empty_dockerfile", "", 1, "the Dockerfile has no instructions", "FROM"),
    ("only_comments_and_blank_lines", "# nothing here\n\n   \n", 1, "no instructions", None),
    ("only_global_args", "ARG A=1\nARG B\n", 2, "no FROM instruction", "add `FROM <image>`"),
    ("healthcheck_duration_without_unit", "FROM a\nHEALTHCHECK --interval=5 CMD true\n", 2,
     "invalid duration '5' for --interval", "30s"),
    ("healthcheck_unknown_unit", "FROM a\nHEALTHCHECK --timeout=10x CMD true\n", 2,
     "invalid duration '10x' for --timeout", None),
    ("healthcheck_duration_below_1ms", "FROM a\nHEALTHCHECK --start-period=10us CMD true\n", 2,
     "--start-period cannot be less than 1ms", None),
    ("healthcheck_negative_duration", "FROM a\nHEALTHCHECK --interval=-1s CMD true\n", 2,
     "cannot be less than 1ms", None),
    ("healthcheck_bad_retries", "FROM a\nHEALTHCHECK --retries=three CMD true\n", 2,
     "--retries must be an integer", None),
    ("healthcheck_negative_retries", "FROM a\nHEALTHCHECK --retries=-1 CMD true\n", 2,
     "--retries cannot be negative", None),
    ("healthcheck_none_with_arguments", "FROM a\nHEALTHCHECK NONE true\n", 2,
     "HEALTHCHECK NONE takes no arguments", None),
    ("healthcheck_unknown_type", "FROM a\nHEALTHCHECK RUN true\n", 2,
     "unknown type 'RUN' in HEALTHCHECK (try CMD)", None),
    ("healthcheck_missing_command", "FROM a\nHEALTHCHECK --interval=5s CMD\n", 2,
     "missing command after HEALTHCHECK CMD", None),
    ("healthcheck_empty_exec_command", "FROM a\nHEALTHCHECK CMD []\n", 2,
     "missing command after HEALTHCHECK CMD", None),
    ("directive_bad_escape", "# escape=x\nFROM a\n", 1, "invalid escape token 'x'", None),
    ("directive_two_backslashes", "# escape=\\\\\nFROM a\n", 1, "invalid escape token", None),
    ("directive_repeated", "# escape=`\n# ESCAPE=\\\nFROM a\n", 2,
     "only one escape parser directive can be used", None),
    ("error_reported_at_instruction_start", "FROM a\nCOPY \\\n  # c\n  onlyone\n", 2,
     "at least two arguments", None),
    ("line_numbers_count_heredoc_bodies", "FROM a\nRUN <<EOF\n1\n2\nEOF\nCOPPY x y\n", 6,
     "unknown instruction: COPPY", None),
]


@pytest.mark.parametrize("text, line, fragment, hint",
                         [pytest.param(*case[1:], id=case[0]) for case in ERRORS])
def test_errors(text: str, line: int, fragment: str, hint: str | None) -> None:
    with pytest.raises(DockerfileError) as info:
        parse(text)
    err = info.value
    assert err.line == line
    assert str(err).startswith(f"Dockerfile:{line}: ")
    assert fragment in err.reason
    assert err.hint, "every Dockerfile error carries a hint"
    if hint is not None:
        assert hint in err.hint
    lines = text.split("\n")
    if "no instructions" not in fragment:
        assert err.text == lines[line - 1]
        assert f"{line:>4} | {lines[line - 1].rstrip()}" in str(err)


@pytest.mark.parametrize("directive, escape", [("", "\\"), ("# escape=`\n", "`")])
def test_unknown_instruction_hint_names_the_escape_character_once(directive: str, escape: str) -> None:
    """The hint shows the escape character itself: one backslash, never repr()'s doubled one."""
    with pytest.raises(DockerfileError) as info:
        parse(directive + "FROM a\napt-get install x\n")
    assert info.value.hint == (
        f"if this line belongs to the previous instruction, end that line with '{escape}'; instructions "
        "are ADD, ARG, CMD, COPY, ENTRYPOINT, ENV, EXPOSE, FROM, HEALTHCHECK, LABEL, MAINTAINER, ONBUILD, "
        "RUN, SHELL, STOPSIGNAL, USER, VOLUME, WORKDIR")
    assert "\\\\" not in info.value.hint and len(escape) == 1


def test_there_is_an_error_case_for_each_instruction_needing_arguments() -> None:
    ids = {case[0] for case in ERRORS}
    for needed in ("from_without_arguments", "copy_one_argument", "workdir_empty",
                   "unknown_flag_near_miss", "flag_not_allowed_on_add", "instruction_before_from",
                   "from_as_without_name", "duplicate_stage_name", "invalid_stage_name_digit",
                   "shell_not_json", "unterminated_heredoc", "onbuild_onbuild", "onbuild_from",
                   "onbuild_maintainer", "empty_dockerfile", "healthcheck_duration_without_unit"):
        assert needed in ids


def test_error_names_the_given_file() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nWORKDIR\n", file="sub/Dockerfile.dev")
    assert str(info.value).startswith("sub/Dockerfile.dev:2: WORKDIR requires exactly one argument")
    assert info.value.file == "sub/Dockerfile.dev"


# ---------------------------------------------------------------------------------------------
# Line layer details
# ---------------------------------------------------------------------------------------------
def test_crlf_and_bom() -> None:
    df = parse("\ufeffFROM a\r\nRUN echo \\\r\n  b\r\nCOPY <<EOF /x\r\nbody\r\nEOF\r\n")
    run, copy = df.stages[0].instructions
    assert df.stages[0].from_.image == "a"
    assert isinstance(run, Run) and run.command == "echo   b"
    assert (run.line, run.end_line) == (2, 3)
    assert run.original == "RUN echo \\\n  b"
    assert isinstance(copy, Copy) and copy.heredocs[0].body == "body\r\n"
    assert (copy.line, copy.end_line) == (4, 6)


def test_directives_are_recorded() -> None:
    df = parse("# syntax = docker/dockerfile:1.7\n#  Check=skip=all\n# escape=`\nFROM a\n")
    assert df.directives.syntax == "docker/dockerfile:1.7"
    assert df.directives.check == "skip=all"
    assert df.directives.escape == "`"


def test_directive_after_instruction_is_a_comment() -> None:
    df = parse("FROM a\n# escape=`\nRUN echo \\\n b\n")
    assert df.directives.escape == "\\"
    assert df.stages[0].instructions[0].command == "echo  b"


def test_heredoc_delimiter_quoting_decides_expansion() -> None:
    text = ("FROM a\nRUN <<eof <<eo\\'f <<eo'f' <<'e'o\\'f\n"
            "1\neof\n2\neo'f\n3\neof\n4\neo'f\n")
    run = parse(text).stages[0].instructions[0]
    assert isinstance(run, Run)
    assert [(h.name, h.expand, h.body) for h in run.heredocs] == [
        ("eof", True, "1\n"), ("eo'f", True, "2\n"), ("eof", False, "3\n"), ("eo'f", False, "4\n")]


def test_copy_heredocs_with_the_same_name_share_the_last_body() -> None:
    """docker looks COPY heredoc bodies up by name, so the last one with a name wins."""
    copy = parse("FROM a\nCOPY <<eof <<'eof' /d/\n1\neof\n2\neof\n").stages[0].instructions[0]
    assert [(h.name, h.expand, h.body) for h in copy.heredocs] == [
        ("eof", True, "2\n"), ("eof", False, "2\n")]


def test_heredoc_content_chomps_tabs_only_when_asked() -> None:
    text = "FROM a\nRUN <<-X\n\t\tone\n  two\n\tX\nRUN <<Y\n\tkept\nY\n"
    run = parse(text).stages[0].instructions
    assert run[0].heredocs[0].body == "\t\tone\n  two\n"
    assert run[0].heredocs[0].content == "one\n  two\n"
    assert run[1].heredocs[0].content == "\tkept\n"


def test_heredoc_end_line_and_next_instruction_line() -> None:
    df = parse("FROM a\nRUN <<A cat && cat <<B\nx\nA\ny\nB\nRUN next\n")
    first, second = df.stages[0].instructions
    assert (first.line, first.end_line) == (2, 6)
    assert [h.name for h in first.heredocs] == ["A", "B"]
    assert second.line == 7


# ---------------------------------------------------------------------------------------------
# ONBUILD and parse_instruction
# ---------------------------------------------------------------------------------------------
def test_onbuild_raw_parses_back_to_the_trigger() -> None:
    text = "FROM a\nONBUILD COPY --chown=1:1 <<-EOF \\\n  # c\n\n  /etc/x\n\tline\n\tEOF\n"
    onbuild = parse(text).stages[0].instructions[0]
    assert isinstance(onbuild, Onbuild)
    assert (onbuild.line, onbuild.end_line) == (2, 7)
    assert onbuild.raw == "COPY --chown=1:1 <<-EOF   /etc/x\n\tline\nEOF"
    again = parse_instruction(onbuild.raw, line=onbuild.line)
    assert isinstance(again, Copy)
    assert again.to_dict() | {"end_line": 0, "original": "", "logical": ""} == \
        onbuild.trigger.to_dict() | {"end_line": 0, "original": "", "logical": ""}
    assert onbuild.trigger.heredocs[0].content == "line\n"


def test_parse_instruction_single() -> None:
    run = parse_instruction("RUN --network=none echo hi", line=7)
    assert isinstance(run, Run)
    assert (run.line, run.network, run.command) == (7, "none", "echo hi")


@pytest.mark.parametrize("text", ["", "# only a comment", "RUN a\nRUN b"])
def test_parse_instruction_needs_exactly_one(text: str) -> None:
    with pytest.raises(DockerfileError, match="expected one instruction"):
        parse_instruction(text)


def test_parse_instruction_with_backtick_escape() -> None:
    run = parse_instruction("RUN dir c:\\ `\n  && echo x", escape="`")
    assert run.command == "dir c:\\   && echo x"


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------
STAGES = "FROM a AS Build\nFROM b AS test\nFROM c\nFROM d AS last\n"


@pytest.mark.parametrize("ref, before, expected", [
    ("build", 1, 0), ("BUILD", 2, 0), ("Test", 2, 1), ("0", 1, 0), ("2", 3, 2),
    ("last", 1, None), ("test", 1, None), ("alpine", 3, None), ("busybox:1.36", 1, None),
])
def test_resolve_stage(ref: str, before: int, expected: int | None) -> None:
    assert parse(STAGES).resolve_stage(ref, before) == expected


@pytest.mark.parametrize("ref, before, message", [
    ("1", 1, "refers to the current stage"),
    ("2", 1, "refers to a later stage"),
    ("9", 1, "is not a valid stage index"),
    ("-1", 1, "is not a valid stage index"),
    ("0", 0, "refers to the current stage"),
])
def test_resolve_stage_rejects_bad_indexes(ref: str, before: int, message: str) -> None:
    df = parse(STAGES)
    with pytest.raises(DockerfileError) as info:
        df.resolve_stage(ref, before)
    assert message in info.value.reason
    assert info.value.line == df.stages[before].from_.line
    assert info.value.hint
    with pytest.raises(DockerfileError) as info:
        df.resolve_stage(ref, before, line=42)
    assert info.value.line == 42


def test_stage_lookup_and_flat_instructions() -> None:
    df = parse("ARG V=1\n" + STAGES + "RUN x\n")
    assert df.stage_named("BUILD") is df.stages[0]
    assert df.stage_named("nope") is None
    assert [i.cmd for i in df.instructions()] == ["ARG", "FROM", "FROM", "FROM", "FROM", "RUN"]
    assert [s.name for s in df.stages] == ["build", "test", None, "last"]


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------
def test_instructions_are_frozen() -> None:
    run = parse("FROM a\nRUN x\n").stages[0].instructions[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.command = "y"  # type: ignore[misc]


def test_healthcheck_test_matches_the_image_config() -> None:
    text = ("FROM a\nHEALTHCHECK NONE\nHEALTHCHECK CMD curl x\n"
            'HEALTHCHECK --interval=1m30s --retries=2 CMD ["check", "-q"]\n')
    hcs = parse(text).stages[0].instructions
    assert all(isinstance(h, Healthcheck) for h in hcs)
    assert [h.test for h in hcs] == [["NONE"], ["CMD-SHELL", "curl x"], ["CMD", "check", "-q"]]
    assert hcs[2].interval == 90_000_000_000 and hcs[2].retries == 2


def test_values_stay_unexpanded_and_expand_later() -> None:
    df = parse('ARG BASE=busybox\nFROM ${BASE}\nCOPY --chown=$U "$SRC" /d\nENV A="x y"\n')
    copy, env = df.stages[0].instructions
    assert df.stages[0].from_.image == "${BASE}"
    assert isinstance(copy, Copy) and copy.sources == ['"$SRC"'] and copy.chown == "$U"
    assert expand_word(copy.sources[0], {"SRC": "a b"}) == "a b"
    assert env.pairs == [("A", '"x y"')]


def test_copy_splits_at_spaces_even_inside_quotes_and_braces() -> None:
    """docker splits COPY/ADD shell form at white space only (JSON form is for spaces)."""
    copy = parse('FROM a\nCOPY "a b" ${X:-c d} /d\n').stages[0].instructions[0]
    assert copy.sources == ['"a', 'b"', "${X:-c", "d}"]
    with pytest.raises(ExpansionError):
        expand_word(copy.sources[0], {})


def test_expansion_error_points_at_the_instruction() -> None:
    workdir = parse("FROM a\nRUN x\nWORKDIR ${X:?need X}\n").stages[0].instructions[1]
    try:
        expand_word(workdir.path, {})
    except ExpansionError as e:
        err = expansion_error(e, workdir)
    assert err.line == 3
    assert "X: need X" in str(err)
    assert str(err).startswith("Dockerfile:3: ")
    assert err.hint


_FRAGMENTS = st.sampled_from([
    "FROM a", "FROM a AS b", "RUN", "COPY", "ADD", "ONBUILD", "HEALTHCHECK", "ENV", "ARG",
    "SHELL", "CMD", " ", "\\", "`", "\n", "\t", "\r\n", "#", "# escape=`\n", "<<", "<<-", "EOF",
    "'", '"', "[", "]", ",", "--", "--from=", "--link", "=", "$", "${", "}", ":-", "x", "\ufeff",
])


@settings(max_examples=300, deadline=None)
@given(st.lists(_FRAGMENTS, max_size=25).map("".join))
def test_any_text_parses_or_raises_a_dockerfile_error(text: str) -> None:
    for fn in (parse, parse_instruction):
        try:
            fn(text)
        except DockerfileError as e:
            assert e.line >= 1 and e.hint

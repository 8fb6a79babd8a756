"""The shape every Authentication-Results value we render must have, checked without authres.

Shared by the unit tests of the renderer and the fuzz harnesses.
"""

from __future__ import annotations


def mask(value: str, comments: bool = True) -> str:
    """``value`` with the inside of quoted-strings and comments replaced by ``x`` (line breaks
    kept), so that the top-level structure can be checked. Asserts both are balanced.
    ``comments=False`` keeps the text of comments (quoted-pairs still become ``xx``): there a
    space may fold, inside a quoted-string it may not."""
    out: list[str] = []
    depth, quoted, i = 0, False, 0
    while i < len(value):
        char = value[i]
        if (quoted or depth) and char == "\\" and i + 1 < len(value):
            out.append("xx")
            i += 2
            continue
        if quoted:
            quoted = char != '"'
            out.append('"' if not quoted else ("\n" if char == "\n" else "x"))
        elif char == '"' and depth == 0:
            quoted = True
            out.append('"')
        elif char == "(":
            depth += 1
            out.append("(" if depth == 1 else "x")
        elif char == ")" and depth:
            depth -= 1
            out.append(")" if depth == 0 else "x")
        elif depth:
            out.append("\n" if char == "\n" else ("x" if comments else char))
        else:
            assert char != ")", f"stray ')' in {value!r}"
            out.append(char)
        i += 1
    assert not quoted and depth == 0, f"unbalanced quoted-string or comment in {value!r}"
    return "".join(out)


def assert_well_formed_ar(value: str, results: int) -> None:
    """What every rendered Authentication-Results value must be: printable ASCII, line breaks
    only as folding (LF + WSP, never a blank line, never CR), balanced quotes and comments, and
    exactly one top-level ``;`` after the authserv-id and between results (none renders
    ``id; none``)."""
    assert "\r" not in value, f"CR in {value!r}"
    bad = [c for c in value if c not in "\n\t" and not " " <= c <= "~"]
    assert not bad, f"non-printable {bad!r} in {value!r}"
    for line in value.split("\n")[1:]:
        assert line[:1] in (" ", "\t"), f"a line break that is not folding in {value!r}"
        assert line.strip(), f"a folded line of white space only in {value!r}"
    assert_evenly_indented(value)
    masked = mask(value)
    assert masked.count(";") == max(results, 1), f"stray ';' in {value!r}"
    assert not masked.lstrip().startswith(";"), f"empty authserv-id in {value!r}"


def assert_evenly_indented(value: str) -> None:
    """Every continuation line is indented the same way: one TAB, then the text (a result's
    start and a fold inside a result look alike, as in Postfix's own headers)."""
    for line in value.split("\n")[1:]:
        assert line[:1] == "\t" and line[1:2] not in (" ", "\t", ""), (
            f"unevenly indented line {line!r} in {value!r}")

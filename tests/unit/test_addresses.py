"""author_domains: RFC 5322 §3.6.2 From parsing for DMARC, its defined problems, and
normalise_domain. Fuzzed with hypothesis: it must never raise."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailsec_milter import addresses
from mailsec_milter.addresses import (
    AuthorDomains,
    AuthorProblem,
    _tokenize,
    author_domains,
    normalise_domain,
)

NO_FROM = AuthorProblem.NO_FROM
NO_DOMAIN = AuthorProblem.NO_DOMAIN
MULTI_HEADERS = AuthorProblem.MULTIPLE_FROM_HEADERS
MULTI_AUTHORS = AuthorProblem.MULTIPLE_AUTHORS


@pytest.mark.parametrize(
    ("value", "domains"),
    [
        ("joe@example.com", ("example.com",)),
        ("Joe Q. Public <john.q.public@example.com>", ("example.com",)),  # obs-phrase "."
        ('"Public, John" <john@example.com>', ("example.com",)),
        ('"a@evil.example, b@evil.example" <x@legit.example>', ("legit.example",)),
        ('"a@evil,x"@legit.example', ("legit.example",)),  # quoted local-part with @ and ,
        ("Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>", ("silly.test",)),
        ("(comment (nested) here) joe@example.com (trailing)", ("example.com",)),
        ("a@legit.example(.evil.example)", ("legit.example",)),
        ("a@legit.example (.evil.example)", ("legit.example",)),
        ("a@legit (c) . example", ("legit.example",)),  # obs-domain: CFWS between atoms
        ("=?utf-8?q?J=C3=B6rg?= <a@legit.example>", ("legit.example",)),
        ("=?utf-8?b?0JjQstCw0L0=?= <a@legit.example>", ("legit.example",)),
        ("<@route.example,@other.example:joe@legit.example>", ("legit.example",)),
        ("Joe <@route.example:joe@legit.example>", ("legit.example",)),
        ("Group: a@one.example, b <b@two.example>;", ("one.example", "two.example")),
        ("Mail From:<joe@joe.com>", ("joe.com",)),  # a group missing its ";"
        ("joe@Example.COM.", ("example.com",)),
        ("joe@bücher.example", ("xn--bcher-kva.example",)),
        ("joe@BÜCHER.example", ("xn--bcher-kva.example",)),
        ("joe@食狮.中国", ("xn--85x722f.xn--fiqs8s",)),
        ("joe@例え。テスト", ("xn--r8jz45g.xn--zckzah",)),  # ideographic full stops
        ("Joe joe@example.com", ("example.com",)),  # lenient: display name without <>
        ("a@example.com,", ("example.com",)),  # obs-mbox-list empty element
    ],
)
def test_single_author(value: str, domains: tuple[str, ...]) -> None:
    result = author_domains([value])
    assert result.domains == domains
    if len(domains) == 1:
        assert result.problem is None, result


@pytest.mark.parametrize(
    "value",
    [
        "a@legit.example(.evil.example)",
        "a@legit.example(.evil.example",
        "a@legit.example (.evil.example",
        "a@legit.example\t(\t.evil.example)",
        "<a@legit.example(.evil.example)>",
        "x <a@legit.example>(.evil.example)",
    ],
)
def test_comment_inside_domain_never_extends_it(value: str) -> None:
    domains = author_domains([value]).domains
    assert "legit.example" in domains
    assert "legit.example.evil.example" not in domains
    assert "evil.example" not in domains


@pytest.mark.parametrize(
    ("values", "domains", "problems"),
    [
        ([], (), (NO_FROM,)),
        ([""], (), (NO_DOMAIN,)),
        (["undisclosed-recipients:;"], (), (NO_DOMAIN,)),
        (["<>"], (), (NO_DOMAIN,)),
        (["joe"], (), (NO_DOMAIN,)),
        (["joe@"], (), (NO_DOMAIN,)),
        (["@example.com"], ("example.com",), (NO_DOMAIN,)),
        (["joe@[192.0.2.1]"], (), (NO_DOMAIN,)),
        (["joe@192.0.2.1"], (), (NO_DOMAIN,)),
        (["joe@exa_mple..com"], ("exa_mple",), (NO_DOMAIN,)),  # salvaged up to the break
        (["joe@-"], (), (NO_DOMAIN,)),
        (["joe@example.com", "ann@example.org"], ("example.com", "example.org"),
         (MULTI_HEADERS,)),
        (["joe@example.com", "joe@example.com"], ("example.com",), (MULTI_HEADERS,)),
        (["a@example.com, b@example.org"], ("example.com", "example.org"), (MULTI_AUTHORS,)),
        (["a@example.com, b@example.com"], ("example.com",), (MULTI_AUTHORS,)),
        (["a@example.com, garbage"], ("example.com",), (NO_DOMAIN, MULTI_AUTHORS)),
        (["<<<><joe@joe.com>>>"], ("joe.com",), (NO_DOMAIN,)),
        (["a@example.com>"], ("example.com",), (NO_DOMAIN,)),
        (['"unterminated <x@victim.example>'], ("victim.example",), (NO_DOMAIN,)),
        (["a@b@victim.example"], ("b", "victim.example"), (NO_DOMAIN,)),
        # getaddresses() reads the joined run: evaluated too (strictest wins)
        (["a@legit.example evil.example"], ("legit.example", "legit.exampleevil.example"),
         (NO_DOMAIN,)),
        (["a@evil.example <b@legit.example>"], ("evil.example", "legit.example"), (NO_DOMAIN,)),
        (["a@x.example, b@y.example", "c@z.example"], ("x.example", "y.example", "z.example"),
         (MULTI_HEADERS, MULTI_AUTHORS)),
        (["G1: a@x.example; G2: b@y.example;"], ("x.example", "y.example"), (MULTI_AUTHORS,)),
        (["G1: G2: a@x.example;"], ("x.example",), (NO_DOMAIN,)),
    ],
)
def test_defined_problems(values: list[str], domains: tuple[str, ...],
                          problems: tuple[AuthorProblem, ...]) -> None:
    result = author_domains(values)
    assert result.domains == domains
    assert result.problems == problems
    assert result.problem == (problems[0] if problems else None)


def test_salvaged_domains_are_reported() -> None:
    result = author_domains(["<<<><joe@joe.com>>>", "ann@ok.example"])
    assert result.domains == ("joe.com", "ok.example")
    assert result.salvaged == ("joe.com",)
    assert result.from_headers == 2 and result.mailboxes == 2


def test_group_name_is_not_an_author() -> None:
    # the display name of a group is text, even when it looks like a domain
    assert author_domains(["victim.example: a@attacker.example;"]).domains == (
        "attacker.example",)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("xn--85x722f.com.cn", "xn--85x722f.com.cn"),
        ("食狮.com.cn", "xn--85x722f.com.cn"),
        (".example.com", None),
        ("example..com", None),
        ("", None),
        (".", None),
        ("example.net(.example.com", None),  # CVE-2020-12272
        ("exa mple.com", None),
        ("a" * 64 + ".com", None),
        (".".join(["a" * 60] * 5), None),  # > 253 octets
        ("192.0.2.1", None),
        ("1.2.3.4.5", "1.2.3.4.5"),
        ("-bad-.example", None),
    ],
)
def test_normalise_domain(text: str, expected: str | None) -> None:
    assert normalise_domain(text) == expected


def _check_invariants(result: AuthorDomains, count: int) -> None:
    assert isinstance(result, AuthorDomains)
    assert len(set(result.domains)) == len(result.domains)
    for domain in result.domains:
        assert normalise_domain(domain) == domain
    assert set(result.salvaged) <= set(result.domains)
    if count == 0:
        assert result.problems == (NO_FROM,)
    if not result.domains:
        assert result.problem is not None
    if result.problem is None:
        assert len(result.domains) == 1


ADDRESS_ALPHABET = st.sampled_from([*'abc@.<>,;:()"\\[] \t\r\n=?-_', "é", "食", "\x00"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(max_size=200), max_size=4))
def test_never_raises_on_any_text(values: list[str]) -> None:
    _check_invariants(author_domains(values), len(values))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(ADDRESS_ALPHABET, max_size=120), max_size=3))
def test_never_raises_on_address_like_text(values: list[str]) -> None:
    _check_invariants(author_domains(values), len(values))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=3))
def test_never_raises_on_decoded_bytes(raw: list[bytes]) -> None:
    for codec in ("utf-8", "latin-1"):
        values = [b.decode(codec, errors="replace") for b in raw]
        _check_invariants(author_domains(values), len(values))


@settings(max_examples=200, deadline=None)
@given(st.text(st.sampled_from("abc.-_é食"), min_size=1, max_size=40),
       st.text(st.sampled_from("()<>,@\" .x"), max_size=20))
def test_comment_after_domain_never_changes_it(label: str, comment: str) -> None:
    """Whatever a comment right after a well-formed domain holds, the domain stays the same."""
    domain = normalise_domain(f"{label}.example")
    if domain is None:
        return
    safe = comment.replace("(", "").replace(")", "").replace("\\", "")
    result = author_domains([f"a@{label}.example({safe})"])
    assert result.domains == (domain,)
    assert result.problem is None


def _reference_tokens(value: str) -> tuple[list[tuple[str, str]], bool, list[str]]:
    """The tokenizer as first written, one character at a time (before the regex fast path),
    kept as the reference the fast one must equal."""
    specials, wsp = frozenset('()<>[]:;@\\,."'), frozenset(" \t\r\n")
    tokens: list[tuple[str, str]] = []
    broken, swallowed, i, n = False, [], 0, len(value)
    while i < n:
        char = value[i]
        if char in wsp:
            i += 1
        elif char == "(":
            depth, opened = 0, i
            while i < n:
                c = value[i]
                if c == "\\":
                    i += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
            else:
                broken = True
                swallowed.append(value[opened + 1 :])
        elif char == ")":
            broken, i = True, i + 1
        elif char == '"':
            i += 1
            opened, buf = i, []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(value[i])
                i += 1
            if i >= n:
                broken = True
                swallowed.append(value[opened:])
            i += 1
            tokens.append(("quoted", "".join(buf)))
        elif char == "[":
            end = value.find("]", i + 1)
            if end < 0:
                broken, end = True, n
            tokens.append(("literal", value[i + 1 : end]))
            i = end + 1
        elif char in specials:
            tokens.append(("special", char))
            i += 1
        else:
            start = i
            while i < n and value[i] not in specials and value[i] not in wsp:
                i += 1
            tokens.append(("atom", value[start:i]))
    return tokens, broken, swallowed


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.text(st.one_of(ADDRESS_ALPHABET, st.sampled_from(["\x0b", "\u00a0", "x"])),
                         max_size=80),
                 st.text(max_size=60)))
def test_fast_tokenizer_equals_the_reference(value: str) -> None:
    tokens, broken, swallowed = _tokenize(value)
    assert ([tuple(t) for t in tokens], broken, swallowed) == _reference_tokens(value)


_ATOMS = st.text(st.sampled_from("abZ9!#$%&'*+/=?^_`{|}~-"), min_size=1, max_size=6)
_NEAR_MISSES = st.sampled_from(["", " ", "\t", ".", "..", "@", "<", ">", "\"", "(", ")", ",",
                                ";", ":", "[", "]", "\\", "é", "-", "a.", ".a", "1.2.3.4"])


@st.composite
def _from_values(draw: st.DrawFn) -> str:
    """Mostly the simple shapes, with near-miss pieces put in anywhere and one piece taken out
    now and then."""
    name = " ".join(draw(st.lists(_ATOMS, max_size=3)))
    local = ".".join(draw(st.lists(_ATOMS, min_size=1, max_size=3)))
    domain = ".".join(draw(st.lists(st.text(st.sampled_from("ab0-"), min_size=1, max_size=5),
                                    min_size=1, max_size=4)))
    shape = draw(st.sampled_from(["name-addr", "addr-spec"]))
    pieces = ([name, " <", local, "@", domain, ">"] if shape == "name-addr"
              else [local, "@", domain])
    for _ in range(draw(st.integers(0, 2))):
        pieces.insert(draw(st.integers(0, len(pieces))), draw(_NEAR_MISSES))
    if draw(st.booleans()):
        del pieces[draw(st.integers(0, len(pieces) - 1))]
    return draw(st.sampled_from(["", " ", "\t"])) + "".join(pieces) + draw(
        st.sampled_from(["", " ", "\t"]))


@settings(max_examples=4000, deadline=None)
@given(_from_values())
def test_simple_from_fast_path_equals_the_full_parse(value: str) -> None:
    fast = addresses._parse_simple(value)
    if fast is None:
        return  # not a simple shape: the full parse is used, nothing to compare
    tokens, broken, swallowed = addresses._tokenize(value)
    items, structure_broken = addresses._split_items(tokens)
    assert not broken and not swallowed and not structure_broken
    assert len(items) == 1
    assert addresses._parse_mailbox(items[0]) == fast


def test_simple_from_fast_path_is_taken_for_the_common_shapes() -> None:
    assert addresses._parse_simple("Kim Example <alex@sn37.example>") is not None
    assert addresses._parse_simple("alex@sn37.example") is not None
    assert addresses._parse_simple('"Kim" <alex@sn37.example>') is None  # quoted: full parse
    assert addresses._parse_simple("a@b.example, c@d.example") is None  # a list: full parse

"""Tests for the requirements/rank expression language (policies.expr)."""

from __future__ import annotations

import fnmatch
import math
import pickle
import random
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import pytest

from broker.errors import InvalidRequest
from policies.expr import (
    MAX_DEPTH,
    MAX_LENGTH,
    ExprError,
    Rank,
    Requirement,
    names,
    parse_rank,
    parse_requirements,
)

HOST = {
    "FREE_CPU": 4,
    "FREE_MEM": 8_000_000,
    "RUNNING_VMS": 7,
    "LOAD": 0.25,
    "HYPERVISOR": "kvm",
    "CLUSTER": "new-1",
    "ARCH": "x86_64",
}


def req(text: str, attrs: Mapping[str, Any]) -> bool:
    result = parse_requirements(text)(attrs)
    assert type(result) is bool
    return result


def rank(text: str, attrs: Mapping[str, Any]) -> float:
    result = parse_rank(text)(attrs)
    assert type(result) is float
    return result


# --------------------------------------------------------------------------- the API


def test_examples_from_the_design() -> None:
    r = parse_requirements('FREE_CPU >= 2 & HYPERVISOR = "kvm" & !(CLUSTER = "old*")')
    assert r(HOST)
    assert not r({**HOST, "CLUSTER": "old-3"})
    assert not r({**HOST, "FREE_CPU": 1})
    assert names(r) == {"FREE_CPU", "HYPERVISOR", "CLUSTER"}
    assert rank("FREE_MEM * 2 - RUNNING_VMS * 100", HOST) == 16_000_000 - 700
    assert rank("-LOAD", HOST) == -0.25


def test_evaluate_is_the_same_closure_as_call() -> None:
    r = parse_requirements("FREE_CPU > 2")
    k = parse_rank("FREE_CPU * 2")
    assert r.evaluate(HOST) is True and r(HOST) is True
    assert k.evaluate(HOST) == k(HOST) == 8.0
    assert isinstance(r, Requirement) and isinstance(k, Rank)
    assert r.text == "FREE_CPU > 2" and "FREE_CPU > 2" in repr(r)
    assert "FREE_CPU * 2" in repr(k)


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_empty_text(text: str) -> None:
    assert parse_requirements(text)({}) is True
    assert parse_rank(text)({}) == 0.0
    assert names(parse_requirements(text)) == frozenset()
    assert names(parse_rank(text)) == frozenset()


def test_names_are_case_insensitive_and_upper_case() -> None:
    r = parse_requirements('free_cpu >= 2 & Hypervisor = "kvm" | host.zone_1 = "a"')
    assert names(r) == {"FREE_CPU", "HYPERVISOR", "HOST.ZONE_1"}
    assert r({"FREE_CPU": 3, "HYPERVISOR": "kvm"})
    assert names(parse_rank("a * b - -a + (c / 2)")) == {"A", "B", "C"}


def test_attrs_may_be_any_mapping() -> None:
    assert req("FREE_CPU = 4", MappingProxyType(HOST))


# --------------------------------------------------------------------------- grammar


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("10 - 4 - 3", 3.0),
        ("10 - (4 - 3)", 9.0),
        ("8 / 4 / 2", 1.0),
        ("8 / (4 / 2)", 4.0),
        ("2 * 3 / 4", 1.5),
        ("-2 * 3", -6.0),
        ("--2", 2.0),
        ("2 * -3", -6.0),
        ("1 - -1", 2.0),
        ("-(1 + 2) * 2", -6.0),
        (".5 + 1. + 1e3 + 2.5E-1", 1001.75),
        ("A * 2 + B", 2 * 3 + 10.0),
        ("A - B * 2", 3 - 20.0),
        ("-A", -3.0),
        ("A/B", 0.3),
        ("7", 7.0),
        ("(((A)))", 3.0),
        ("a\t*\n2", 6.0),
    ],
)
def test_arithmetic_precedence(text: str, expected: float) -> None:
    assert rank(text, {"A": 3, "B": 10}) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "attrs", "expected"),
    [
        # & binds tighter than |
        ("A = 1 | B = 1 & C = 1", {"A": 1, "B": 0, "C": 0}, True),
        ("(A = 1 | B = 1) & C = 1", {"A": 1, "B": 0, "C": 0}, False),
        ("A = 1 & B = 1 | C = 1", {"A": 0, "B": 0, "C": 1}, True),
        ("A = 1 & (B = 1 | C = 1)", {"A": 0, "B": 0, "C": 1}, False),
        # ! binds tighter than & and |
        ("!(A = 1) & B = 1", {"A": 1, "B": 1}, False),
        ("!(A = 1) | B = 1", {"A": 1, "B": 1}, True),
        ("!!(A = 1)", {"A": 1}, True),
        # arithmetic binds tighter than comparison
        ("A + 1 > 1", {"A": 1}, True),
        ("A * 2 = B - 1", {"A": 2, "B": 5}, True),
        ("-A < 0", {"A": 2}, True),
        ("2 < A", {"A": 3}, True),
        ("2 >= A", {"A": 3}, False),
        # long chains
        ("A = 1 & B = 1 & C = 1 & D = 1", {"A": 1, "B": 1, "C": 1, "D": 1}, True),
        ("A = 1 & B = 1 & C = 1 & D = 1", {"A": 1, "B": 1, "C": 1, "D": 0}, False),
        ("A = 2 | B = 2 | C = 2 | D = 1", {"A": 1, "B": 1, "C": 1, "D": 1}, True),
        ("A = 2 | B = 2 | C = 2 | D = 2", {"A": 1, "B": 1, "C": 1, "D": 1}, False),
    ],
)
def test_boolean_precedence(text: str, attrs: dict[str, Any], expected: bool) -> None:
    assert req(text, attrs) is expected


@pytest.mark.parametrize(
    ("op", "results"),
    [
        ("=", (False, True, False)),
        ("!=", (True, False, True)),
        ("<>", (True, False, True)),
        ("<", (True, False, False)),
        ("<=", (True, True, False)),
        (">", (False, False, True)),
        (">=", (False, True, True)),
    ],
)
def test_every_comparison_operator(op: str, results: tuple[bool, bool, bool]) -> None:
    for value, expected in zip((1, 2, 3), results, strict=True):
        assert req(f"A {op} 2", {"A": value}) is expected
        assert req(f'S {op} "b"', {"S": "abc"[value - 1]}) is expected
        assert req(f"A {op} B", {"A": value, "B": 2}) is expected
        assert req(f"A {op} B * 1", {"A": value, "B": 2}) is expected


def test_constants_fold() -> None:
    assert req("1 + 2 = 3", {})
    assert not req('"a" = "b"', {})
    assert req("1 = 1 & A = 1", {"A": 1})
    assert not req("1 = 2 & A = 1", {"A": 1})
    assert req("1 = 2 | A = 1", {"A": 1})
    assert req("1 = 1 | A = 1", {})
    assert req("!(1 = 2)", {})
    assert rank("2 * 3 - 1", {}) == 5.0
    assert rank("A / 0", {"A": 5}) == 0.0
    assert rank("1 / 0", {}) == 0.0
    assert rank("1e999 - 1e999", {}) == 0.0  # NaN rank becomes 0.0


# --------------------------------------------------------------------------- strings, wildcards


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("old*", "old-3", True),
        ("old*", "cold", False),
        ("*-1", "new-1", True),
        ("*-1", "new-12", False),
        ("*ew*", "new-1", True),
        ("*ew*", "now", False),
        ("*", "", True),
        ("*", "anything", True),
        ("n?w-1", "new-1", True),
        ("n?w-1", "nw-1", False),
        ("n*-?", "new-1", True),
        ("a.b*", "a.bc", True),
        ("a.b*", "axbc", False),  # regex characters are literal
        ("a+[b]*", "a+[b]c", True),
        ("x*y", "x\ny", True),
        ("**x", "yx", True),
        ("?", "ab", False),
    ],
)
def test_wildcards(pattern: str, value: str, expected: bool) -> None:
    attrs = {"S": value}
    assert req(f'S = "{pattern}"', attrs) is expected
    assert req(f'S != "{pattern}"', attrs) is (not expected)
    assert req(f'"{pattern}" = S', attrs) is expected  # a pattern on the left works too
    assert req(f'"{value}" = "{pattern}"', {}) is expected


def test_wildcards_only_for_equality() -> None:
    assert req('S < "b*"', {"S": "a"})
    assert req('S = "b*"', {"S": "b"}) is not False  # plain match
    assert not req('S > "b*"', {"S": "b"})  # "b" < "b*" as text


def test_wildcard_against_numbers_uses_their_written_form() -> None:
    assert req('A = "1*"', {"A": 12})
    assert req('A = "2.5"', {"A": 2.5})
    assert req('A = "2?5"', {"A": 2.5})
    assert req('A = "3"', {"A": 3.0})
    assert req('A = "?"', {"A": 3.0})
    assert req('A = "1"', {"A": True})
    assert req('A * 2 = "1?"', {"A": 6})
    assert not req('A = "1*"', {"A": 21})
    assert req('A != "1*"', {"A": 21})
    assert req('-2 = "-*"', {})


def test_string_escapes() -> None:
    assert req(r'S = "say \"hi\""', {"S": 'say "hi"'})
    assert req(r'S = "back\\slash"', {"S": "back\\slash"})
    assert req(r'S = "\\"', {"S": "\\"})
    assert req(r'S = "a\\\\b"', {"S": "a\\\\b"})
    assert req('S = "two\nlines"', {"S": "two\nlines"})


def test_strings_are_case_sensitive() -> None:
    assert not req('HYPERVISOR = "KVM"', HOST)
    assert req('HYPERVISOR != "KVM"', HOST)


# --------------------------------------------------------------------------- missing attributes


@pytest.mark.parametrize("op", ["=", "!=", "<", "<=", ">", ">="])
@pytest.mark.parametrize("value", [None, [1], object(), Decimal("1"), {"a": 1}])
def test_missing_or_unusable_attribute_makes_comparisons_false(op: str, value: Any) -> None:
    for attrs in ({}, {"A": value}):
        assert req(f"A {op} 1", attrs) is False
        assert req(f"1 {op} A", attrs) is False
        assert req(f'A {op} "x"', attrs) is False
        assert req(f'A {op} "x*"', attrs) is False
        assert req(f"A {op} B", {**attrs, "B": 1}) is False
        assert req(f"!(A {op} 1)", attrs) is True


def test_missing_attribute_is_zero_in_arithmetic() -> None:
    assert req("A + 1 = 1", {})
    assert req("A * 2 >= 0", {})
    assert req("-A = 0", {})
    assert rank("A", {}) == 0.0
    assert rank("FREE_MEM * 2 - RUNNING_VMS * 100", {"FREE_MEM": 10}) == 20.0
    assert rank("A / B", {"A": 1}) == 0.0


# --------------------------------------------------------------------------- type mixing


@pytest.mark.parametrize(
    ("text", "attrs", "expected"),
    [
        ("A = 4", {"A": "4"}, True),  # numeric text against a number compares as numbers
        ("A >= 2", {"A": " 4.0 "}, True),
        ("A > 2", {"A": "1e3"}, True),
        ("A = 4", {"A": "four"}, False),  # not a number: = and ordering are false...
        ("A < 4", {"A": "four"}, False),
        ("A >= 4", {"A": "four"}, False),
        ("A != 4", {"A": "four"}, True),  # ...and != is true
        ("A = 4", {"A": "nan"}, False),  # "nan", "inf" and "1_0" are not numbers
        ("A != 4", {"A": "inf"}, True),
        ("A > 4", {"A": "1_0"}, False),
        ('A = "4"', {"A": 4}, True),
        ('A = "4.0"', {"A": 4}, True),
        ('A < "10"', {"A": 9}, True),
        ('A = "kvm"', {"A": 4}, False),
        ('A != "kvm"', {"A": 4}, True),
        ('A < "kvm"', {"A": 4}, False),
        ('A < "b"', {"A": "a"}, True),  # two strings compare as text
        ('A < "10"', {"A": "9"}, False),
        ('A = "4"', {"A": "4.0"}, False),
        ("A = B", {"A": "4", "B": 4.0}, True),
        ("A = B", {"A": "4", "B": "4.0"}, False),
        ("A != B", {"A": "x", "B": 1}, True),
        ("A = 1", {"A": True}, True),  # booleans count as 1 and 0
        ("A = 0", {"A": False}, True),
        ("A + 1 = 2", {"A": True}, True),
        ("A * 2 = 8", {"A": "4"}, True),  # numeric text in arithmetic
        ("A * 2 = 0", {"A": "four"}, True),  # other text counts as 0
        ("A > 1e300", {"A": 10**400}, True),  # huge ints never raise
        ("A * 2 > 1e300", {"A": 10**400}, True),
        ("-A * 2 < -1e300", {"A": 10**400}, True),
        ("A = A", {"A": math.nan}, False),
        ("A != 1", {"A": math.nan}, True),
        ('"2" = "2.0"', {}, False),
        ('2 = "2.0"', {}, True),
        ('2 = "two"', {}, False),
        ('2 != "two"', {}, True),
    ],
)
def test_type_mixing(text: str, attrs: dict[str, Any], expected: bool) -> None:
    assert req(text, attrs) is expected


def test_rank_never_raises_and_stays_a_number() -> None:
    assert rank("A", {"A": "12"}) == 12.0
    assert rank("A", {"A": "x"}) == 0.0
    assert rank("A", {"A": 10**400}) == math.inf
    assert rank("-A", {"A": 10**400}) == -math.inf
    assert rank("A - A", {"A": math.inf}) == 0.0
    assert rank("A", {"A": math.nan}) == 0.0
    assert rank("A * 1e300 * 1e300", {"A": 1}) == math.inf
    assert rank("A / B", {"A": 1, "B": "0"}) == 0.0
    assert rank("1 / B", {}) == 0.0
    assert rank("-1", {}) == -1.0


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("A = 1)", 5, "unexpected ')'"),
        ("(A = 1", 0, "unclosed '('"),
        ("((A = 1) & (B = 2)", 0, "unclosed '('"),
        ("(A = 1 B = 2)", 7, "expected ')', found 'B'"),
        ("A = 1 B", 6, "unexpected 'B'"),
        ('A = 1 "x"', 6, "unexpected '\"x\"'"),
        ("A = ", 4, "expected a value, found end of expression"),
        ("A = & B = 1", 4, "expected a value, found '&'"),
        ("A = 1 &", 7, "expected a value, found end of expression"),
        ("& A = 1", 0, "expected a value, found '&'"),
        ("()", 1, "expected a value, found ')'"),
        ("A == 1", 3, "expected a value, found '='"),
        ("A # 1", 2, "unexpected character '#'"),
        ("A = 'x'", 4, "unexpected character"),
        ("A = 1 ; B = 2", 6, "unexpected character ';'"),
        ("A\u00a0= 1", 1, "unexpected character"),
        ('A = "abc', 4, "unterminated string"),
        ('A = "abc\\"', 4, "unterminated string"),
        ('A = "a\\nb"', 6, "unknown escape '\\\\n'"),
        ('A = "a\\\\\\tb"', 8, "unknown escape"),
        ("A > 2abc", 4, "malformed number '2abc'"),
        ("A > 1.2.3", 4, "malformed number '1.2.3'"),
        ("A > 1e", 4, "malformed number '1e'"),
        ("A = .", 4, "unexpected character '.'"),
        ("A < B < C", 6, "comparisons cannot be chained: unexpected '<'"),
        ("A = 1 = 1", 6, "comparisons cannot be chained"),
        ("!A = 1", 1, "'!' needs a condition"),
        ("!A", 1, "'!' needs a condition"),
        ("A & B = 1", 0, "'&' needs a condition on each side, found an attribute"),
        ("B = 1 | 2", 8, "'|' needs a condition on each side, found a number"),
        ('A + "x" > 1', 4, "'+' needs numbers or attributes, found a string"),
        ('"x" * 2 > 1', 0, "'*' needs numbers or attributes, found a string"),
        ("(A = 1) + 1 > 1", 0, "'+' needs numbers or attributes, found a condition"),
        ('-"x" = 1', 1, "'-' needs a number or an attribute, found a string"),
        ("-(A = 1)", 1, "'-' needs a number or an attribute, found a condition"),
        ("(A = 1) = (B = 1)", 0, "'=' compares values, not conditions"),
        ("A = (B = 1)", 4, "'=' compares values, not conditions"),
        ("A", 0, "requirements must be a condition such as A > 1, found an attribute"),
        ("A + 1", 0, "requirements must be a condition"),
        ('"kvm"', 0, "requirements must be a condition"),
        ("  (A * 2)", 2, "requirements must be a condition"),
    ],
)
def test_requirement_errors(text: str, position: int, message: str) -> None:
    with pytest.raises(ExprError) as caught:
        parse_requirements(text)
    err = caught.value
    assert err.position == position
    assert message in str(err)
    assert str(err).endswith(f"at position {position}")
    assert err.message == str(err)
    assert err.field == "requirements"
    assert isinstance(err, InvalidRequest)


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("A > 1", 0, "rank must be a number, found a condition"),
        ('"x"', 0, "rank must be a number, found a string"),
        ("!(A = 1)", 0, "rank must be a number, found a condition"),
        ("A * ", 4, "expected a value, found end of expression"),
        ("A B", 2, "unexpected 'B'"),
        ("-", 1, "expected a value"),
    ],
)
def test_rank_errors(text: str, position: int, message: str) -> None:
    with pytest.raises(ExprError) as caught:
        parse_rank(text)
    assert caught.value.position == position
    assert message in str(caught.value)
    assert caught.value.field == "rank"


def test_error_survives_pickling() -> None:
    with pytest.raises(ExprError) as caught:
        parse_requirements("A = 1)")
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301 (our own bytes)
    assert isinstance(copy, ExprError)
    assert (copy.position, str(copy), copy.field) == (
        5,
        "unexpected ')' at position 5",
        "requirements",
    )


def test_long_tokens_are_shortened_in_messages() -> None:
    with pytest.raises(ExprError) as caught:
        parse_requirements("A = 1 " + "B" * 100)
    assert len(str(caught.value)) < 80


# --------------------------------------------------------------------------- limits


def test_length_limit() -> None:
    ok = "A = 1" + " " * (MAX_LENGTH - 5)
    assert len(ok) == MAX_LENGTH
    assert req(ok, {"A": 1})
    with pytest.raises(ExprError) as caught:
        parse_requirements(ok + " ")
    assert caught.value.position == MAX_LENGTH
    assert "longer than 4096 characters" in str(caught.value)
    with pytest.raises(ExprError):
        parse_rank("1" * (MAX_LENGTH + 1))


def nested(levels: int) -> str:
    return "(" * levels + "A" + ")" * levels


def test_depth_limit_counts_parentheses() -> None:
    assert MAX_DEPTH == 64
    assert rank(nested(MAX_DEPTH - 1), {"A": 2}) == 2.0  # the value is level 1
    with pytest.raises(ExprError) as caught:
        parse_rank(nested(MAX_DEPTH))
    assert "nested deeper than 64 levels" in str(caught.value)
    assert caught.value.position == 0
    with pytest.raises(ExprError) as caught:
        parse_rank(nested(1000))  # far past the limit: stopped on the way down
    assert caught.value.position == MAX_DEPTH


def test_depth_limit_counts_prefix_operators() -> None:
    assert rank("-" * (MAX_DEPTH - 1) + "A", {"A": 2}) == -2.0
    with pytest.raises(ExprError, match="nested deeper"):
        parse_rank("-" * MAX_DEPTH + "A")
    assert req("!" * (MAX_DEPTH - 4) + "(A = 1)", {"A": 1})  # (A = 1) is three levels
    with pytest.raises(ExprError, match="nested deeper"):
        parse_requirements("!" * 2000 + "(A = 1)")


def test_depth_limit_counts_arithmetic_chains_but_not_logic_chains() -> None:
    assert rank(" + ".join(["A"] * MAX_DEPTH), {"A": 1}) == MAX_DEPTH
    with pytest.raises(ExprError) as caught:
        parse_rank(" + ".join(["A"] * (MAX_DEPTH + 1)))
    assert caught.value.position == len(" + ".join(["A"] * MAX_DEPTH)) + 1
    many = "&".join(f"A!={i}" for i in range(400))
    assert req(many, {"A": 1000})
    assert not req(many, {"A": 399})
    assert req("|".join(f"A={i}" for i in range(400)), {"A": 399})


def test_deep_expressions_evaluate_within_the_limit() -> None:
    text = "(" * 30 + " + ".join(["A"] * 30) + ")" * 30 + " > 0"
    assert req(text, {"A": 1})


# --------------------------------------------------------------------------- randomized check
#
# A seeded generator builds random trees, renders them with the fewest parentheses the
# precedence rules allow (sometimes more), and compares the compiled evaluator with the
# straightforward reference evaluator below, written from the documented semantics.


@dataclass(frozen=True)
class T:
    kind: str  # num str attr neg arith cmp not and or
    value: Any = None
    op: str = ""
    kids: tuple[T, ...] = ()


_PREC = {"or": 1, "and": 2, "cmp": 3, "+": 4, "-": 4, "*": 5, "/": 5}
MISSING = object()
ATTR_NAMES = ["A", "B", "C", "HOST.X_1"]
VALUES: list[Any] = [
    0,
    1,
    2,
    7,
    -3,
    10**400,
    0.5,
    -2.25,
    1e20,
    math.nan,
    math.inf,
    True,
    False,
    "4",
    " 7 ",
    "2.5",
    "1e3",
    "-1",
    "kvm",
    "old-1",
    "",
    "nan",
    "K*",
    None,
    [1],
    MISSING,
]
STRINGS = ["kvm", "old*", "*1", "?vm", "*", "4", "2.5", "", "o?d-1", "k*m", "-1"]


def prec(t: T) -> int:
    if t.kind in ("arith",):
        return _PREC[t.op]
    if t.kind in ("cmp", "and", "or"):
        return _PREC[t.kind]
    return 6  # unary and atoms


def gen_num(rng: random.Random, depth: int) -> T:
    roll = rng.random()
    if depth <= 0 or roll < 0.3:
        if rng.random() < 0.6:
            return T("attr", rng.choice(ATTR_NAMES))
        return T("num", rng.choice([0, 1, 2, 3, 2.5, 0.5, 100, 1e300]))
    if roll < 0.4:
        return T("neg", kids=(gen_num(rng, depth - 1),))
    op = rng.choice("+-*/")
    return T("arith", op=op, kids=(gen_num(rng, depth - 1), gen_num(rng, depth - 1)))


def gen_value(rng: random.Random, depth: int) -> T:
    if rng.random() < 0.3:
        return T("str", rng.choice(STRINGS))
    return gen_num(rng, depth)


def gen_cond(rng: random.Random, depth: int) -> T:
    roll = rng.random()
    if depth <= 0 or roll < 0.4:
        op = rng.choice(["=", "!=", "<", "<=", ">", ">="])
        return T("cmp", op=op, kids=(gen_value(rng, depth - 1), gen_value(rng, depth - 1)))
    if roll < 0.55:
        return T("not", kids=(gen_cond(rng, depth - 1),))
    kind = rng.choice(["and", "or"])
    count = rng.randint(2, 4)
    return T(kind, kids=tuple(gen_cond(rng, depth - 1) for _ in range(count)))


def render(t: T, rng: random.Random) -> str:
    sp = rng.choice(["", " ", "  ", "\t"])
    if t.kind == "num":
        return repr(t.value) if isinstance(t.value, float) else str(t.value)
    if t.kind == "str":
        text = str(t.value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    if t.kind == "attr":
        return str(rng.choice([t.value, t.value.lower()]))
    if t.kind in ("neg", "not"):
        inner = render(t.kids[0], rng)
        if prec(t.kids[0]) < 6 or rng.random() < 0.1:
            inner = f"({inner})"
        return ("-" if t.kind == "neg" else "!") + inner
    if t.kind in ("and", "or"):
        parts = []
        for kid in t.kids:
            text = render(kid, rng)
            parts.append(f"({text})" if prec(kid) <= prec(t) else text)
        return f"{sp}{'&' if t.kind == 'and' else '|'}{sp}".join(parts)
    left, right = t.kids
    lt, rt = render(left, rng), render(right, rng)
    if prec(left) < prec(t) or (t.kind == "cmp" and prec(left) == prec(t)) or rng.random() < 0.05:
        lt = f"({lt})"
    if prec(right) <= prec(t) or rng.random() < 0.05:
        rt = f"({rt})"
    op = t.op if t.op != "!=" else rng.choice(["!=", "<>"])
    return f"{lt}{sp}{op}{sp}{rt}"


def ref_scalar(v: Any) -> Any:
    if v is MISSING or v is None:
        return MISSING
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int | float | str):
        return v
    return MISSING


def ref_number_text(s: str) -> float | None:
    body = s.strip(" \t\r\n\f\v")
    if not body or any(c not in "0123456789.+-eE" for c in body):
        return None
    try:
        return float(body)
    except ValueError:
        return None


def ref_to_num(v: Any) -> float:
    v = ref_scalar(v)
    if v is MISSING:
        return 0.0
    if isinstance(v, str):
        n = ref_number_text(v)
        return 0.0 if n is None else n
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def ref_num(t: T, attrs: dict[str, Any]) -> float:
    if t.kind == "num":
        return float(t.value)
    if t.kind == "attr":
        return ref_to_num(attrs.get(t.value, MISSING))
    if t.kind == "neg":
        return -ref_num(t.kids[0], attrs)
    x, y = ref_num(t.kids[0], attrs), ref_num(t.kids[1], attrs)
    if t.op == "+":
        return x + y
    if t.op == "-":
        return x - y
    if t.op == "*":
        return x * y
    return x / y if y else 0.0


def ref_value(t: T, attrs: dict[str, Any]) -> Any:
    if t.kind == "str":
        return t.value
    if t.kind == "attr":
        return ref_scalar(attrs.get(t.value, MISSING))
    return ref_num(t, attrs)


def ref_text(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return repr(v)


def ref_compare(op: str, x: Any, y: Any, pattern: str | None) -> bool:
    if x is MISSING or y is MISSING:
        return False
    if pattern is not None:
        matched = fnmatch.fnmatchcase(ref_text(x), pattern.replace("[", "[[]"))
        return matched if op == "=" else not matched
    if isinstance(x, str) != isinstance(y, str):
        x = ref_number_text(x) if isinstance(x, str) else x
        y = ref_number_text(y) if isinstance(y, str) else y
        if x is None or y is None:
            return op == "!="
    return bool(
        {
            "=": x == y,
            "!=": x != y,
            "<": x < y,
            "<=": x <= y,
            ">": x > y,
            ">=": x >= y,
        }[op]
    )


def is_pattern(t: T) -> bool:
    return t.kind == "str" and ("*" in t.value or "?" in t.value)


def ref_cond(t: T, attrs: dict[str, Any]) -> bool:
    if t.kind == "not":
        return not ref_cond(t.kids[0], attrs)
    if t.kind == "and":
        return all(ref_cond(k, attrs) for k in t.kids)
    if t.kind == "or":
        return any(ref_cond(k, attrs) for k in t.kids)
    left, right = t.kids
    x, y = ref_value(left, attrs), ref_value(right, attrs)
    if t.op in ("=", "!=") and is_pattern(right):
        return ref_compare(t.op, x, None, right.value) if x is not MISSING else False
    if t.op in ("=", "!=") and is_pattern(left):
        return ref_compare(t.op, y, None, left.value) if y is not MISSING else False
    return ref_compare(t.op, x, y, None)


def random_attrs(rng: random.Random) -> dict[str, Any]:
    attrs = {}
    for name in ATTR_NAMES:
        value = rng.choice(VALUES)
        if value is not MISSING:
            attrs[name] = value
    return attrs


def test_randomized_requirements_match_the_reference() -> None:
    rng = random.Random(20240611)
    for _ in range(1500):
        tree = gen_cond(rng, rng.randint(0, 5))
        text = render(tree, rng)
        compiled = parse_requirements(text)
        for _ in range(6):
            attrs = random_attrs(rng)
            assert compiled(attrs) is ref_cond(tree, attrs), (text, attrs)


def test_randomized_ranks_match_the_reference() -> None:
    rng = random.Random(42)
    for _ in range(1500):
        tree = gen_num(rng, rng.randint(0, 6))
        text = render(tree, rng)
        compiled = parse_rank(text)
        for _ in range(6):
            attrs = random_attrs(rng)
            expected = ref_num(tree, attrs)
            expected = 0.0 if math.isnan(expected) else expected
            assert compiled(attrs) == expected, (text, attrs)


FRAGMENTS = [
    "A",
    "b.c",
    "1",
    "2.5",
    ".5",
    "1e",
    '"x"',
    '"o*"',
    '"\\"',
    '"',
    "\\",
    "(",
    ")",
    "!",
    "-",
    "+",
    "*",
    "/",
    "&",
    "|",
    "=",
    "!=",
    "<>",
    "<",
    "<=",
    ">",
    ">=",
    " ",
    "#",
    "é",
]


def test_random_text_parses_or_fails_cleanly() -> None:
    rng = random.Random(7)
    parsed = 0
    for _ in range(5000):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12)))
        for parse in (parse_requirements, parse_rank):
            try:
                compiled = parse(text)
            except ExprError as err:
                assert 0 <= err.position <= len(text), (text, err)
                assert str(err).endswith(f"at position {err.position}")
                continue
            parsed += 1
            for _ in range(3):
                compiled(random_attrs(rng))  # never raises
    assert parsed > 100

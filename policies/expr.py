"""The requirements/rank expression language: what a placement expression means.

Operators and users steer placement the way OpenNebula's ``SCHED_REQUIREMENTS`` and
``SCHED_RANK`` do::

    FREE_CPU >= 2 & HYPERVISOR = "kvm" & !(CLUSTER = "old*")     requirements: a condition
    FREE_MEM * 2 - RUNNING_VMS * 100                              rank: a number, higher wins
    -LOAD

Grammar, loosest binding first (``!`` and unary ``-`` bind tightest)::

    or      := and ("|" and)*
    and     := compare ("&" compare)*
    compare := sum [("=" | "!=" | "<>" | "<" | "<=" | ">" | ">=") sum]   (no chaining)
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/") unary)*
    unary   := "!" unary | "-" unary | NUMBER | STRING | NAME | "(" or ")"

NUMBER is ``12``, ``2.5``, ``.5`` or ``1e3``; STRING is double-quoted with ``\\"`` and ``\\\\``
as its only escapes; NAME is a letter or ``_`` then letters, digits, ``_`` and ``.``, read
case-insensitively and looked up upper-case (the attrs mapping must use upper-case keys).

The parser checks types before anything runs, so a mistake is reported with its position
(:class:`ExprError`) instead of surfacing at placement time: ``&``, ``|`` and ``!`` take
conditions, so ``!CLUSTER = "a"`` is an error (write ``!(CLUSTER = "a")``); arithmetic takes
numbers and attributes, never string literals or conditions; comparisons take values, never
conditions. Requirements must be a condition and rank must be numeric (a rank written as a
condition is an error, not 1/0). Empty or blank text means "always true" and "always 0.0".

Evaluation never raises, whatever the attribute values:

- An attribute absent from the mapping (or ``None``, or not a str/int/float) makes any
  comparison it is a direct operand of false, ``!=`` included (so ``A != 1`` is false but
  ``!(A = 1)`` is true when A is missing); in arithmetic it counts as 0.
- Two strings compare as text (case-sensitive). A number against a string compares as
  numbers when the string parses as one; otherwise ``=`` and ordering are false and ``!=``
  is true (the values are present and plainly unequal). Booleans count as 1 and 0.
- ``=`` and ``!=`` against a string literal containing ``*`` or ``?`` (on either side) match
  it as a shell-style wildcard over the whole value (no ``[...]`` classes; a number matches by
  its written form, ``12`` or ``2.5``). Ordering operators never treat ``*`` or ``?`` specially.
- In arithmetic a string attribute counts as its number, or 0 if it is not one; division by
  zero gives 0.0; a NaN rank becomes 0.0.

Text is limited to 4096 characters and the tree to 64 levels: a value is one level, and each
operator, each step of a ``+ - * /`` chain and each pair of parentheses adds one (``&`` and
``|`` chains are flat, so long lists of alternatives are fine). Compilation and evaluation
thus stay far from Python's recursion limit.

Compilation builds nested closures once, folding constants and picking a specialised closure
for the common shapes (attribute against a literal, attribute times a constant); evaluation
never walks a tree. ``Requirement.evaluate`` and ``Rank.evaluate`` are the bare closures, for
hot loops that want to skip the method call.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeAlias

from broker.errors import InvalidRequest

__all__ = [
    "MAX_DEPTH",
    "MAX_LENGTH",
    "ExprError",
    "Rank",
    "Requirement",
    "names",
    "parse_rank",
    "parse_requirements",
]

MAX_LENGTH = 4096
MAX_DEPTH = 64

Attrs: TypeAlias = Mapping[str, Any]
BoolFn: TypeAlias = Callable[[Attrs], bool]
NumFn: TypeAlias = Callable[[Attrs], float]
Scalar: TypeAlias = int | float | str | None
ValFn: TypeAlias = Callable[[Attrs], Scalar]
CmpOp: TypeAlias = Callable[[Any, Any], bool]


class ExprError(InvalidRequest):
    """The expression text is malformed; ``position`` is the 0-based offset of the problem."""

    def __init__(self, reason: str, position: int, field: str = "") -> None:
        super().__init__(f"{reason} at position {position}", field=field)
        self.reason = reason
        self.position = position

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.reason, self.position, self.field))


class Requirement:
    """A compiled requirements expression: call it with a target's attributes."""

    __slots__ = ("evaluate", "names", "text")

    def __init__(self, text: str, evaluate: BoolFn, names: frozenset[str]) -> None:
        self.text = text
        self.evaluate = evaluate  # the bare closure, for hot loops
        self.names = names

    def __call__(self, attrs: Attrs) -> bool:
        return self.evaluate(attrs)

    def __repr__(self) -> str:
        return f"Requirement({self.text!r})"


class Rank:
    """A compiled rank expression: call it with a target's attributes; higher wins."""

    __slots__ = ("evaluate", "names", "text")

    def __init__(self, text: str, evaluate: NumFn, names: frozenset[str]) -> None:
        self.text = text
        self.evaluate = evaluate  # the bare closure, for hot loops
        self.names = names

    def __call__(self, attrs: Attrs) -> float:
        return self.evaluate(attrs)

    def __repr__(self) -> str:
        return f"Rank({self.text!r})"


def parse_requirements(text: str) -> Requirement:
    """Compile a requirements expression; raise :class:`ExprError` if it is malformed."""
    node = _parse(text, "requirements")
    if node is None:
        return Requirement(text, _always_true, frozenset())
    if _kind(node) != _COND:
        raise ExprError(
            f"requirements must be a condition such as A > 1, found {_kind(node)}",
            node.pos,
            "requirements",
        )
    return Requirement(text, _as_fn(_compile_cond(node)), _names(node))


def parse_rank(text: str) -> Rank:
    """Compile a rank expression; raise :class:`ExprError` if it is malformed."""
    node = _parse(text, "rank")
    if node is None:
        return Rank(text, _always_zero, frozenset())
    kind = _kind(node)
    if kind not in (_NUM, _ATTR):
        raise ExprError(f"rank must be a number, found {kind}", node.pos, "rank")
    num = _compile_num(node)
    if isinstance(num, float):
        const = num if num == num else 0.0
        return Rank(text, lambda a: const, _names(node))
    return Rank(text, _nan_to_zero(num), _names(node))


def names(expr: Requirement | Rank) -> frozenset[str]:
    """The attribute names an expression reads, upper-case."""
    return expr.names


def _always_true(attrs: Attrs) -> bool:
    return True


def _always_zero(attrs: Attrs) -> float:
    return 0.0


# --------------------------------------------------------------------------- tokens

_TOKEN_RE = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
    | (?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?P<tail>[A-Za-z0-9_.]*)
    | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<op>!=|<>|<=|>=|[=<>&|!+\-*/()])
    | (?P<str>"(?P<body>(?:[^"\\]|\\.)*)")
    | (?P<open>")
    """,
    re.VERBOSE | re.ASCII | re.DOTALL,
)
_ESCAPE_RE = re.compile(r"\\(.)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "num", "str", "name", "op", "end"
    pos: int
    text: str  # the source slice, for messages
    value: Any = None  # float for num, str for str and name, the operator for op


def _tokenize(text: str, field: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        m = _TOKEN_RE.match(text, i)
        if m is None:
            raise ExprError(f"unexpected character {text[i]!r}", i, field)
        kind, end = m.lastgroup, m.end()  # the group closed last: "tail" for numbers
        if kind == "tail":
            if m.group("tail"):
                raise ExprError(f"malformed number {m.group()!r}", i, field)
            tokens.append(_Token("num", i, m.group(), float(m.group())))
        elif kind == "name":
            tokens.append(_Token("name", i, m.group(), m.group().upper()))
        elif kind == "op":
            op = m.group()
            tokens.append(_Token("op", i, op, "!=" if op == "<>" else op))
        elif kind == "str":
            tokens.append(_Token("str", i, m.group(), _unescape(m.group("body"), i + 1, field)))
        elif kind == "open":
            raise ExprError("unterminated string", i, field)
        i = end
    tokens.append(_Token("end", n, ""))
    return tokens


def _unescape(body: str, offset: int, field: str) -> str:
    if "\\" not in body:
        return body
    for m in _ESCAPE_RE.finditer(body):
        if m.group(1) not in ('"', "\\"):
            reason = f'unknown escape {m.group()!r} (only \\" and \\\\)'
            raise ExprError(reason, offset + m.start(), field)
    return _ESCAPE_RE.sub(r"\1", body)


# --------------------------------------------------------------------------- syntax tree


@dataclass(frozen=True, slots=True)
class _Node:
    pos: int
    depth: int


@dataclass(frozen=True, slots=True)
class _Num(_Node):
    value: float


@dataclass(frozen=True, slots=True)
class _Str(_Node):
    value: str


@dataclass(frozen=True, slots=True)
class _Attr(_Node):
    name: str


@dataclass(frozen=True, slots=True)
class _Neg(_Node):
    operand: _Node


@dataclass(frozen=True, slots=True)
class _Arith(_Node):
    op: str
    left: _Node
    right: _Node


@dataclass(frozen=True, slots=True)
class _Cmp(_Node):
    op: str
    left: _Node
    right: _Node


@dataclass(frozen=True, slots=True)
class _Not(_Node):
    operand: _Node


@dataclass(frozen=True, slots=True)
class _Logic(_Node):
    op: str  # "&" or "|"
    operands: tuple[_Node, ...]


_COND, _NUM, _STR, _ATTR = "a condition", "a number", "a string", "an attribute"


def _kind(node: _Node) -> str:
    if isinstance(node, _Cmp | _Not | _Logic):
        return _COND
    if isinstance(node, _Str):
        return _STR
    if isinstance(node, _Attr):
        return _ATTR
    return _NUM


def _names(node: _Node) -> frozenset[str]:
    if isinstance(node, _Attr):
        return frozenset((node.name,))
    if isinstance(node, _Neg | _Not):
        return _names(node.operand)
    if isinstance(node, _Arith | _Cmp):
        return _names(node.left) | _names(node.right)
    if isinstance(node, _Logic):
        return frozenset().union(*(_names(o) for o in node.operands))
    return frozenset()


# --------------------------------------------------------------------------- parser

_OR, _AND, _CMP, _SUM, _PRODUCT = 1, 2, 3, 4, 5
_BINDING = {
    "|": _OR,
    "&": _AND,
    **dict.fromkeys(("=", "!=", "<", "<=", ">", ">="), _CMP),
    "+": _SUM,
    "-": _SUM,
    "*": _PRODUCT,
    "/": _PRODUCT,
}
_VALUES = (_NUM, _STR, _ATTR)
_NUMBERS = (_NUM, _ATTR)


def _parse(text: str, field: str) -> _Node | None:
    if len(text) > MAX_LENGTH:
        raise ExprError(f"expression longer than {MAX_LENGTH} characters", MAX_LENGTH, field)
    tokens = _tokenize(text, field)
    if tokens[0].kind == "end":
        return None
    return _Parser(tokens, field).parse()


class _Parser:
    """Precedence climbing over the token list; types are checked as nodes are built.

    Binary chains are loops, so the Python stack grows only with parentheses and prefix
    operators (a few frames each), and ``level`` caps that before the tree depth is known.
    """

    def __init__(self, tokens: list[_Token], field: str) -> None:
        self.tokens = tokens
        self.i = 0
        self.field = field
        self.level = 0

    def parse(self) -> _Node:
        node = self._expr(_OR)
        tok = self.tokens[self.i]
        if tok.kind != "end":
            raise self._unexpected(tok)
        return node

    def _error(self, reason: str, pos: int) -> ExprError:
        return ExprError(reason, pos, self.field)

    @staticmethod
    def _shown(tok: _Token) -> str:
        if tok.kind == "end":
            return "end of expression"
        return repr(tok.text if len(tok.text) <= 24 else tok.text[:21] + "...")

    def _unexpected(self, tok: _Token, prefix: str = "") -> ExprError:
        return self._error(f"{prefix}unexpected {self._shown(tok)}", tok.pos)

    def _expected(self, what: str, tok: _Token) -> ExprError:
        return self._error(f"expected {what}, found {self._shown(tok)}", tok.pos)

    def _binding(self) -> int:
        tok = self.tokens[self.i]
        return _BINDING.get(tok.value, 0) if tok.kind == "op" else 0

    def _depth(self, depth: int, pos: int) -> int:
        if depth > MAX_DEPTH:
            raise self._error(f"expression nested deeper than {MAX_DEPTH} levels", pos)
        return depth

    def _check(self, node: _Node, allowed: tuple[str, ...], what: str) -> _Node:
        kind = _kind(node)
        if kind not in allowed:
            raise self._error(f"{what}, found {kind}", node.pos)
        return node

    def _expr(self, min_binding: int) -> _Node:
        left = self._prefix()
        while (binding := self._binding()) >= min_binding:
            if binding <= _AND:
                left = self._logic(binding, left)
            elif binding == _CMP:
                left = self._compare(left)
            else:
                left = self._arith(binding, left)
        return left

    def _logic(self, binding: int, first: _Node) -> _Node:
        op = self.tokens[self.i].value
        what = f"{op!r} needs a condition on each side"
        operands = [self._check(first, (_COND,), what)]
        pos = first.pos
        while self._binding() == binding:
            pos = self.tokens[self.i].pos
            self.i += 1
            operands.append(self._check(self._expr(binding + 1), (_COND,), what))
        depth = self._depth(1 + max(o.depth for o in operands), pos)
        return _Logic(first.pos, depth, op, tuple(operands))

    def _compare(self, left: _Node) -> _Node:
        tok = self.tokens[self.i]
        self.i += 1
        what = f"{tok.text!r} compares values, not conditions"
        self._check(left, _VALUES, what)
        right = self._check(self._expr(_CMP + 1), _VALUES, what)
        if self._binding() == _CMP:
            raise self._unexpected(self.tokens[self.i], "comparisons cannot be chained: ")
        depth = self._depth(1 + max(left.depth, right.depth), tok.pos)
        return _Cmp(left.pos, depth, tok.value, left, right)

    def _arith(self, binding: int, left: _Node) -> _Node:
        tok = self.tokens[self.i]
        self.i += 1
        what = f"{tok.text!r} needs numbers or attributes"
        self._check(left, _NUMBERS, what)
        right = self._check(self._expr(binding + 1), _NUMBERS, what)
        depth = self._depth(1 + max(left.depth, right.depth), tok.pos)
        return _Arith(left.pos, depth, tok.value, left, right)

    def _prefix(self) -> _Node:
        tok = self.tokens[self.i]
        self.i += 1
        if tok.kind == "num":
            return _Num(tok.pos, 1, tok.value)
        if tok.kind == "str":
            return _Str(tok.pos, 1, tok.value)
        if tok.kind == "name":
            return _Attr(tok.pos, 1, tok.value)
        if tok.kind == "op" and tok.value in ("!", "-", "("):
            self.level += 1
            self._depth(self.level, tok.pos)
            try:
                return self._nested(tok)
            finally:
                self.level -= 1
        self.i -= 1
        raise self._expected("a value", tok)

    def _nested(self, tok: _Token) -> _Node:
        if tok.value == "!":
            what = "'!' needs a condition, e.g. !(A = 1)"
            operand = self._check(self._prefix(), (_COND,), what)
            return _Not(tok.pos, self._depth(operand.depth + 1, tok.pos), operand)
        if tok.value == "-":
            what = "'-' needs a number or an attribute"
            operand = self._check(self._prefix(), _NUMBERS, what)
            return _Neg(tok.pos, self._depth(operand.depth + 1, tok.pos), operand)
        inner = self._expr(_OR)
        close = self.tokens[self.i]
        if close.kind == "end":
            raise self._error("unclosed '('", tok.pos)
        if close.kind != "op" or close.value != ")":
            raise self._expected("')'", close)
        self.i += 1
        return replace(inner, pos=tok.pos, depth=self._depth(inner.depth + 1, tok.pos))


# --------------------------------------------------------------------------- values

_NUMERIC_TEXT = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*", re.ASCII)


def _parse_number(text: str) -> float | None:
    """A string's number if it is written as one (no "inf", "nan" or underscores)."""
    if _NUMERIC_TEXT.fullmatch(text):
        return float(text)
    return None


def _norm(value: Any) -> Scalar:
    """An attribute value as a comparable scalar: str, int, float, or None for "missing"."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return None


def _to_num(value: Any) -> float:
    """An attribute value for arithmetic: missing and non-numeric text count as 0."""
    v = _norm(value)
    if v is None:
        return 0.0
    if isinstance(v, str):
        n = _parse_number(v)
        return 0.0 if n is None else n
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _compare(op: CmpOp, x: Scalar, y: Scalar) -> bool:
    """Compare two scalars by the rules in the module docstring."""
    if x is None or y is None:
        return False
    x_text, y_text = isinstance(x, str), isinstance(y, str)
    if x_text == y_text:
        return bool(op(x, y))
    if isinstance(x, str):
        x = _parse_number(x)
    elif isinstance(y, str):
        y = _parse_number(y)
    if x is None or y is None:
        return op is operator.ne
    return bool(op(x, y))


def _as_text(value: int | float | str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value)


def _has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


def _wildcard(pattern: str) -> Callable[[str], bool]:
    """A matcher for a whole-value wildcard; plain prefix/suffix/infix shapes skip the regex."""
    if "?" not in pattern:
        inner = pattern.strip("*")
        if "*" not in inner:
            head, tail = pattern.startswith("*"), pattern.endswith("*")
            if head and tail:
                return lambda v: inner in v
            if tail:
                return lambda v: v.startswith(inner)
            if head:
                return lambda v: v.endswith(inner)
    parts = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in pattern)
    fullmatch = re.compile("".join(parts), re.DOTALL).fullmatch
    return lambda v: fullmatch(v) is not None


# --------------------------------------------------------------------------- compiler
#
# Numeric compilation yields a float constant or a closure returning float; conditions yield
# a bool constant or a closure returning bool, so constants fold all the way up.

_OPS_BY_NAME: dict[str, CmpOp] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_MIRROR = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def _as_fn(cond: bool | BoolFn) -> BoolFn:
    if isinstance(cond, bool):
        return _always_true if cond else lambda a: False
    return cond


def _nan_to_zero(fn: NumFn) -> NumFn:
    def rank(a: Attrs) -> float:
        r = fn(a)
        return r if r == r else 0.0

    return rank


def _attr_num(name: str) -> NumFn:
    def num(a: Attrs) -> float:
        v: Any = a.get(name)
        t = type(v)
        if t is float:
            return v  # type: ignore[no-any-return]
        if t is int:
            try:
                return float(v)
            except OverflowError:
                return math.inf if v > 0 else -math.inf
        return _to_num(v)

    return num


def _compile_num(node: _Node) -> float | NumFn:
    if isinstance(node, _Num):
        return node.value
    if isinstance(node, _Attr):
        return _attr_num(node.name)
    if isinstance(node, _Neg):
        if isinstance(node.operand, _Attr):
            return _attr_with_const(node.operand.name, "*", -1.0)  # exact negation
        inner = _compile_num(node.operand)
        if isinstance(inner, float):
            return -inner
        return lambda a: -inner(a)
    assert isinstance(node, _Arith)
    left, right, op = node.left, node.right, node.op
    if isinstance(left, _Num) and isinstance(right, _Attr) and op in ("+", "*"):
        left, right = right, left  # IEEE + and * commute exactly
    if isinstance(left, _Attr) and isinstance(right, _Num):
        return _attr_with_const(left.name, op, right.value)
    return _arith(op, _compile_num(left), _compile_num(right))


def _attr_with_const(name: str, op: str, k: float) -> NumFn:
    """``ATTR op k`` as one closure: the commonest rank shape (``FREE_MEM * 2``, ``-LOAD``)."""
    if op == "/" and k == 0.0:
        return lambda a: 0.0
    apply = _ARITH[op]

    def fused(a: Attrs) -> float:
        v: Any = a.get(name)
        t = type(v)
        if t is float or t is int:
            try:
                return apply(v, k)  # an int meets a float here, as float(v) would
            except OverflowError:
                pass
        return apply(_to_num(v), k)

    return fused


def _divide(x: float, y: float) -> float:
    return x / y if y else 0.0


def _arith(op: str, left: float | NumFn, right: float | NumFn) -> float | NumFn:
    if isinstance(left, float):
        if isinstance(right, float):
            return _ARITH[op](left, right)
        return _const_left(op, left, right)
    if isinstance(right, float):
        return _const_right(op, left, right)
    f, g = left, right
    if op == "+":
        return lambda a: f(a) + g(a)
    if op == "-":
        return lambda a: f(a) - g(a)
    if op == "*":
        return lambda a: f(a) * g(a)
    return lambda a: _divide(f(a), g(a))


def _const_left(op: str, c: float, g: NumFn) -> NumFn:
    if op == "+":
        return lambda a: c + g(a)
    if op == "-":
        return lambda a: c - g(a)
    if op == "*":
        return lambda a: c * g(a)
    return lambda a: _divide(c, g(a))


def _const_right(op: str, f: NumFn, k: float) -> NumFn:
    if op == "+":
        return lambda a: f(a) + k
    if op == "-":
        return lambda a: f(a) - k
    if op == "*":
        return lambda a: f(a) * k
    if k == 0.0:
        return lambda a: 0.0
    return lambda a: f(a) / k


_ARITH: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _divide,
}


def _compile_cond(node: _Node) -> bool | BoolFn:
    if isinstance(node, _Cmp):
        return _compile_cmp(node)
    if isinstance(node, _Not):
        inner = _compile_cond(node.operand)
        if isinstance(inner, bool):
            return not inner
        return lambda a: not inner(a)
    assert isinstance(node, _Logic)
    return _logic(node.op == "&", [_compile_cond(o) for o in node.operands])


def _logic(is_and: bool, parts: list[bool | BoolFn]) -> bool | BoolFn:
    # A constant that decides the chain decides it; the other constants drop out.
    if any(p is (not is_and) for p in parts):
        return not is_and
    fns = [p for p in parts if not isinstance(p, bool)]
    if not fns:
        return is_and
    if len(fns) == 1:
        return fns[0]
    if len(fns) == 2:
        f, g = fns
        if is_and:
            return lambda a: f(a) and g(a)
        return lambda a: f(a) or g(a)
    if len(fns) == 3:
        f, g, h = fns
        if is_and:
            return lambda a: f(a) and g(a) and h(a)
        return lambda a: f(a) or g(a) or h(a)
    chain = tuple(fns)
    if is_and:

        def all_of(a: Attrs) -> bool:
            for f in chain:  # noqa: SIM110 (a loop beats all() over a generator here)
                if not f(a):
                    return False
            return True

        return all_of

    def any_of(a: Attrs) -> bool:
        for f in chain:  # noqa: SIM110 (a loop beats any() over a generator here)
            if f(a):
                return True
        return False

    return any_of


def _compile_cmp(node: _Cmp) -> bool | BoolFn:
    op, left, right = node.op, node.left, node.right
    if isinstance(left, _Num | _Str) and not isinstance(right, _Num | _Str):
        op, left, right = _MIRROR[op], right, left  # the literal goes right
    if op in ("=", "!=") and isinstance(right, _Str) and _has_wildcard(right.value):
        return _wildcard_cmp(op == "=", left, right.value)
    if op in ("=", "!=") and isinstance(left, _Str) and _has_wildcard(left.value):
        return _wildcard_cmp(op == "=", right, left.value)
    fn = _OPS_BY_NAME[op]
    if isinstance(right, _Num | _Str):
        k: float | str = right.value
        if isinstance(left, _Num | _Str):
            return _compare(fn, left.value, k)
        if isinstance(left, _Attr):
            if isinstance(k, float):
                return _attr_vs_number(left.name, fn, k)
            return _attr_vs_text(left.name, fn, k)
    get_left, get_right = _scalar(left), _scalar(right)
    return lambda a: _compare(fn, get_left(a), get_right(a))


def _scalar(node: _Node) -> ValFn:
    if isinstance(node, _Num | _Str):
        value = node.value
        return lambda a: value
    if isinstance(node, _Attr):
        name = node.name
        return lambda a: _norm(a.get(name))
    num = _compile_num(node)
    if isinstance(num, float):
        const = num
        return lambda a: const
    return num


def _attr_vs_number(name: str, op: CmpOp, k: float) -> BoolFn:
    def cmp(a: Attrs) -> bool:
        v = a.get(name)
        t = type(v)
        if t is int or t is float:
            return op(v, k)
        return _compare(op, _norm(v), k)

    return cmp


def _attr_vs_text(name: str, op: CmpOp, k: str) -> BoolFn:
    def cmp(a: Attrs) -> bool:
        v = a.get(name)
        if type(v) is str:
            return op(v, k)
        return _compare(op, _norm(v), k)

    return cmp


def _wildcard_cmp(equal: bool, operand: _Node, pattern: str) -> bool | BoolFn:
    match = _wildcard(pattern)
    if isinstance(operand, _Num | _Str):
        return match(_as_text(operand.value)) == equal
    if isinstance(operand, _Attr):
        name = operand.name

        def attr_matches(a: Attrs) -> bool:
            v = a.get(name)
            if type(v) is not str:
                v = _norm(v)
                if v is None:
                    return False
                v = _as_text(v)
            return match(v) == equal

        return attr_matches
    num = _compile_num(operand)
    if isinstance(num, float):
        return match(_as_text(num)) == equal
    fn = num
    return lambda a: match(_as_text(fn(a))) == equal

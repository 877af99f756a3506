"""The bounded Jinja2 sandbox the template stage renders with (agents/template.py).

Jinja2's immutable sandbox keeps a template away from Python's internals but not from the event
loop's time or the worker's memory: `{{ 'a' * 10**9 }}`, a huge `range` or nested loops would block
the worker or get it killed, and every worker that took the partition over would die on the same
message. This sandbox bounds them:

- `call_binop` estimates `*`, `**`, `%` and `+` before they run, and checks their results;
- `call` checks the str/int methods that can grow their input, and every filter is wrapped;
- a code generator subclass adds the hooks Jinja2 lacks: each loop iteration, `~`, literals,
  comparisons, slices and text printed inside loops spend from the part's budget;
- the render's CPU time is checked against `template_max_render_ms`.

A bound broken raises TemplateLimit, naming it. It relies on Jinja2's code generator internals
(`CodeGenerator` visitors, `optimizeconst`): tests/unit/test_template_limits.py must pass on any
upgrade of Jinja2.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import time
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jinja2 import StrictUndefined, Template, nodes
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.runtime import Macro, markup_join, str_join
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, generate_lorem_ipsum
from markupsafe import Markup


if TYPE_CHECKING:
    from streams.settings import Settings

# A part may build this many times its output limit in all (strings, lists, output), intermediate
# values included: enough for any real notification, and a bound on what a loop can allocate.
BUILD_FACTOR = 16
# Integers a template computes: Python prints at most 4300 digits (about 14,284 bits) anyway.
MAX_INT_BITS = 14_000
# round(x, n) computes 10**n.
MAX_ROUND_DIGITS = 1000


class TemplateLimit(Exception):
    """Raised inside a render when it would break a bound; the message says which."""


@dataclass(frozen=True)
class Limits:
    """The bounds of a render (streams/settings.py `template_*`)."""

    max_output_bytes: int = 256 * 1024
    max_render_ms: float = 100.0
    max_range: int = 10_000

    @classmethod
    def of(cls, settings: Settings) -> Limits:
        return cls(settings.template_max_output_bytes, settings.template_max_render_ms, settings.template_max_range)


DEFAULT_LIMITS = Limits()


class Budget:
    """The bounds of the render in progress, and what it has used so far.

    There is one, module-wide: renders never overlap, because the template stage renders
    synchronously on its event loop's thread and nothing else renders.

    Time is the rendering thread's CPU time, so that a worker descheduled or throttled (a
    container's CPU limit) in the middle of a render does not reject a good template. Reading the
    thread's CPU clock is a system call (~0.25 µs), so renders check the wall clock (~0.04 µs), and
    the CPU clock only once the wall clock passed the deadline (`overdue`). Its reading at the start
    of a render is not taken either: it is bounded by a reading taken at most a quarter of the limit
    earlier plus the wall time since (the CPU clock cannot run faster than the wall clock), so a
    render is refused once it used the limit, or at most 1.25 times it.
    """

    __slots__ = ("limits", "deadline", "cpu_start", "cpu_mark", "wall_mark", "built", "max_text", "max_items",
                 "max_built")

    def __init__(self) -> None:
        self.cpu_mark, self.wall_mark = _cpu(), _clock()
        self.idle()

    def idle(self) -> None:
        """Outside a render (compiling: constant folding may call filters): bounds, but no clock."""
        self.begin(DEFAULT_LIMITS)
        self.deadline = math.inf

    def begin(self, limits: Limits) -> None:
        """A notification's render starts: its parts share the time limit."""
        if limits is not getattr(self, "limits", None):
            self.limits = limits
            self.max_text = limits.max_output_bytes
            self.max_items = limits.max_range
            self.max_built = BUILD_FACTOR * limits.max_output_bytes
        self.built = 0
        now = _clock()
        seconds = limits.max_render_ms / 1000
        if now - self.wall_mark > seconds / 4:
            self.cpu_mark, self.wall_mark = _cpu(), now
        self.cpu_start = self.cpu_mark + (now - self.wall_mark)  # at least the CPU clock now
        self.deadline = now + seconds

    def tick(self) -> None:
        if _clock() > self.deadline:
            self.overdue()

    def overdue(self) -> None:
        """Past the wall-clock deadline: refuse if the thread spent the time rendering, else move
        the deadline by the CPU time left."""
        left = self.limits.max_render_ms / 1000 - (_cpu() - self.cpu_start)
        if left <= 0:
            raise TemplateLimit(f"rendering took more than {self.limits.max_render_ms:g} ms of CPU "
                                f"(template_max_render_ms)")
        self.deadline = _clock() + left

    def fits(self, size: int, what: str) -> None:
        """A string or value of `size` characters (as text) is about to be built, or was."""
        if size > self.max_text:
            raise TemplateLimit(f"{what}: {size:,} characters or more, over {self.max_text:,} "
                                f"(template_max_output_bytes)")

    def count(self, items: int, what: str) -> None:
        if items > self.max_items:
            raise TemplateLimit(f"{what}: {items:,} items, over {self.max_items:,} (template_max_range)")

    def spend(self, size: int) -> None:
        self.built += size
        if self.built > self.max_built:
            raise TemplateLimit(f"the part built more than {self.max_built:,} characters in all "
                                f"({BUILD_FACTOR} × template_max_output_bytes)")


_clock = time.monotonic
_cpu = time.thread_time
BUDGET = Budget()

# --- How big a value is as text ------------------------------------------------------------------

_VIEWS = (type({}.keys()), type({}.values()), type({}.items()))
_NUMBERS = frozenset({float, bool, type(None), complex})


def weight(value: Any, limit: int, indent: int = 0) -> int:
    """About len(str(value)), or with `indent` the length pretty-printed (pprint, tojson); counts
    stop soon after `limit`. An object held many times counts each time, as str() prints it: a
    list of itself doubled forty times weighs 2**40, and is weighed in forty steps."""
    if type(value) is str or type(value) is Markup:
        return len(value)
    try:
        return _weigh(value, limit, {}, indent, 0)
    except RecursionError:
        raise TemplateLimit("values nested too deeply") from None


def _weigh(value: Any, limit: int, seen: dict[Any, int], indent: int, depth: int) -> int:
    if isinstance(value, str):
        return len(value) + 2
    kind = type(value)
    if kind is int:
        return value.bit_length() // 3 + 2
    if kind in _NUMBERS:
        return 24
    if isinstance(value, (bytes, bytearray)):
        return 4 * len(value) + 3
    if isinstance(value, dict):
        items: Iterable[Any] = itertools.chain.from_iterable(value.items())
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = value
    elif isinstance(value, Namespace):
        items = itertools.chain.from_iterable(value._Namespace__attrs.items())  # type: ignore[attr-defined]
    elif isinstance(value, _VIEWS):
        items = itertools.chain.from_iterable(value.mapping.items())  # type: ignore[union-attr]
    else:  # functions, macros, loops, ranges, generators, undefined: a short repr (or an error)
        return 64
    key = (id(value), depth) if indent else id(value)
    known = seen.get(key)
    if known is not None:
        return known
    seen[key] = 0  # a namespace that holds itself prints as {...}
    step = 2 + (indent * (depth + 1) + 1 if indent else 0)
    total = 16
    for item in items:
        total += _weigh(item, limit, seen, indent, depth + 1) + step
        if total > limit:
            break
    seen[key] = total
    return total


def _check_int(value: int, what: str) -> None:
    if value.bit_length() > MAX_INT_BITS:
        raise TemplateLimit(f"{what}: an integer of {value.bit_length():,} bits, over {MAX_INT_BITS:,}")


def _check_value(value: Any, what: str) -> None:
    """After an operation: its result within the bounds, and counted as built."""
    budget = BUDGET
    if isinstance(value, (str, bytes)):
        size = len(value)
        if size > budget.max_text:
            budget.fits(size, what)
        budget.built += size
        if budget.built > budget.max_built:
            budget.spend(0)
    elif type(value) is int:
        _check_int(value, what)
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        budget.count(len(value), what)
        budget.fits(weight(value, budget.max_text), what)
        budget.spend(8 * len(value) + 56)
    elif isinstance(value, Namespace):
        budget.fits(weight(value, budget.max_text), what)


# --- Estimates before an operation that can build far more than it reads -------------------------

def _arg(args: tuple, kwargs: Mapping[str, Any], index: int, name: str, default: Any = None) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


_PERCENT = re.compile(r"%(\([^)]*\))?[#0 +-]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)", re.S)


def _number(digits: str) -> int:
    return int(digits) if len(digits) < 10 else 10**10


def _percent_size(fmt: str, values: Any) -> int:
    """At most how long `fmt % values` is (also the `format` filter)."""
    budget = BUDGET
    fields, widths, star = 0, 0, False
    for match in _PERCENT.finditer(fmt):
        if match[4] == "%":
            continue
        fields += 1
        for spec in (match[2], match[3]):
            if spec == "*":
                star = True
            elif spec:
                widths += _number(spec)
    if isinstance(values, Mapping):  # each %(key)s may name the same value
        items = list(values.values())
        printed = fields * max((weight(v, budget.max_text) for v in items), default=0)
    else:
        items = list(values) if isinstance(values, tuple) else [values]
        printed = sum(weight(v, budget.max_text) for v in items)
    size = len(fmt) + widths + 32 * fields + printed
    if star:  # widths taken from the values
        size += sum(abs(v) for v in items if isinstance(v, int))
    return size


def _check_text(what: str, value: Any, *args: Any, **kwargs: Any) -> None:
    """Filters that read their value as text."""
    BUDGET.fits(weight(value, BUDGET.max_text), what)


def _check_items(what: str, value: Any, *args: Any, **kwargs: Any) -> None:
    """Filters that build a list of their value's items (or sort or compare them)."""
    if hasattr(value, "__len__"):
        BUDGET.count(len(value), what)


def _check_center(what: str, value: Any, width: Any = 80) -> None:
    size = weight(value, BUDGET.max_text)
    BUDGET.fits(max(size, width) if isinstance(width, int) else size, what)


def _check_indent(what: str, s: Any, width: Any = 4, first: bool = False, blank: bool = False) -> None:
    size = weight(s, BUDGET.max_text)
    lines = s.count("\n") + 1 if isinstance(s, str) else size
    step = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    BUDGET.fits(size + lines * max(step, 0), what)


def _check_wordwrap(what: str, s: Any, width: Any = 79, break_long_words: bool = True, wrapstring: Any = None,
                    break_on_hyphens: bool = True) -> None:
    size = weight(s, BUDGET.max_text)
    BUDGET.fits(size, what)
    if isinstance(width, int) and width > 0:
        # Two consecutive lines of a paragraph hold more than `width`. textwrap cuts a long word
        # into lines in time that grows with its length times its lines: bound the lines.
        wrapped = 2 * size // width + 1
        BUDGET.count(wrapped, f"{what} (lines)")
        lines = wrapped + (s.count("\n") if isinstance(s, str) else size)
        BUDGET.fits(size + lines * (len(wrapstring) if isinstance(wrapstring, str) else 1), what)


def _check_join(what: str, value: Any, d: Any = "", attribute: Any = None) -> list:
    items = value if isinstance(value, list) else list(value)
    separator = weight(d, BUDGET.max_text)
    BUDGET.fits(weight(items, BUDGET.max_text) + max(len(items) - 1, 0) * separator, what)
    return items


def _check_replace(what: str, s: Any, old: Any, new: Any, count: Any = None) -> None:
    size = weight(s, BUDGET.max_text)
    BUDGET.fits(size, what)
    if isinstance(s, str) and isinstance(old, str):
        found = s.count(old) if old else len(s) + 1
    else:
        found = size + 1
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    BUDGET.fits(size + found * weight(new, BUDGET.max_text), what)


def _check_format(what: str, value: Any, *args: Any, **kwargs: Any) -> None:
    BUDGET.fits(weight(value, BUDGET.max_text), what)
    BUDGET.fits(_percent_size(str(value), kwargs or args), what)


def _check_batch(what: str, value: Any, linecount: Any, fill_with: Any = None) -> None:
    if isinstance(linecount, int):
        BUDGET.count(linecount, what)


def _check_round(what: str, value: Any, precision: Any = 0, method: str = "common") -> None:
    if isinstance(precision, int) and abs(precision) > MAX_ROUND_DIGITS:
        raise TemplateLimit(f"{what}: {precision:,} digits, over {MAX_ROUND_DIGITS:,}")


def _check_urlize(what: str, value: Any, trim_url_limit: Any = None, nofollow: bool = False, target: Any = None,
                  rel: Any = None, extra_schemes: Any = None) -> None:
    size = weight(value, BUDGET.max_text)
    BUDGET.fits(size, what)
    # Every link has a '.', '@' or ':', and gets the target and rel attributes.
    links = value.count(".") + value.count("@") + value.count(":") if isinstance(value, str) else size
    extra = 64 + weight(target or "", BUDGET.max_text) + weight(rel or "", BUDGET.max_text)
    BUDGET.fits(size + links * extra, what)


def _check_pprint(what: str, value: Any) -> None:
    BUDGET.fits(weight(value, BUDGET.max_text, indent=1), what)


def _check_tojson(what: str, value: Any, indent: Any = None) -> None:
    step = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    BUDGET.fits(weight(value, BUDGET.max_text, indent=max(step, 0)), what)


FILTER_CHECKS: dict[str, Callable[..., Any] | None] = {
    # Nothing to estimate: they read no text, or their result is checked after (a list, an int).
    **dict.fromkeys(["abs", "attr", "count", "d", "default", "filesizeformat", "first", "float", "int", "items",
                     "last", "length", "map", "random", "reject", "rejectattr", "reverse", "select", "selectattr"]),
    **dict.fromkeys(["dictsort", "groupby", "list", "max", "min", "sort", "sum", "unique"], _check_items),
    "batch": _check_batch, "slice": _check_batch, "center": _check_center, "format": _check_format,
    "indent": _check_indent, "join": _check_join, "pprint": _check_pprint, "replace": _check_replace,
    "round": _check_round, "tojson": _check_tojson, "urlize": _check_urlize, "wordwrap": _check_wordwrap,
}  # any other filter reads its value as text (_check_text)


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """The filter, with its estimate checked before it runs and its result after."""
    # Filters marked pass_context/pass_eval_context/pass_environment take that first.
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0
    check = FILTER_CHECKS.get(name, _check_text)
    what = f"|{name}"

    text = check is _check_text

    @functools.wraps(func)  # keeps jinja_pass_arg
    def guarded(*args: Any, **kwargs: Any) -> Any:
        budget = BUDGET
        if _clock() > budget.deadline:
            budget.overdue()
        if check is not None and len(args) > skip:
            # A string grows at most a few times under a text filter: its result is checked below.
            if not (text and isinstance(args[skip], str)):
                replaced = check(what, *args[skip:], **kwargs)
                if replaced is not None:  # an iterator the check had to read
                    args = (*args[:skip], replaced, *args[skip + 1:])
        result = func(*args, **kwargs)
        if type(result) is str or type(result) is Markup:  # _check_value, inlined for the usual case
            budget.built += len(result)
            if len(result) > budget.max_text or budget.built > budget.max_built:
                budget.fits(len(result), what)
                budget.spend(0)
        else:
            _check_value(result, what)
        return result

    return guarded


def _timed_test(func: Callable[..., Any]) -> Callable[..., Any]:
    """A test (`x is lower`): cheap, but a template may repeat one on a long string many times."""

    @functools.wraps(func)  # keeps jinja_pass_arg
    def timed(*args: Any, **kwargs: Any) -> Any:
        if _clock() > BUDGET.deadline:
            BUDGET.overdue()
        return func(*args, **kwargs)

    return timed


def _method_width(owner: Any, name: str, args: tuple, kwargs: dict[str, Any]) -> tuple:
    width = _arg(args, kwargs, 0, "width", 0)
    if isinstance(owner, (str, bytes)) and isinstance(width, int):
        BUDGET.fits(max(len(owner), width), f"{name}()")
    return args


def _method_expandtabs(owner: Any, name: str, args: tuple, kwargs: dict[str, Any]) -> tuple:
    tabsize = _arg(args, kwargs, 0, "tabsize", 8)
    if isinstance(owner, (str, bytes)) and isinstance(tabsize, int):
        tabs = owner.count("\t" if isinstance(owner, str) else b"\t")
        BUDGET.fits(len(owner) + tabs * max(tabsize, 0), f"{name}()")
    return args


def _method_replace(owner: Any, name: str, args: tuple, kwargs: dict[str, Any]) -> tuple:
    old, new, count = _arg(args, kwargs, 0, "old"), _arg(args, kwargs, 1, "new"), _arg(args, kwargs, 2, "count")
    if isinstance(owner, str) and isinstance(old, str) or isinstance(owner, bytes) and isinstance(old, bytes):
        found = owner.count(old) if old else len(owner) + 1
        if isinstance(count, int) and count >= 0:
            found = min(found, count)
        BUDGET.fits(len(owner) + found * weight(new, BUDGET.max_text), f"{name}()")
    return args


def _method_join(owner: Any, name: str, args: tuple, kwargs: dict[str, Any]) -> tuple:
    if not (isinstance(owner, (str, bytes)) and args):
        return args
    items = args[0] if isinstance(args[0], list) else list(args[0])  # an iterator is read once, here
    BUDGET.fits(weight(items, BUDGET.max_text) + max(len(items) - 1, 0) * len(owner), f"{name}()")
    return (items, *args[1:])


def _method_translate(owner: Any, name: str, args: tuple, kwargs: dict[str, Any]) -> tuple:
    if isinstance(owner, str) and args and isinstance(args[0], Mapping):
        longest = max((weight(v, BUDGET.max_text) for v in args[0].values()), default=1)
        BUDGET.fits(len(owner) * max(longest, 1), f"{name}()")
    return args


def _method_to_bytes(owner: Any, name: str, args: tuple, kwargs: dict[str, Any]) -> tuple:
    length = _arg(args, kwargs, 0, "length", 1)
    if isinstance(owner, int) and isinstance(length, int):
        BUDGET.fits(length, f"{name}()")
    return args


def _method_escape(owner: Any, name: str, args: tuple, kwargs: dict[str, Any]) -> tuple:
    if owner is Markup and args:  # Markup.escape(value) prints the value
        BUDGET.fits(weight(args[0], BUDGET.max_text), f"{name}()")
    return args


def _method_fromkeys(owner: Any, name: str, args: tuple, kwargs: dict[str, Any]) -> tuple:
    if not (isinstance(owner, type) and args):
        return args
    items = list(args[0])
    BUDGET.count(len(items), f"{name}()")
    return (items, *args[1:])


# Methods of strings, bytes and ints (and dict.fromkeys) that can build far more than they read,
# checked before they run; any result is checked after.
METHOD_CHECKS: dict[str, Callable[[Any, str, tuple, dict[str, Any]], tuple]] = {
    **dict.fromkeys(["center", "ljust", "rjust", "zfill"], _method_width),
    "expandtabs": _method_expandtabs, "replace": _method_replace, "join": _method_join,
    "translate": _method_translate, "to_bytes": _method_to_bytes, "escape": _method_escape,
    "fromkeys": _method_fromkeys,
}


def _check_args(args: tuple, kwargs: dict[str, Any], what: str) -> None:
    """A macro's varargs and kwargs are built from its call's arguments: weigh them together, or a
    macro that calls itself with its varargs twice would double them at every level."""
    budget = BUDGET
    size = 0
    for value in itertools.chain(args, kwargs.values()):
        if not (type(value) is str or type(value) is Markup):
            size += weight(value, budget.max_text)
    budget.fits(size, what)


# --- Code generation: hooks Jinja2 has not --------------------------------------------------------

def _literal(node: nodes.Expr) -> bool:
    """A list, tuple or dict of constants only: bounded by the source."""
    return all(isinstance(child, (nodes.Const, nodes.List, nodes.Tuple, nodes.Dict, nodes.Pair))
               for child in node.find_all(nodes.Node))


class BoundedCodeGenerator(CodeGenerator):
    """Jinja2's compiler, with calls into the Sandbox where Jinja2 has no hook: every round of a
    loop (guard_loop), the template's own text printed inside a loop (spend_text), comparisons and
    slices (the clock), `~` (join_values) and list, tuple and dict literals (guard_literal)."""

    loops = 0  # how many loops the code being written is in

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        # Jinja2 allows no node types of its own: the loop's iterable goes into a Call marked as ours.
        if not getattr(node.iter, "loop_guard", False):
            guard = nodes.Call(nodes.EnvironmentAttribute("guard_loop"), [node.iter], [], None, None,
                               lineno=node.iter.lineno)
            guard.loop_guard = True
            node.iter = guard
        self.loops += 1
        try:
            super().visit_For(node, frame)
        finally:
            self.loops -= 1

    def visit_Output(self, node: nodes.Output, frame: Frame) -> None:
        # Text between tags is printed again at every round of a loop: count it as it is printed.
        text = sum(len(child.data) for child in node.nodes if isinstance(child, nodes.TemplateData))
        if self.loops and text:
            self.writeline(f"environment.spend_text({text})")
        super().visit_Output(node, frame)

    # A comparison takes time with the length of a string and has no hook of its own.
    def visit_Compare(self, node: nodes.Compare, frame: Frame) -> None:
        self.write("(environment.tick() or ")
        super().visit_Compare(node, frame)
        self.write(")")

    # Neither does a slice, which copies: `x[1:]` of a long string, kept under many names, adds up.
    def visit_Getitem(self, node: nodes.Getitem, frame: Frame) -> None:
        if not isinstance(node.arg, nodes.Slice):
            super().visit_Getitem(node, frame)
            return
        self.write("environment.guard_slice(")
        super().visit_Getitem(node, frame)
        self.write(")")

    def visit_Call(self, node: nodes.Call, frame: Frame, **kwargs: Any) -> None:
        if getattr(node, "loop_guard", False):  # a direct call, not through the sandbox's call()
            self.write("environment.guard_loop(")
            self.visit(node.args[0], frame)
            self.write(")")
        else:
            super().visit_Call(node, frame, **kwargs)

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_values(context.eval_ctx, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")

    def weighed_literal(self, visit: Callable[[Any, Frame], None], node: nodes.Expr, frame: Frame) -> None:
        if _literal(node):
            visit(node, frame)
            return
        self.write("environment.guard_literal(")
        visit(node, frame)
        self.write(")")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.weighed_literal(super().visit_List, node, frame)

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.weighed_literal(super().visit_Dict, node, frame)

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # an assignment target
            super().visit_Tuple(node, frame)
        else:
            self.weighed_literal(super().visit_Tuple, node, frame)


# --- The environment ---------------------------------------------------------------------------------

def _finalize(value: Any) -> Any:
    """Every {{ expression }}, before it is printed: counted, and weighed unless it is a string."""
    budget = BUDGET
    kind = type(value)
    if kind is str or kind is Markup:  # HTML escapes it into a new string, up to 6 times longer
        size = len(value)
    elif kind is int:
        size = value.bit_length() // 3 + 2
    else:
        size = weight(value, budget.max_text)
        budget.fits(size, "printing a value")
    budget.built += size
    if budget.built > budget.max_built:
        budget.spend(0)
    return value


def _range(*args: Any) -> range:
    numbers = range(*args)
    try:
        items = len(numbers)
    except OverflowError:
        items = abs(numbers.stop - numbers.start) // abs(numbers.step)
    BUDGET.count(items, "range()")
    return numbers


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 (Jinja's names)
    if isinstance(n, int) and isinstance(max, int):
        BUDGET.count(n, "lipsum()")
        BUDGET.fits(n * max * 16, "lipsum()")
    return generate_lorem_ipsum(n, html, min, max)


class _BoundedFormat:
    """str.format in a template: each field's width and value weighed before it is formatted."""

    size = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self.size = len(format_string)
        return super().vformat(format_string, args, kwargs)  # type: ignore[misc]

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion:  # !r, !s, !a print the value before format_field sees it
            BUDGET.fits(weight(value, BUDGET.max_text), "format()")
        return super().convert_field(value, conversion)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        widest = max(map(_number, re.findall(r"\d+", format_spec)), default=0)
        self.size += max(weight(value, BUDGET.max_text), widest)
        BUDGET.fits(self.size, "format()")
        return super().format_field(value, format_spec)  # type: ignore[misc]


class _Formatter(_BoundedFormat, SandboxedFormatter):
    pass


class _EscapeFormatter(_BoundedFormat, SandboxedEscapeFormatter):
    pass


_METHODS = (types.BuiltinMethodType, types.MethodType)  # bound methods: of a str, a Markup, an int…


class Sandbox(ImmutableSandboxedEnvironment):
    """Jinja2's immutable sandbox, bounded by the module's Budget (see the module's docstring).

    - Before an operation that can build far more than it reads (`*`, `**`, `%`, str.format, the
      filters and methods in FILTER_CHECKS and METHOD_CHECKS, range(), lipsum()), its estimate is
      checked; after any operator, call, filter, `~` or list/tuple/dict literal, its result is
      (`_check_value`): strings and values as text within the output bound, lists within the item
      bound, integers within MAX_INT_BITS, and everything built counted towards BUILD_FACTOR × the
      output bound. Values are weighed as text (`weight`), so a list holding itself 2**40 times
      over is refused in 40 steps rather than printed.
    - Loops (every round), calls, filters, tests, comparisons, slices, operators and literals check
      the clock (BoundedCodeGenerator adds the hooks Jinja2 lacks).
    - Every printed expression, and a loop's own text at every round, counts towards what the part
      built, and the output is checked before it is returned.
    """

    intercepted_binops = frozenset({"+", "*", "**", "%"})
    code_generator_class = BoundedCodeGenerator

    def __init__(self, html: bool) -> None:
        super().__init__(autoescape=html, undefined=StrictUndefined, finalize=_finalize)
        self.globals["range"] = _range
        self.globals["lipsum"] = _lipsum
        self.filters = {name: _guard_filter(name, func) for name, func in self.filters.items()}
        self.tests = {name: _timed_test(func) for name, func in self.tests.items()}
        self.tick = BUDGET.tick

    def concat(self, chunks: Iterable[str]) -> str:  # type: ignore[override]
        """The output of a part, a macro, a block or a {% set %} block. Joining it cannot allocate
        without bound: every printed expression, and the text printed inside loops, counted towards
        what the part built (_finalize, spend_text), and the rest is the template's own text."""
        output = "".join(chunks)
        if len(output) > BUDGET.max_text:
            raise TemplateLimit(f"output of {len(output):,} characters, over {BUDGET.max_text:,} "
                                f"(template_max_output_bytes)")
        return output

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        BUDGET.tick()
        what = f"'{operator}'"
        if operator == "*":
            if isinstance(left, int) and isinstance(right, (str, bytes, list, tuple)):
                left, right = right, left
            if isinstance(right, int) and isinstance(left, (str, bytes, list, tuple)) and right > 0 and left:
                if not isinstance(left, (str, bytes)):
                    BUDGET.count(len(left) * right, what)
                BUDGET.fits(weight(left, BUDGET.max_text) * right, what)
        elif operator == "**":
            if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
                if right > MAX_INT_BITS or right * math.log2(abs(left)) > MAX_INT_BITS:
                    raise TemplateLimit(f"{what}: an integer of more than {MAX_INT_BITS:,} bits")
        elif operator == "%" and isinstance(left, str):
            BUDGET.fits(_percent_size(left, right), what)
        result = self.binop_table[operator](left, right)
        _check_value(result, what)
        return result

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 (Jinja's names)
        budget = BUDGET
        if _clock() > budget.deadline:
            budget.overdue()
        if type(__obj) is Macro:  # its output was counted as it was printed
            what = f"{__obj.name}()"
            _check_args(args, kwargs, f"the arguments of {what}")
            result = super().call(__context, __obj, *args, **kwargs)
            budget.fits(weight(result, budget.max_text), what)
            return result
        if type(__obj) in _METHODS:
            check = METHOD_CHECKS.get(__obj.__name__)
            if check is not None:
                args = check(__obj.__self__, __obj.__name__, args, kwargs)
        result = super().call(__context, __obj, *args, **kwargs)
        if type(result) is str:  # _check_value, inlined for the usual case
            budget.built += len(result)
            if len(result) > budget.max_text or budget.built > budget.max_built:
                _check_value(result, f"{getattr(__obj, '__name__', 'a call')}()")
        elif isinstance(result, (str, bytes, int, list, tuple, dict, Namespace)):  # Markup, bytes, …
            _check_value(result, f"{getattr(__obj, '__name__', 'a call')}()")
        return result

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja2's own, with formatters that weigh each field (see _BoundedFormat)."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or value.__name__ not in (
                "format", "format_map"):
            return None
        f_self: Any = value.__self__
        if not isinstance(f_self, str):
            return None
        str_type: type[str] = type(f_self)
        is_format_map = value.__name__ == "format_map"
        formatter: SandboxedFormatter
        if isinstance(f_self, Markup):
            formatter = _EscapeFormatter(self, escape=f_self.escape)
        else:
            formatter = _Formatter(self)
        vformat = formatter.vformat

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs = args[0]
                args = ()
            return str_type(vformat(f_self, args, kwargs))

        return functools.update_wrapper(wrapper, value)

    def guard_loop(self, iterable: Iterable[Any]) -> Iterable[Any]:
        """A {% for %} loop's iterable: the clock checked at every round."""
        budget, clock = BUDGET, _clock
        deadline = budget.deadline
        for item in iterable:
            if clock() > deadline:
                budget.overdue()
                deadline = budget.deadline
            yield item

    def spend_text(self, size: int) -> None:
        budget = BUDGET
        budget.built += size
        if budget.built > budget.max_built:
            budget.spend(0)

    def guard_literal(self, value: Any) -> Any:
        BUDGET.tick()
        _check_value(value, "a literal")
        return value

    def guard_slice(self, value: Any) -> Any:
        BUDGET.tick()
        _check_value(value, "a slice")
        return value

    def join_values(self, eval_ctx: Any, values: tuple) -> str:
        """`a ~ b`."""
        BUDGET.tick()
        BUDGET.fits(sum(weight(value, BUDGET.max_text) for value in values), "'~'")
        result = markup_join(values) if eval_ctx.autoescape else str_join(values)
        _check_value(result, "'~'")
        return result


PLAIN = Sandbox(html=False)
HTML = Sandbox(html=True)


def render_bounded(template: Template, variables: dict[str, Any], limits: Limits) -> str:
    BUDGET.built = 0  # the time limit is the notification's, the others each part's
    # Template.render(variables), without its copy of the variables (new_context makes one) and
    # without the traceback rewriting for debuggers. Joining cannot allocate without bound (see
    # Sandbox.concat); the size is checked right after, in bytes.
    output = "".join(template.root_render_func(template.new_context(variables)))
    size = len(output) if output.isascii() else len(output.encode())
    if size > limits.max_output_bytes:
        raise TemplateLimit(f"output of {size:,} bytes, over {limits.max_output_bytes:,} "
                            f"(template_max_output_bytes)")
    return output

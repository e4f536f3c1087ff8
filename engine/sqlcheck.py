"""The SQL of a job's ``select.query``: proven read-only and well-named before it runs.

``check_query`` parses the text with sqlglot (SQLite dialect) and refuses, with the position
inside the job file:

* anything but exactly one statement;
* anything but a read-only query (SELECT, WITH ... SELECT, UNION / INTERSECT / EXCEPT);
* tables and columns the archive's schema does not have (every scope is walked: sqlglot's
  ``qualify`` alone lets an unknown joined table through);
* functions outside an allow-list (no ``load_extension``, ``readfile``, ``writefile`` ...);
* a result without a ``SeriesInst`` (series level) or ``SOPInstanc`` (instance level) column
  (``require_column=False`` for ``conquest-run query``);
* nesting deeper than ``MAX_NESTING`` parentheses; a recursive CTE, unless its own SELECT ends
  in a literal ``LIMIT`` of at most ``MAX_RECURSIVE_ROWS`` rows; a ``printf``/``format`` whose
  format is not a string literal or asks for a ``*`` or multi-digit width or precision.

``run_query`` / ``query_column`` are the second wall: the query runs on a read-only connection
whose SQLite authorizer allows only SELECT, reading, and the allow-listed functions, bounded by
``QueryLimits`` (wall time and SQLite VM steps through the progress handler, result rows; the
reader connections of ``db`` cap every value at ``db.MAX_VALUE_BYTES``).
"""

from __future__ import annotations

__all__ = ["CheckedQuery", "check_query", "run_query", "query_column", "authorizer",
           "ALLOWED_FUNCTIONS", "SERIES_COLUMN", "INSTANCE_COLUMN", "QueryLimits",
           "DEFAULT_QUERY_TIMEOUT", "limited"]

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .errors import SqlCheckError
from .sqlrun import (ALLOWED_FUNCTIONS, DEFAULT_QUERY_TIMEOUT, QueryLimits, authorizer, limited,
                     query_column, run_query)

SERIES_COLUMN = "SeriesInst"
INSTANCE_COLUMN = "SOPInstanc"

# sqlglot's classes for those functions (it parses many into typed nodes).
_ALLOWED_NODES = frozenset("""
Abs Avg Count GroupConcat Max Min Sum Coalesce If Nullif Typeof Length Lower Upper Trim Substring
Replace StrPosition Chr Unicode Hex Concat ConcatWs Format Soundex Round Sign Trunc Floor Ceil Exp
Ln Log Pow Sqrt Mod Pi Rand Date TimeToStr StrToTime TsOrDsToTimestamp TsOrDsToDate
UnixToTime TimeStrToTime CurrentDate CurrentTime CurrentTimestamp
RowNumber Rank DenseRank PercentRank CumeDist Ntile Lag Lead FirstValue LastValue NthValue
Cast TryCast Case Least Greatest Left Right JSONExtract JSONExtractScalar ParseJSON
ArrayLength Like Glob Anonymous Collate Cbrt Quantile DateStrToDate Upper
""".split())

MAX_NESTING = 64               # parentheses; sqlglot recurses once per level
MAX_RECURSIVE_ROWS = 10_000   # the largest literal LIMIT a recursive CTE may have
_BAD_ROOT_WORDS = {"insert", "update", "delete", "replace", "pragma", "attach", "detach",
                   "create", "drop", "alter", "vacuum", "reindex", "analyze", "begin", "commit",
                   "rollback", "savepoint", "release", "explain", "end"}


@dataclass(frozen=True)
class CheckedQuery:
    sql: str
    level: str             # "series" or "instance"
    column: str            # the output column naming the series / instances, as written
    columns: tuple[str, ...]  # every output column (lower case as sqlglot names them)
    tables: tuple[str, ...]


@contextmanager
def _quiet_sqlglot() -> Iterator[None]:
    log = logging.getLogger("sqlglot")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


class _Checker:
    def __init__(self, sql: str, schema, file: str | None, line: int, col: int,
                 locate: Callable[[int], tuple[int, int]] | None) -> None:
        self.sql = sql
        self.file = file
        self.line = line
        self.col = col
        self.locate = locate
        self.tables = {t.lower(): (t, {c.lower(): c for c in cols})
                       for t, cols in schema.sqlglot_schema().items()}
        self.sqlglot_schema = schema.sqlglot_schema()
        self.schema_source = getattr(schema, "source", "dicom.sql")

    # -- locations --------------------------------------------------------------------------
    def error(self, message: str, offset: int | None = 0) -> SqlCheckError:
        offset = 0 if offset is None else offset
        if self.locate is not None:
            line, col = self.locate(offset)
        else:
            before = self.sql[:offset]
            nl = before.count("\n")
            line = self.line + nl
            col = (self.col + offset) if nl == 0 else (offset - before.rfind("\n"))
        return SqlCheckError(message, file=self.file, line=line, column=col)

    def offset_of(self, node) -> int | None:
        meta = getattr(node, "meta", None) or {}
        if "start" in meta:
            return meta["start"]
        this = node.args.get("this") if hasattr(node, "args") else None
        if this is not None and hasattr(this, "meta") and "start" in (this.meta or {}):
            return this.meta["start"]
        starts = [n.meta["start"] for n in node.walk() if n is not node and "start" in (n.meta or {})]
        return min(starts) if starts else None

    def line_col_offset(self, line: int, col_end: int, length: int) -> int:
        lines = self.sql.split("\n")
        base = sum(len(x) + 1 for x in lines[:max(0, line - 1)])
        return max(0, base + col_end - length)

    # -- the checks --------------------------------------------------------------------------
    def first_token_offset(self) -> int:
        m = re.search(r"\S", self.sql)
        return m.start() if m else 0

    def parse(self):
        import sqlglot
        from sqlglot.errors import ParseError, TokenError
        try:
            with _quiet_sqlglot():
                tokens = sqlglot.tokenize(self.sql, read="sqlite")
        except TokenError:
            opened = _unclosed_quote(self.sql)
            if opened is not None:
                what = ("a /* comment" if self.sql.startswith("/*", opened)
                        else f"the quote {self.sql[opened]}")
                raise self.error(f"SQL syntax error: {what} is never closed", opened) from None
            raise self.error("SQL syntax error: unreadable text",
                             self.first_token_offset()) from None
        if not tokens:
            raise self.error("the query is empty")
        # statements: split on semicolons, ignoring empty ones
        from sqlglot.tokens import TokenType
        starts, expect_start = [], True
        for tok in tokens:
            if tok.token_type == TokenType.SEMICOLON:
                expect_start = True
                continue
            if expect_start:
                starts.append(tok.start)
                expect_start = False
        if len(starts) > 1:
            raise self.error("only one SQL statement is allowed; this is a second one",
                             starts[1])
        depth = 0
        for tok in tokens:
            if tok.token_type == TokenType.L_PAREN:
                depth += 1
                if depth > MAX_NESTING:
                    raise self.error(f"the query nests parentheses more than {MAX_NESTING} "
                                     "deep; write it flatter", tok.start)
            elif tok.token_type == TokenType.R_PAREN:
                depth = max(0, depth - 1)
        first_word = tokens[0].text.lower()
        if first_word in _BAD_ROOT_WORDS:
            raise self.error(f"only a read-only query (SELECT) is allowed, not "
                             f"{tokens[0].text.upper()}", tokens[0].start)
        try:
            with _quiet_sqlglot():
                trees = [t for t in sqlglot.parse(self.sql, read="sqlite") if t is not None]
        except ParseError as exc:
            err = exc.errors[0] if exc.errors else {}
            desc = err.get("description") or str(exc)
            desc = re.sub(r"<Token token_type: TokenType\.\w+, text: (.*?), line.*?>", r"'\1'",
                          desc)
            missing = re.match(r"Required keyword: '(\w+)' missing for <class '[\w.]+\.(\w+)'>",
                               desc)
            if missing:
                desc = f"{missing.group(2).upper()} is incomplete (its {missing.group(1)} is missing)"
            hl = err.get("highlight") or ""
            offset = (self.line_col_offset(err["line"], err["col"], len(hl))
                      if err.get("line") else 0)
            raise self.error(f"SQL syntax error: {desc}", offset) from None
        if len(trees) != 1:
            raise self.error("the query is empty" if not trees else
                             "only one SQL statement is allowed")
        return trees[0]

    def check_kind(self, tree) -> None:
        from sqlglot import exp
        root = tree
        while isinstance(root, (exp.Subquery, exp.Paren)):
            root = root.this
        read_only = (exp.Select, exp.Union, exp.Intersect, exp.Except)
        if not isinstance(root, read_only):
            word = self.sql.strip().split(None, 1)[0].upper() if self.sql.strip() else "?"
            raise self.error(f"only a read-only query (SELECT) is allowed, not {word}",
                             self.first_token_offset())
        writers = tuple(getattr(exp, n) for n in ("Insert", "Update", "Delete", "Create", "Drop",
                                                  "Alter", "Command", "Pragma", "Attach",
                                                  "Detach", "Transaction", "Merge")
                        if hasattr(exp, n))
        for node in tree.walk():
            if isinstance(node, writers):
                raise self.error("only a read-only query (SELECT) is allowed: "
                                 f"{node.key.upper()} found inside", self.offset_of(node))

    def check_functions(self, tree) -> None:
        from sqlglot import exp
        operators = (exp.Binary, exp.Unary, exp.Predicate, exp.Connector)
        for node in tree.walk():
            if not isinstance(node, exp.Func) or isinstance(node, operators):
                continue
            cls = type(node).__name__
            if isinstance(node, exp.Anonymous):
                name = node.name
                ok = name.lower() in ALLOWED_FUNCTIONS
            else:
                name = node.sql_name().lower()
                ok = cls in _ALLOWED_NODES
            if not ok:
                offset = self.offset_of(node)
                if (getattr(node, "meta", None) or {}).get("start") is not None:
                    written = re.match(r"[A-Za-z_][A-Za-z0-9_]*", self.sql[offset:])
                    name = written.group(0) if written else name
                if offset is not None and not (getattr(node, "meta", None) or {}).get("start"):
                    found = self.sql.lower().rfind(name.lower(), 0, offset + 1)
                    offset = found if found >= 0 else offset
                raise self.error(f"function {name}() is not allowed in a job query", offset)

    def check_recursion(self, tree) -> None:
        """A CTE that reads itself runs until it stops producing rows: refused unless its own
        SELECT carries a literal LIMIT small enough to bound it."""
        from sqlglot import exp
        for cte in tree.find_all(exp.CTE):
            name = cte.alias.lower()
            if not any(t.name.lower() == name and not t.args.get("db")
                       for t in cte.this.find_all(exp.Table)):
                continue
            limit = cte.this.args.get("limit")
            count = limit.args.get("expression") if limit is not None else None
            if (isinstance(count, exp.Literal) and not count.is_string
                    and count.this.isdigit() and int(count.this) <= MAX_RECURSIVE_ROWS):
                continue
            raise self.error(f"the recursive CTE {cte.alias} could run forever; end its SELECT "
                             f"with LIMIT n (n at most {MAX_RECURSIVE_ROWS})",
                             self.offset_of(cte.args.get("alias")) or self.offset_of(cte))

    def check_formats(self, tree) -> None:
        """printf/format may not pad or repeat text to a size chosen by the query."""
        from sqlglot import exp
        for node in tree.walk():
            if isinstance(node, exp.Anonymous) and node.name.lower() in ("printf", "format"):
                fmt = node.expressions[0] if node.expressions else None
            elif isinstance(node, exp.Format):
                fmt = node.this
            else:
                continue
            name = node.name if isinstance(node, exp.Anonymous) else "format"
            if not (isinstance(fmt, exp.Literal) and fmt.is_string):
                raise self.error(f"{name}() needs a string literal as its format",
                                 self.offset_of(node))
            if re.search(r"%[-+ #0,!]*(\*|\d{2,})|%[-+ #0,!]*\d*\.(\*|\d{2,})", fmt.this):
                raise self.error(f"{name}(): a '*' or a width or precision of more than one "
                                 "digit is not allowed in a job query", self.offset_of(fmt))

    def check_names(self, tree) -> None:
        from sqlglot import exp
        from sqlglot.optimizer.scope import Scope, traverse_scope
        scopes = list(traverse_scope(tree))
        # unknown tables first, in text order
        problems: list[tuple[int, str]] = []
        for scope in scopes:
            for src in scope.sources.values():
                if not isinstance(src, exp.Table) or not isinstance(src.this, exp.Identifier):
                    continue
                off = self.offset_of(src.this) or 0
                db = src.args.get("db")
                if db is not None and db.name.lower() != "main":
                    problems.append((off, f"table {db.name}.{src.name}: only the archive's own "
                                          "tables can be read"))
                elif src.name.lower() not in self.tables:
                    names = sorted(t for t, _ in self.tables.values())
                    problems.append((off, f"unknown table {src.name}"
                                          + _suggest(src.name, names, self.schema_source)))
        if problems:
            off, msg = min(problems)
            raise self.error(msg, off)

        def source_columns(src) -> set[str] | None:   # None: unknown (star), accept anything
            if isinstance(src, exp.Table):
                return set(self.tables[src.name.lower()][1])
            if isinstance(src, Scope):
                expr = src.expression
                if getattr(expr, "is_star", False):
                    return None
                return {n.lower() for n in expr.named_selects}
            return None

        def lookup(scope, name: str):
            while scope is not None:
                for alias, src in scope.sources.items():
                    if alias.lower() == name:
                        return src
                scope = scope.parent
            return None

        innermost: dict[int, Any] = {}
        for scope in scopes:          # traverse_scope yields inner scopes first
            for column in scope.columns:
                innermost.setdefault(id(column), (scope, column))
        for scope, column in sorted(innermost.values(),
                                    key=lambda sc: self.offset_of(sc[1].this) or 0):
            if column.is_star:
                continue
            name = column.name.lower()
            off = self.offset_of(column.this)
            qualifier = column.table
            if qualifier:
                src = lookup(scope, qualifier.lower())
                if src is None:
                    raise self.error(f"unknown table or alias {qualifier} in "
                                     f"{qualifier}.{column.name}", self.offset_of(column))
                cols = source_columns(src)
                if cols is not None and name not in cols:
                    where = src.name if isinstance(src, exp.Table) else qualifier
                    raise self.error(f"unknown column {column.name} in {where}"
                                     + _suggest(column.name, _original(src, cols, self), None),
                                     off)
                continue
            s, found = scope, False
            while s is not None and not found:
                matches, unknown = [], False
                for alias, src in s.sources.items():
                    cols = source_columns(src)
                    if cols is None:
                        unknown = True
                    elif name in cols:
                        matches.append(alias)
                aliases = ({sel.alias.lower() for sel in s.expression.selects
                            if isinstance(sel, exp.Alias)}
                           if isinstance(s.expression, exp.Select) else set())
                if len(matches) > 1:
                    raise self.error(f"ambiguous column {column.name} (in "
                                     f"{' and '.join(matches)}): write e.g. "
                                     f"{matches[0]}.{column.name}", off)
                found = bool(matches) or unknown or name in aliases
                s = s.parent
            if not found:
                near: list[str] = []
                s = scope
                while s is not None:
                    for src in s.sources.values():
                        near += _original(src, source_columns(src) or set(), self)
                    s = s.parent
                if getattr(column.this, "quoted", False) and \
                        self.sql[off:off + 1] == '"':
                    raise self.error(f"unknown column {column.name} (in SQL, strings take "
                                     f"single quotes: '{column.name}'; double quotes name a "
                                     f"column)", off)
                raise self.error(f"unknown column {column.name}"
                                 + _suggest(column.name, near, None), off)

    def output_columns(self, tree) -> list[str]:
        from sqlglot.errors import OptimizeError
        from sqlglot.optimizer.qualify import qualify
        try:
            with _quiet_sqlglot():
                q = qualify(tree.copy(), schema=self.sqlglot_schema, dialect="sqlite",
                            validate_qualify_columns=True, identify=False)
        except (OptimizeError, Exception) as exc:  # sqlglot raises several kinds here
            msg = str(exc)
            m = re.search(r"Line: (\d+), Col: (\d+)", msg)
            offset = 0
            name = re.search(r"Column '([^']+)'", msg)
            if m:
                offset = self.line_col_offset(int(m.group(1)), int(m.group(2)),
                                              len(name.group(1)) if name else 1)
            msg = re.sub(r"\.? ?Line: \d+, Col: \d+", "", msg)
            raise self.error(f"the query cannot be resolved: {msg}", offset) from None
        return list(q.named_selects)

    def run(self, require_column: bool = True) -> CheckedQuery:
        try:
            return self._run(require_column)
        except RecursionError:
            raise self.error("the query is nested too deeply to check; write it flatter",
                             self.first_token_offset()) from None

    def _run(self, require_column: bool) -> CheckedQuery:
        from sqlglot import exp
        tree = self.parse()
        self.check_kind(tree)
        self.check_functions(tree)
        self.check_formats(tree)
        self.check_recursion(tree)
        self.check_names(tree)
        names = self.output_columns(tree)
        lower = [n.lower() for n in names]
        if not require_column:
            level, column = "rows", ""
        elif INSTANCE_COLUMN.lower() in lower:
            level, column = "instance", INSTANCE_COLUMN
        elif SERIES_COLUMN.lower() in lower:
            level, column = "series", SERIES_COLUMN
        else:
            shown = ", ".join(names) if names else "nothing"
            raise self.error(f"the query must return a column {SERIES_COLUMN} (series level) "
                             f"or {INSTANCE_COLUMN} (instance level); it returns {shown}",
                             self.first_token_offset())
        tables = sorted({t.name for t in tree.find_all(exp.Table)})
        return CheckedQuery(self.sql, level, column, tuple(lower), tuple(tables))


def _unclosed_quote(sql: str) -> int | None:
    """Offset of a quote (or comment opener) that is never closed, if any."""
    i, n = 0, len(sql)
    closers = {"'": "'", '"': '"', "`": "`", "[": "]"}
    while i < n:
        ch = sql[i]
        if sql.startswith("--", i):
            nl = sql.find("\n", i)
            i = n if nl < 0 else nl + 1
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                return i
            i = end + 2
            continue
        if ch in closers:
            j = i + 1
            while True:
                j = sql.find(closers[ch], j)
                if j < 0:
                    return i
                if closers[ch] in "'\"`" and sql.startswith(closers[ch] * 2, j):
                    j += 2
                    continue
                break
            i = j + 1
            continue
        i += 1
    return None


def _original(src, lowered: set[str], checker: "_Checker") -> list[str]:
    """The column names of a source as the schema spells them."""
    from sqlglot import exp
    if isinstance(src, exp.Table) and src.name.lower() in checker.tables:
        return list(checker.tables[src.name.lower()][1].values())
    return sorted(lowered)


def _suggest(name: str, candidates: list[str], source: str | None) -> str:
    import difflib
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    if close:
        return f" (did you mean {by_lower[close[0]]}?)"
    if source is not None:
        return f" (not in {source}; known: {', '.join(candidates)})"
    return ""


def check_query(sql: str, schema, *, file: str | None = None, line: int = 1, col: int = 1,
                locate: Callable[[int], tuple[int, int]] | None = None,
                require_column: bool = True) -> CheckedQuery:
    """Check one job query against ``schema`` (a ``Schema``); raise ``SqlCheckError``.

    ``line``/``col`` is where the SQL text starts in ``file``; ``locate`` (optional) maps a
    character offset of ``sql`` to (line, col) in the file, for block and folded scalars.
    ``require_column=False`` (``conquest-run query``): any columns; the level is ``"rows"``.
    """
    return _Checker(sql, schema, file, line, col, locate).run(require_column)



# user tables (own data beside the archive): the schema a job query is checked against learns
# them from the database (usertables.py)
from .usertables import schema_of, with_user_tables  # noqa: E402

__all__ += ["with_user_tables", "schema_of"]

"""The README against the package: what it shows and what it lists."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path
from typing import List, Optional, Set, Tuple, Union

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
#: Stands for the part of a counter name that comes from outside the package,
#: such as the collector's reason for a rejection.
FREE = "<reason>"

_Function = Union[ast.FunctionDef, ast.AsyncFunctionDef]


class _Unread(Exception):
    """A part of a counter name that the source does not spell out."""


def test_no_shell_example_puts_the_key_on_the_command_line() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.DOTALL)
    commands = [
        line.split("#")[0] for block in blocks for line in block.splitlines()
    ]

    assert "python -m onecollector_logging send" in [c.strip() for c in commands]
    assert [c for c in commands if "--instrumentation-key" in c] == []
    assert [c for c in commands if "INSTRUMENTATION_KEY" in c] == []


class _Source:
    """The package's modules, with each node's enclosing function."""

    def __init__(self, package: Path) -> None:
        self.calls: List[Tuple[ast.Call, Optional[_Function], str]] = []
        for path in sorted(package.glob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            self._visit(tree, None, path.name)

    def _visit(self, node: ast.AST, scope: Optional[_Function], where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = child
            if isinstance(child, ast.Call):
                self.calls.append((child, scope, f"{where}:{child.lineno}"))
            self._visit(child, inner, where)

    def calls_of(self, name: str) -> List[Tuple[ast.Call, Optional[_Function], str]]:
        """The calls of functions or methods called *name*."""
        return [
            (call, scope, where)
            for call, scope, where in self.calls
            if (isinstance(call.func, ast.Attribute) and call.func.attr == name)
            or (isinstance(call.func, ast.Name) and call.func.id == name)
        ]

    def names(
        self, expr: ast.expr, scope: Optional[_Function], where: str, depth: int = 0
    ) -> Set[str]:
        """Every string *expr* can be, with FREE for a part read from data."""
        assert depth < 10, f"{where}: counter name passed through too many calls"
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, ast.IfExp):
            return self.names(expr.body, scope, where, depth) | self.names(
                expr.orelse, scope, where, depth
            )
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return self._joined([expr.left, expr.right], scope, where, depth)
        if isinstance(expr, ast.JoinedStr):
            parts = [
                part.value if isinstance(part, ast.FormattedValue) else part
                for part in expr.values
            ]
            return self._joined(parts, scope, where, depth)
        if isinstance(expr, ast.Name) and scope is not None:
            return self._variable(expr.id, scope, where, depth)
        raise _Unread(f"{where}: cannot read the counter name {ast.unparse(expr)}")

    def _joined(
        self,
        parts: List[ast.expr],
        scope: Optional[_Function],
        where: str,
        depth: int,
    ) -> Set[str]:
        choices = []
        for part in parts:
            try:
                choices.append(self.names(part, scope, where, depth))
            except _Unread:
                # Only after a fixed prefix: the reason a counter is kept by.
                choices.append({FREE})
        assert choices[0] != {FREE}, f"{where}: a counter name starts unknown"
        return {"".join(chosen) for chosen in itertools.product(*choices)}

    def _variable(
        self, name: str, scope: _Function, where: str, depth: int
    ) -> Set[str]:
        """Follow a local variable to its assignments, a parameter to its callers."""
        assigned = [
            node.value
            for node in ast.walk(scope)
            if isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
        ]
        if assigned:
            found: Set[str] = set()
            for value in assigned:
                found |= self.names(value, scope, where, depth + 1)
            return found
        parameters = [arg.arg for arg in scope.args.args]
        if parameters[:1] in (["self"], ["cls"]):
            parameters[0] = ""
        if name not in parameters:
            raise _Unread(f"{where}: cannot read the counter name {name}")
        index = parameters.index(name) - (parameters[0] == "")
        callers = self.calls_of(scope.name)
        assert callers, f"{where}: nothing calls {scope.name}()"
        found = set()
        for call, caller, at in callers:
            given = [kw.value for kw in call.keywords if kw.arg == name]
            assert given or index < len(call.args), f"{at}: no {name} given"
            value = given[0] if given else call.args[index]
            found |= self.names(value, caller, at, depth + 1)
        return found


def _counter_names() -> Set[str]:
    source = _Source(ROOT / "onecollector_logging")
    names: Set[str] = set()
    for call, scope, where in source.calls_of("add"):
        assert isinstance(call.func, ast.Attribute)
        if ast.unparse(call.func.value).endswith("counters"):
            names |= source.names(call.args[0], scope, where)
    return names


def test_every_counter_the_package_keeps_is_listed_in_the_readme() -> None:
    names = _counter_names()

    missing = sorted(name for name in names if f"`{name}`" not in README)

    # The reading of the source must keep finding the counters it is meant to.
    assert {"accepted", "dropped.killed", "dropped.after_close"} <= names
    assert f"rejected.{FREE}" in names and "dropped.cache_full" in names
    assert missing == []

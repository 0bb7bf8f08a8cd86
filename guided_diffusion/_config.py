"""Read YAML-config values whether the config is a nested dict or an attribute namespace.

Users' configs arrive either as the dict from yaml.safe_load or as the reference's
argparse.Namespace tree (dict2namespace); every model builder accepts both.
"""
from typing import Any

_MISSING = object()


def cfg_get(node: Any, key: str, default: Any = _MISSING) -> Any:
    """Value of `key` in a dict or namespace node; `default` if given and the key is absent."""
    if isinstance(node, dict):
        if key in node:
            return node[key]
    elif hasattr(node, key):
        return getattr(node, key)
    if default is _MISSING:
        raise KeyError(f"config is missing required key {key!r}")
    return default


def cfg_section(config: Any, name: str) -> Any:
    """A sub-section (e.g. 'model', 'data') of a dict or namespace config."""
    return cfg_get(config, name)

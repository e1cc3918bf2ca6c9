"""A user's own model by import path: ``--model package.module:factory``.

The factory is any callable that returns an ``nn.Module`` (a function or the model class itself). It is called
with the keyword arguments ``in_channels`` and ``num_classes`` that its signature names (both, one, or none:
a factory that takes neither builds the model as it is), so the same path works for a model written for one
dataset and for a configurable one. The module is imported from the current directory first, as
``python -m`` would, then from ``sys.path``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from pathlib import Path

from torch import nn

from automl_prune.errors import ConfigError

__all__ = ["build_from_import_path", "is_import_path", "source_fingerprint"]

_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_path(name: str) -> bool:
    """True for ``package.module:attribute`` (and not for ``torchvision:NAME``, which is checked first)."""
    return bool(_PATTERN.match(name))


def build_from_import_path(path: str, in_channels: int, num_classes: int) -> nn.Module:
    """Import ``module:attribute`` and call it (see the module docstring for the arguments it gets).

    Raises:
        ConfigError: The module cannot be imported, the attribute does not exist or is not callable, the call
            fails, or it returns something other than an ``nn.Module``; one line that names ``path``.
    """
    module_name, _, attribute = path.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # for this import only: the caller's sys.path is left as it was
        sys.path.insert(0, cwd)
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--model {path!r}: cannot import module {module_name!r} ({exc}); give "
                          "package.module:factory importable from the current directory or the Python path") from exc
    except SyntaxError as exc:
        raise ConfigError(f"--model {path!r}: {exc.filename}:{exc.lineno}: syntax error in module {module_name!r}: "
                          f"{exc.msg}") from exc
    except Exception as exc:  # the user's module raised while it was imported
        raise ConfigError(f"--model {path!r}: importing module {module_name!r} raised {type(exc).__name__}: "
                          f"{exc}") from exc
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"--model {path!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"--model {path!r}: {attribute!r} is not callable; give a function or class that "
                          "returns an nn.Module")
    kwargs = _factory_kwargs(target, in_channels=in_channels, num_classes=num_classes)
    try:
        model = target(**kwargs)
    except Exception as exc:
        raise ConfigError(f"--model {path!r}: calling {attribute}(**{kwargs}) failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {path!r}: {attribute} returned {type(model).__name__}, not an nn.Module")
    return model


def _factory_kwargs(factory: object, **available: int) -> dict[str, int]:
    try:
        parameters = inspect.signature(factory).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin or C callable: call it bare
        return {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return {name: value for name, value in available.items() if takes_any or name in parameters}


def source_fingerprint(path: str) -> str:
    """A short hash of the file that defines ``module:attribute`` (16 hex digits): a cached base model trained
    from an earlier version of the user's model code is then never reused. Call after `build_from_import_path`."""
    import hashlib

    module = sys.modules.get(path.partition(":")[0])
    file = getattr(module, "__file__", None)
    digest = hashlib.blake2b(digest_size=8)
    digest.update(Path(file).read_bytes() if file else path.encode())
    return digest.hexdigest()

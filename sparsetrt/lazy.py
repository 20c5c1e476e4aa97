"""`lazy_import`: name a module at the top of a file, import it on first use.

A module's header then says everything it uses, while importing it stays cheap: `sparsetrt --help` must not pay
for torch, TensorRT, Model Optimizer or matplotlib, and a machine without an optional library (TensorRT proper,
NVML, matplotlib) still imports every module and refuses only the work that needs it, with how to get it.
"""

from __future__ import annotations

import importlib
import importlib.util
import types

from sparsetrt.errors import SparsetrtError


class LazyModule(types.ModuleType):
    """Stands in for module `name` until an attribute is read; then it is the real module's attribute."""

    def __init__(self, name: str, install: str | None):
        super().__init__(name)
        self.__dict__["_lazy_install"] = install
        self.__dict__["_lazy_module"] = None

    def _load(self) -> types.ModuleType:
        module = self.__dict__["_lazy_module"]
        if module is None:
            try:
                module = importlib.import_module(self.__name__)
            except ImportError as exc:
                install = self.__dict__["_lazy_install"]
                if install is None or (exc.name and not self.__name__.startswith(exc.name)):
                    raise  # a first-party module, or a dependency of the library that is itself missing: a bug
                raise SparsetrtError(f"{self.__name__} is not installed ({install})") from None
            self.__dict__["_lazy_module"] = module
        return module

    def __getattr__(self, attribute: str):
        return getattr(self._load(), attribute)

    def __dir__(self):
        return dir(self._load())

    def __repr__(self) -> str:
        state = "imported" if self.__dict__["_lazy_module"] is not None else "not imported yet"
        return f"<lazy module '{self.__name__}' ({state})>"


def lazy_import(name: str, install: str | None = None) -> LazyModule:
    """Module `name`, imported when first used. `install`: how to get an optional library (the message of the
    error a missing one raises on use); None for a dependency that is always installed (its ImportError is a bug
    and propagates as it is)."""
    return LazyModule(name, install)


def available(name: str) -> bool:
    """Whether module `name` could be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False

"""Which code travels with a job by value, and what a payload needs of the process that loads it.

**Local modules.** Functions defined in the notebook (``__main__``) always travel by value. So do,
automatically, the modules and packages a notebook imports that are not installed: their files are
not under this interpreter's standard library or site-packages (the notebook's folder, an editable
checkout, a folder added to ``sys.path``). A worker on another machine has none of them. Installed
packages travel by reference: every node must have them. ``CORE4NB_SHIP_LOCAL=0`` turns the
automatic part off; :func:`core4nb.ship` names a module or package to ship by value either way.
This module only decides *which* modules; :mod:`core4nb.serialize` registers them with cloudpickle.

**Environment.** A payload records the versions of the installed top-level packages its pickle
names (numpy, pandas, scikit-learn…), so a node that cannot unpickle it can say which package
differs, instead of a bare ``AttributeError`` from deep inside the unpickler.
"""

from __future__ import annotations

import functools
import os
import re
import site
import sys
import sysconfig
from types import ModuleType

LOCAL_ENV = "CORE4NB_SHIP_LOCAL"
#: Never shipped by value: ``__main__`` travels by value anyway, core4nb runs on every node.
_NEVER = frozenset({"__main__", "core4nb", "cloudpickle"})

_seen: set[str] = set()  # top-level module names already judged
_scanned = 0  # len(sys.modules) at the last look: unchanged means nothing new was imported


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    """Folders whose modules are installed ones: stdlib and site-packages, of this and the base interpreter."""
    paths = set(site.getsitepackages()) | {site.getusersitepackages()}
    for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
        found = sysconfig.get_paths(vars=scheme_vars) if scheme_vars else sysconfig.get_paths()
        paths |= {found[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(sorted({os.path.realpath(p) + os.sep for p in paths if p}))


def is_local(module: ModuleType) -> bool:
    """Whether ``module`` (a top-level module or package) is this machine's own, not an installed one."""
    name = module.__name__
    if name in _NEVER or name in sys.builtin_module_names:
        return False
    where = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", None) or ()), None)
    if not isinstance(where, str):
        return False
    return not os.path.realpath(where).startswith(_installed_roots())


def new_local_modules() -> list[ModuleType]:
    """Local top-level modules imported since the last call (each is returned once)."""
    global _scanned
    if os.environ.get(LOCAL_ENV, "1") == "0" or len(sys.modules) == _scanned:
        return []
    _scanned = len(sys.modules)
    fresh = [name for name in list(sys.modules) if "." not in name and name not in _seen]
    _seen.update(fresh)
    modules = [sys.modules.get(name) for name in fresh]
    return [m for m in modules if isinstance(m, ModuleType) and is_local(m)]


# importlib.metadata is imported where it is used: it costs a node, and each of its children, 15-20 ms at
# start, and they need it only to explain a payload that fails to load.
@functools.cache
def _distributions() -> dict[str, list[str]]:
    import importlib.metadata

    return importlib.metadata.packages_distributions()


@functools.cache
def installed_version(name: str) -> str | None:
    """The version of the installed distribution that provides the top-level module ``name``, or None.

    Most distributions are named after their module (numpy, pandas): one lookup by name. Only for the
    others (sklearn of scikit-learn, yaml of PyYAML) is every installed distribution's file list read
    (``packages_distributions``, 0.16 s with this project's bench extras), and only once per process:
    a first submit used to pay for that scan even when its call named no installed package."""
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    dists = _distributions().get(name)
    try:
        return importlib.metadata.version(dists[0]) if dists else None
    except importlib.metadata.PackageNotFoundError:
        return None


_STDLIB = frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names)
_judged: dict[str, bool] = {}  # top-level module name → whether it may be an installed package's
_candidates: tuple[int, frozenset[bytes]] = (-1, frozenset())  # (len(sys.modules), the names judged so)
#: Where a pickle (protocol 5) names a module: a short string (SHORT_BINUNICODE, 0x8c and a length byte)
#: that starts with it, e.g. b"numpy.core.multiarray"; the capture stops at the first dot.
_STRING_START = re.compile(rb"\x8c[\x01-\xff]([A-Za-z_]\w*)")


def _installed_top_level() -> frozenset[bytes]:
    """The top-level modules imported here that may be installed packages: not the standard library's,
    not built in, not local. Kept while nothing new is imported: this runs for every payload."""
    global _candidates
    if _candidates[0] != len(sys.modules):
        for name in [n for n in list(sys.modules) if "." not in n and n not in _judged]:
            module = sys.modules.get(name)
            _judged[name] = (name not in _NEVER and name not in _STDLIB and isinstance(module, ModuleType)
                             and bool(getattr(module, "__file__", None) or getattr(module, "__path__", None))
                             and not is_local(module))
        _candidates = (len(sys.modules), frozenset(n.encode() for n, ok in _judged.items() if ok and n in sys.modules))
    return _candidates[1]


def referenced_versions(body: bytes) -> dict[str, str]:
    """``{top-level package: version}`` for the installed packages imported here whose names the pickle
    mentions (a pickle names every module it needs by its dotted name, in a string of its own)."""
    # One pass over the pickle's strings: an alternation of every candidate name, tried at each byte,
    # took 18 us for the 0.6 kB pickle of a function shipped by value (more than pickling it) and
    # 30 ns per byte of a large in-band body; this takes 6 us and 0.4 ns per byte.
    named = sorted(_installed_top_level().intersection(_STRING_START.findall(body)))
    return {name: version for raw in named if (version := installed_version(name := raw.decode())) is not None}


def environment_differences(recorded: dict[str, str]) -> list[str]:
    """How this process differs from the one that made a payload: ``numpy 2.1.0 there, 1.26.4 here``."""
    out = []
    for name, theirs in sorted(recorded.items()):
        ours = installed_version(name)
        if ours != theirs:
            out.append(f"{name} {theirs} in the notebook, {ours or 'not installed'} here")
    return out

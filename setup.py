"""Builds the optional native cycle search, ``sgperm_jax._sgperm_native``.

The C++ sources (``csrc/*.cc``) are XLA FFI handlers; it needs the
FFI headers that ship with jaxlib (``jaxlib/include``), found here without
importing jax. The extension is optional: without a compiler or jaxlib the
build goes on and ``sgperm_jax`` uses its portable search. The library is
loaded with ctypes by ``sgperm_jax/_native.py``, not imported.

Everything else about the package is in ``pyproject.toml``.
"""

import importlib.util
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _jaxlib_include():
  """``jaxlib/include`` of the jaxlib on the path, or None (no import)."""
  try:
    spec = importlib.util.find_spec("jaxlib")
  except (ImportError, ValueError):
    return None
  if spec is None:
    return None
  roots = list(spec.submodule_search_locations or [])
  if spec.origin:
    roots.append(os.path.dirname(spec.origin))
  for root in roots:
    include = os.path.join(root, "include")
    if os.path.isfile(os.path.join(include, "xla", "ffi", "api", "ffi.h")):
      return include
  return None


class _BuildExt(build_ext):
  """Plain shared library (no Python module init), optional."""

  def get_export_symbols(self, ext):
    return ext.export_symbols  # not PyInit_*: the library has no module

  def build_extension(self, ext):
    try:
      super().build_extension(ext)
    except Exception as e:  # pylint: disable=broad-except
      print(f"warning: sgperm_jax native kernel not built ({e}); the portable "
            "cycle search will be used", file=sys.stderr)


def _extensions():
  include = _jaxlib_include()
  if include is None:
    print("warning: jaxlib's FFI headers not found; sgperm_jax native kernel "
          "not built", file=sys.stderr)
    return []
  if sys.platform == "win32":
    args = ["/O2", "/std:c++17"]
  else:
    args = ["-O3", "-std=c++17", "-ffp-contract=off"]
  return [Extension(
      "sgperm_jax._sgperm_native",
      sources=["csrc/sgperm_cycles.cc", "csrc/sgperm_rows.cc",
               "csrc/sgperm_laperm.cc"],
      include_dirs=[include],
      language="c++",
      extra_compile_args=args,
      export_symbols=["SgpermFindCycles", "SgpermPermuteLeaves",
                      "SgpermLapermSync"],
      optional=True)]


setup(ext_modules=_extensions(), cmdclass={"build_ext": _BuildExt})

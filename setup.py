"""Builds the optional C++ extensions in csrc/ (everything else is in pyproject.toml).

Each ``csrc/<op>.cpp`` becomes ``ueperf._C_<op>``; its Python wrapper falls back to the torch
reference when the extension is missing, so the package installs and works when this build is
skipped. The build needs torch importable at build time, so install with
``pip install --no-build-isolation .`` (build isolation hides the installed torch; then the
build is skipped with a message). ``UEPERF_BUILD_EXT=0`` skips it on purpose.
"""
import glob
import os
import sys

from setuptools import setup


def _extensions():
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
        return [], {}
    if os.environ.get("UEPERF_BUILD_EXT", "1") == "0":
        print("ueperf: UEPERF_BUILD_EXT=0, skipping the C++ extensions (torch fallbacks are used)", file=sys.stderr)
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print("ueperf: torch is not importable at build time (pip build isolation?): skipping the C++ "
              "extensions; reinstall with `pip install --no-build-isolation .` to build them", file=sys.stderr)
        return [], {}
    exts = [CppExtension(name=f"ueperf._C_{os.path.splitext(os.path.basename(s))[0]}", sources=[s],
                         extra_compile_args=["-O3"]) for s in sources]

    class OptionalBuild(BuildExtension):
        """A failed compile warns and leaves the torch fallback in place instead of failing the install."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # compiler missing, incompatible headers, ...
                print(f"ueperf: building {ext.name} failed ({e}); the torch reference is used instead", file=sys.stderr)

    return exts, {"build_ext": OptionalBuild}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)

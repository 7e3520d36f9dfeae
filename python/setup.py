"""Bundles libcptune_lookup.so into the package at build time (setup.py build_py), so that
`import cptune` needs no environment variable at run time.

Where the library comes from, first found: $CPTUNE_LOOKUP_LIBRARY (a path, at build time only),
then ../build*/db/libcptune_lookup.so.N next to this folder (a cmake build of the repository).
Without one the package still installs and looks for the library the system linker finds.

The package's version is the bundled library's release (cptune_lookup_library_version), so the
two never differ. A library built for the wheel (scripts/build_wheel.sh, -DCPTUNE_WHEEL=ON) looks
beside itself for what it needs beyond glibc (RUNPATH $ORIGIN): those libraries are bundled too,
and the wheel is tagged for this platform, since it holds a native library.
"""
import ctypes
import glob
import os
import re
import shutil
import subprocess
import sysconfig

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # setuptools < 70: the wheel package's
    from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
GLIBC = ("libc.so", "libm.so", "libdl.so", "librt.so", "libpthread.so", "ld-linux")


def find_library():
    given = os.environ.get("CPTUNE_LOOKUP_LIBRARY")
    if given:
        if not os.path.isfile(given):
            raise SystemExit(f"CPTUNE_LOOKUP_LIBRARY={given} is not a file")
        return given
    for pattern in ("../build*/db/libcptune_lookup.so.[0-9]", "../build*/db/libcptune_lookup.so"):
        found = sorted(glob.glob(os.path.join(HERE, pattern)), key=os.path.getmtime, reverse=True)
        if found:
            return found[0]
    return None


def library_version(library):
    lib = ctypes.CDLL(os.path.realpath(library))
    lib.cptune_lookup_library_version.restype = ctypes.c_char_p
    return lib.cptune_lookup_library_version().decode()


def source_version():
    """project(cptune VERSION x.y.z) of the repository, for a build without a library."""
    try:
        with open(os.path.join(HERE, "..", "CMakeLists.txt")) as f:
            return re.search(r"project\(cptune VERSION ([0-9.]+)", f.read()).group(1)
    except (OSError, AttributeError):
        return "0.0.0"


def looks_beside_itself(library):
    dynamic = subprocess.run(["readelf", "-d", library], capture_output=True, text=True).stdout
    return "[$ORIGIN]" in dynamic


def libraries_to_bundle(library):
    """What the library needs beyond glibc, as ldd resolves it here: name -> path."""
    out = {}
    for line in subprocess.run(["ldd", library], capture_output=True, text=True, check=True).stdout.splitlines():
        m = re.match(r"\s*(\S+) => (\S+)", line)
        if m and not m.group(1).startswith(GLIBC) and not m.group(1).startswith("libcptune_lookup"):
            out[m.group(1)] = m.group(2)
    return out


LIBRARY = find_library()
STANDALONE = bool(LIBRARY) and looks_beside_itself(os.path.realpath(LIBRARY))


class BuildPyWithLibrary(build_py):
    def run(self):
        super().run()
        package = os.path.join(self.build_lib, "cptune")
        with open(os.path.join(package, "_version.py"), "w") as f:
            f.write(f'VERSION = "{self.distribution.get_version()}"  # the bundled library\'s release\n')
        if LIBRARY is None:
            print("cptune: no libcptune_lookup.so found to bundle; the installed package will use the system's")
            return
        shutil.copyfile(os.path.realpath(LIBRARY), os.path.join(package, "libcptune_lookup.so"))
        print(f"cptune: bundled {LIBRARY}")
        if STANDALONE:
            for name, path in libraries_to_bundle(os.path.realpath(LIBRARY)).items():
                shutil.copyfile(os.path.realpath(path), os.path.join(package, name))
                print(f"cptune: bundled {path} as {name}")
        # The hardware presets the simulated answer needs, where the library looks for them
        # (hardware/ beside it): the build's copy (build/share/cptune/hardware), else the sources'.
        build_presets = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(LIBRARY))), "share", "cptune",
                                     "hardware")
        presets = sorted(glob.glob(os.path.join(build_presets, "*.json"))) or sorted(
            glob.glob(os.path.join(HERE, "..", "sim", "hardware", "*.json")))
        os.makedirs(os.path.join(package, "hardware"), exist_ok=True)
        for preset in presets:
            shutil.copyfile(preset, os.path.join(package, "hardware", os.path.basename(preset)))
        print(f"cptune: bundled {len(presets)} hardware presets")


class NativeDistribution(Distribution):
    """With a library bundled the package is platform-specific: installed to platlib, and the wheel
    keeps it at its root (not under .data/purelib)."""

    def has_ext_modules(self):
        return LIBRARY is not None


class PlatformWheel(bdist_wheel):
    """A wheel holding a native library is not pure: tag it for this platform (any Python 3,
    ctypes only, no extension module: py3-none-<platform>). Not manylinux: nothing here checks
    the library against a manylinux policy (auditwheel is not in Debian)."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = LIBRARY is None

    def get_tag(self):
        if LIBRARY is None:
            return super().get_tag()
        return "py3", "none", sysconfig.get_platform().replace("-", "_").replace(".", "_")


setup(version=library_version(LIBRARY) if LIBRARY else source_version(), distclass=NativeDistribution,
      cmdclass={"build_py": BuildPyWithLibrary, "bdist_wheel": PlatformWheel})

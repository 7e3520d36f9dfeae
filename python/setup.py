"""Bundles libcptune_lookup.so into the package at build time (setup.py build_py), so that
`import cptune` needs no environment variable at run time.

Where the library comes from, first found: $CPTUNE_LOOKUP_LIBRARY (a path, at build time only),
then ../build*/db/libcptune_lookup.so.N next to this folder (a cmake build of the repository).
Without one the package still installs and looks for the library the system linker finds.
"""
import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


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


class BuildPyWithLibrary(build_py):
    def run(self):
        super().run()
        library = find_library()
        if library is None:
            print("cptune: no libcptune_lookup.so found to bundle; the installed package will use the system's")
            return
        target = os.path.join(self.build_lib, "cptune", "libcptune_lookup.so")
        shutil.copyfile(os.path.realpath(library), target)
        print(f"cptune: bundled {library}")
        # The hardware presets the simulated answer needs, where the library looks for them
        # (hardware/ beside it): the build's copy (build/share/cptune/hardware), else the sources'.
        build_presets = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(library))), "share", "cptune",
                                     "hardware")
        presets = sorted(glob.glob(os.path.join(build_presets, "*.json"))) or sorted(
            glob.glob(os.path.join(HERE, "..", "sim", "hardware", "*.json")))
        os.makedirs(os.path.join(self.build_lib, "cptune", "hardware"), exist_ok=True)
        for preset in presets:
            shutil.copyfile(preset, os.path.join(self.build_lib, "cptune", "hardware", os.path.basename(preset)))
        print(f"cptune: bundled {len(presets)} hardware presets")


setup(cmdclass={"build_py": BuildPyWithLibrary})

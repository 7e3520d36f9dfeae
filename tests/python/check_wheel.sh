#!/usr/bin/env bash
# The wheel as a user on another machine gets it (scripts/build_wheel.sh): its library needs
# nothing beyond glibc but what the wheel carries beside it (no libfmt, no libstdc++, no system
# SQLite), has no debug info, the wheel is tagged for this platform with the library's version,
# and it installs with `pip install --no-index` into an empty venv (no system site) and answers
# lookups, with and without a database, under `env -i`, loading SQLite from the venv.
# usage: check_wheel.sh source_dir path/to/cptune [wheel_build_dir]
#   The wheel's library is its own Release build (wheel_build_dir, default a temporary folder);
#   ccache makes a rerun cheap. CPTUNE_WHEEL_FILE=path checks that wheel instead of building one.
set -euo pipefail
SOURCE=$(readlink -f "$1")
CPTUNE=$(readlink -f "$2")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export CPTUNE_WHEEL_BUILD_DIR=${3:-$WORK/build}
fail() { echo "check_wheel: $*" >&2; exit 1; }

if [[ -n ${CPTUNE_WHEEL_FILE:-} ]]; then
  wheel=$CPTUNE_WHEEL_FILE
else
  wheel=$("$SOURCE/scripts/build_wheel.sh" "$WORK/dist" 2>"$WORK/build.log") || { tail -40 "$WORK/build.log"; exit 1; }
fi
name=$(basename "$wheel")
echo "wheel: $name ($(stat -c %s "$wheel") bytes)"
platform=$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_platform().replace("-", "_").replace(".", "_"))')
[[ $name == cptune-*-py3-none-"$platform".whl ]] || fail "$name is not tagged py3-none-$platform"

/usr/bin/python3 -m zipfile -e "$wheel" "$WORK/unpacked"
package=$WORK/unpacked/cptune
library=$package/libcptune_lookup.so
[[ -f $library ]] || fail "the wheel has no cptune/libcptune_lookup.so at its root"
glibc='^(libc\.so\.6|libm\.so\.6|libdl\.so\.2|librt\.so\.1|libpthread\.so\.0|ld-linux.*\.so\.[0-9])$'
for elf in "$library" "$package"/lib*.so.*; do
  [[ -f $elf ]] || continue
  dynamic=$(readelf -d "$elf")
  echo "$(basename "$elf"): $(stat -c %s "$elf") bytes"
  grep -E '\((NEEDED|RUNPATH|RPATH)\)' <<<"$dynamic" || true
  bundled=0
  for needed in $(sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p' <<<"$dynamic"); do
    [[ $needed =~ $glibc ]] && continue
    [[ -f $package/$needed ]] || fail "$(basename "$elf") needs $needed, which the wheel does not carry"
    bundled=1
  done
  if ((bundled)); then
    grep -q '(RUNPATH).*\[\$ORIGIN\]' <<<"$dynamic" || fail "$(basename "$elf") carries libraries but has no RUNPATH \$ORIGIN"
  fi
  if readelf -S "$elf" | grep -q '\.debug_'; then fail "$(basename "$elf") has debug info"; fi
done

# One version: the wheel's is the library's.
version=$(sed -n 's/^cptune-\([^-]*\)-.*/\1/p' <<<"$name")
library_version=$(/usr/bin/python3 -c 'import ctypes, sys
lib = ctypes.CDLL(sys.argv[1]); lib.cptune_lookup_library_version.restype = ctypes.c_char_p
print(lib.cptune_lookup_library_version().decode())' "$library")
[[ $version == "$library_version" ]] || fail "wheel version $version, library version $library_version"

# An empty venv (no system site packages), offline.
/usr/bin/python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet --no-index "$wheel"
"$CPTUNE" tune --db "$WORK/tune.db" --world 2 --seq 256 --heads 4 --kv-heads 2 --head-dim 16 \
  --iterations 1 --warmups 0 --exhaustive >"$WORK/tune.log" 2>&1 || { cat "$WORK/tune.log"; exit 1; }

cd "$WORK"
run() { echo "\$ env -i PATH=/usr/bin:/bin venv/bin/python $*"; env -i PATH=/usr/bin:/bin "$WORK/venv/bin/python" "$@"; }
run -m cptune --world 4 --seq 4096 --heads 8 | tee nodb.out
grep -q '^simulated ' nodb.out || fail "no simulated answer without a database"
run -m cptune --db "$WORK/tune.db" --world 2 --seq 256 --heads 4 --kv-heads 2 --head-dim 16 | tee db.out
grep -q '^exact ' db.out || fail "no exact answer from the database"
run - "$WORK/tune.db" "$version" <<'PY'
import sys
import cptune

db, version = sys.argv[1], sys.argv[2]
assert cptune.__version__ == version == cptune.library_version(), (cptune.__version__, version)
assert cptune.library_path().startswith(sys.prefix), (cptune.library_path(), sys.prefix)
cptune.fingerprints(db)  # SQLite is loaded now: the copy beside the library, not the system's
with open("/proc/self/maps") as maps:
    sqlite = {line.split()[-1] for line in maps if "libsqlite3" in line}
assert sqlite and all(path.startswith(sys.prefix) for path in sqlite), sqlite
print("version:", version, "| sqlite:", *sqlite)
PY
echo "wheel OK"

#!/usr/bin/env bash
# Builds the Linux kernel's own AF_VSOCK test suite, tools/testing/vsock/vsock_test, from
# Debian's linux-source-TAG package, as a static program for the e2e guests (their userland
# is busybox: no libc). tests/e2e/test_vsock_kernel_suite.py runs it between two sibling
# guests; scripts/build-guest.sh calls this script and puts the result into the TAG image.
#
# usage: scripts/build-vsock-test.sh [--version VERSION] TAG DIR
#   TAG        6.1 or 6.12: the package is linux-source-TAG
#   --version  the package version to use; build-guest.sh passes its guest kernel's, which
#              the same Debian source package builds (the guest then runs its own kernel's
#              suite). When apt knows no such linux-source-TAG, the candidate is used and
#              VERSION says so (requested=).
#   DIR        gets vsock_test and VERSION (package=, version=, requested=, kernel-version=,
#              sources=)
#
# The package (~140 MB, a tar.xz of the whole tree) is fetched with `apt-get download` into
# DIR, never installed, and only tools/testing/vsock, tools/include, the uapi headers and the
# kernel's scripts/headers_install.sh and scripts/unifdef.c are unpacked; all of it is removed
# once the program is built. A rerun with the same package version (and this script unchanged)
# does nothing.
#
# The build is the one of tools/testing/vsock/Makefile (its object list and CFLAGS, read from
# it), plus -static, without -g and -MMD. The Makefile expects the kernel's exported headers in
# usr/include (`make headers_install`): here every uapi header the program includes is taken
# from the package, run through the package's own scripts/headers_install.sh (with its
# scripts/unifdef), so the suite sees the uapi of its kernel, not the host's linux-libc-dev.
# Headers the tree only generates at build time (asm wrappers of asm-generic, unistd_64.h) come
# from the host; they are the same for every kernel.
set -euo pipefail

die() { echo "build-vsock-test: error: $*" >&2; exit 1; }
note() { echo "build-vsock-test: $*" >&2; }

version=
while [ $# -gt 0 ]; do
  case $1 in
    --version)
      [ $# -ge 2 ] || die "--version needs a value"
      version=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[ $# -eq 2 ] || die "usage: $0 [--version VERSION] TAG DIR"
tag=$1
case $tag in 6.1|6.12) ;; *) die "TAG $tag: expected 6.1 or 6.12" ;; esac
pkg=linux-source-$tag
mkdir -p "$2"
dir=$(cd "$2" && pwd)

missing=()
for tool in apt-get apt-cache dpkg-deb tar xz gcc readelf sed sha256sum; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}: run scripts/setup.sh"

recipe=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
# The stamp of a build: the package version used, the one asked for, and this script.
stamp_of() {
  printf 'package=%s\nversion=%s\nrequested=%s\nrecipe=%s\n' "$pkg" "$1" "$2" "$recipe"
}
built() {
  [ "$(cat "$dir/stamp" 2>/dev/null)" = "$(stamp_of "$1" "$2")" ] && [ -x "$dir/vsock_test" ] &&
    [ -f "$dir/VERSION" ]
}
# Already built from the version asked for: done, without asking apt (a rerun takes no time).
if [ -n "$version" ] && built "$version" "$version"; then
  note "$tag: vsock_test of $pkg $version already built"
  exit 0
fi

# The version: the one asked for if apt has it, else the candidate.
available=$(apt-cache show "$pkg" 2>/dev/null | sed -n 's/^Version: //p') ||
  true
[ -n "$available" ] ||
  die "apt knows no package $pkg: run 'apt-get update' (scripts/setup.sh does)"
requested=$version
if [ -z "$version" ] || ! grep -qxF -- "$version" <<<"$available"; then
  version=$(apt-cache policy "$pkg" | sed -n 's/^ *Candidate: //p')
  [[ -n $version && $version != "(none)" ]] || die "$pkg has no installable version"
  [ -z "$requested" ] ||
    note "$pkg $requested is not available, using $version (not the guest kernel's own suite)"
fi
if built "$version" "$requested"; then
  note "$tag: vsock_test of $pkg $version already built"
  exit 0
fi
note "$tag: building vsock_test from $pkg $version"
rm -f "$dir/stamp" "$dir/vsock_test" "$dir/VERSION"
work=$(mktemp -d "$dir/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# apt's download sandbox user cannot write into a root-owned build folder: as root, skip it.
sandbox=(); [ "$(id -u)" -ne 0 ] || sandbox=(-o APT::Sandbox::User=root)
(cd "$work" && apt-get -q "${sandbox[@]}" download "$pkg=$version") >&2 ||
  die "apt-get download $pkg=$version failed: check the apt sources and run 'apt-get update'"
deb=$(echo "$work"/*.deb)
[ -f "$deb" ] || die "apt-get download $pkg=$version left no .deb"

# The package holds usr/src/linux-source-TAG.tar.xz; unpack the few parts we need from it,
# streaming (the 1 GB tree never touches the disk).
tree=$work/tree
mkdir -p "$tree"
top=linux-source-$tag
dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/$top.tar.xz" |
  tar -xJ -C "$tree" --strip-components=1 --wildcards \
    "$top/tools/testing/vsock/*" "$top/tools/include/*" "$top/include/uapi/*" \
    "$top/arch/x86/include/uapi/*" "$top/scripts/headers_install.sh" "$top/scripts/unifdef.c" \
    "$top/Makefile" ||
  die "$deb: cannot unpack tools/testing/vsock and the uapi headers from $top.tar.xz"
rm -f "$deb"
src=$tree/tools/testing/vsock
[[ -f $src/Makefile && -f $src/vsock_test.c ]] || die "$pkg: no tools/testing/vsock"
kernel_version=$(sed -n '1,10{s/^VERSION = //p;s/^PATCHLEVEL = //p;s/^SUBLEVEL = //p}' \
  "$tree/Makefile" | paste -sd.)

# The Makefile's recipe: `vsock_test: a.o b.o ...` and one `CFLAGS += ...` line.
objects=$(sed -n 's/^vsock_test:[[:space:]]*//p' "$src/Makefile")
cflags=$(sed -n 's/^CFLAGS[[:space:]]*+=[[:space:]]*//p' "$src/Makefile")
[[ -n $objects && -n $cflags ]] || die "$src/Makefile: no vsock_test rule or CFLAGS line"
sources=()
for object in $objects; do
  [ -f "$src/${object%.o}.c" ] || die "$src/Makefile: vsock_test needs $object, no ${object%.o}.c"
  sources+=("${object%.o}.c")
done
# usr/include is `make headers_install`'s output: ours is $work/usr-include, filled below.
uapi=$work/usr-include
flags=()
for flag in $cflags; do
  case $flag in
    -g|-MMD) ;;
    -I../../../usr/include) flags+=("-I$uapi") ;;
    *) flags+=("$flag") ;;
  esac
done
[[ " ${flags[*]} " == *" -I$uapi "* ]] ||
  die "$src/Makefile: CFLAGS has no -I../../../usr/include, the place of the uapi headers"
mkdir -p "$uapi"

# headers_install.sh runs scripts/unifdef from the tree's root.
gcc -O2 -w -o "$tree/scripts/unifdef" "$tree/scripts/unifdef.c" ||
  die "cannot build the package's scripts/unifdef"
# Exports into $uapi every uapi header of the package that the program includes, found through
# the host's copy gcc picked; repeated until the exported ones include no further new one.
# Sets `added` to the number of headers exported.
export_headers() {
  local deps rel from
  # gcc -M: "x.o: x.c a.h b.h \" lines; one dependency per line, continuations dropped.
  deps=$(cd "$src" && gcc -M "${flags[@]}" "${sources[@]}" | sed 's/\\$//' | tr -s ' ' '\n' |
    sed -n 's@^/usr/include/\(x86_64-linux-gnu/\)\{0,1\}@@p' | sort -u) ||
    die "gcc -M on the vsock_test sources failed"
  added=0
  for rel in $deps; do
    case $rel in
      asm/*) from=arch/x86/include/uapi/$rel ;;
      *) from=include/uapi/$rel ;;
    esac
    [ -f "$tree/$from" ] || continue  # a glibc header, or one the tree generates
    [ -f "$uapi/$rel" ] && continue
    mkdir -p "$(dirname "$uapi/$rel")"
    (cd "$tree" && sh scripts/headers_install.sh "$from" "$uapi/$rel") ||
      die "headers_install.sh $from failed"
    added=$((added + 1))
  done
}
for round in 1 2 3 4 5 6 7 8 9 10 last; do
  [ "$round" != last ] || die "the uapi headers keep pulling in new ones after 10 rounds"
  export_headers
  [ "$added" -gt 0 ] || break
done
note "$tag: $(find "$uapi" -name '*.h' | wc -l) uapi headers from $pkg"

(cd "$src" && gcc -static "${flags[@]}" -o "$work/vsock_test" "${sources[@]}") 2>"$work/cc.log" || {
  cat "$work/cc.log" >&2; die "compiling vsock_test of $pkg $version failed"
}
# glibc's static getaddrinfo() warns that it would need NSS modules at run time; the control
# channel's address and port are numeric, which it resolves without them. Anything else fails.
if grep -v -e "Using 'getaddrinfo' in statically linked" -e ': in function ' "$work/cc.log" |
   grep -q .; then
  cat "$work/cc.log" >&2; die "compiling vsock_test printed warnings"
fi
[[ $(readelf -l "$work/vsock_test") != *"Requesting program interpreter"* ]] ||
  die "vsock_test came out dynamically linked"

printf 'package=%s\nversion=%s\nrequested=%s\nkernel-version=%s\nsources=%s\n' "$pkg" \
  "$version" "${requested:-none}" "$kernel_version" "${sources[*]}" >"$work/VERSION"
mv "$work/vsock_test" "$dir/vsock_test"
mv "$work/VERSION" "$dir/VERSION"
stamp_of "$version" "$requested" >"$dir/stamp"
note "$tag: $dir/vsock_test ($(stat -c %s "$dir/vsock_test") bytes)"

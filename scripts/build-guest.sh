#!/usr/bin/env bash
# Builds the guest images of the end-to-end tests (tests/e2e/README.md) from Debian packages:
#   OUTDIR/<tag>/{vmlinux,initramfs.cpio.gz,VERSION} for tags 6.1 and 6.12.
# Each image also holds /bin/vsock_test, the kernel's own AF_VSOCK test suite built from the
# linux-source package of the same version (scripts/build-vsock-test.sh, cached in
# OUTDIR/cache/vsock-test-<tag>); a copy and its VERSION are left next to the image as
# OUTDIR/<tag>/vsock_test and vsock_test.version.
# The kernels are fetched with `apt-get download` and unpacked into OUTDIR/cache, never
# installed on this machine. Idempotent: the per-kernel work is keyed on the resolved package
# version, and the initramfs is replaced only when its content changes, so a rerun takes seconds.
#
# usage: scripts/build-guest.sh [--extra-bin DIR]... OUTDIR
#   --extra-bin DIR  copy every file of DIR into the guests' /bin (static binaries only:
#                    the guest userland is busybox, there is no libc to link against).
set -euo pipefail

# The modules every guest loads, with their dependencies added by modprobe. vhost_vsock is
# deliberately absent: with no host-side vsock transport in the guest, a connect() to any CID
# but the guest's own goes through the virtio device (guest-testing.md).
MODULES=(
  vmw_vsock_virtio_transport vsock_diag  # AF_VSOCK over virtio, and its sock_diag interface
  virtio_rng                             # /dev/hwrng (rng-core is built in)
  virtio_net                             # private link between two guests (control channels)
  qemu_fw_cfg                            # the test script arrives as fw_cfg opt/vsockd/script
  virtio_pci                             # last: binds the devices once their drivers exist
)

die() { echo "build-guest: error: $*" >&2; exit 1; }
note() { echo "build-guest: $*" >&2; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
extra_bin_dirs=()
while [ $# -gt 0 ]; do
  case $1 in
    --extra-bin)
      [ $# -ge 2 ] || die "--extra-bin needs a directory"
      [ -d "$2" ] || die "--extra-bin $2: not a directory"
      extra_bin_dirs+=("$(cd "$2" && pwd)"); shift 2 ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
[ $# -eq 1 ] || die "usage: $0 [--extra-bin DIR]... OUTDIR"
mkdir -p "$1"
out=$(cd "$1" && pwd)

missing=()
for tool in apt-get apt-cache dpkg-deb depmod modprobe cpio gzip xz zstd readelf flock od; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
[ -x /bin/busybox ] && dpkg-query -W busybox-static >/dev/null 2>&1 || missing+=("busybox-static")
[ ${#missing[@]} -eq 0 ] || die "missing ${missing[*]}: run scripts/setup.sh"

# Two builds into one OUTDIR (e.g. parallel test runs) must not interleave.
exec 9>"$out/.lock"
flock 9
# Scratch space on the same file system as the outputs, so results move in atomically.
work=$(mktemp -d "$out/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Prints "PACKAGE VERSION" for a guest-kernel tag, resolved from the apt lists at run time.
resolve_kernel() {
  local pkg ver
  case $1 in
    6.1)  # whatever the linux-image-amd64 metapackage currently points at
      read -r pkg ver < <(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
        sed -n 's/^Depends: \(linux-image-[^ ,]*\) (= \([^)]*\)).*/\1 \2/p') || true ;;
    6.12)  # the newest 6.12 that bookworm carries (from bookworm-backports/security)
      pkg=$(apt-cache pkgnames linux-image-6.12. |
        grep -E '^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$' | sort -V | tail -n 1) || true
      [ -z "$pkg" ] || ver=$(apt-cache show --no-all-versions "$pkg" | sed -n 's/^Version: //p') ;;
  esac
  [[ -n ${pkg:-} && -n ${ver:-} ]] ||
    die "no Debian package found for guest kernel $1: run 'apt-get update' (scripts/setup.sh does)"
  echo "$pkg $ver"
}

# Prints the unsigned little-endian integer of BYTES bytes at OFFSET in FILE.
read_le() { od -An -tu"$3" --endian=little -j "$(($2))" -N"$3" "$1" | tr -d ' '; }

# Debian's bzImage carries the kernel ELF compressed (6.1: XZ, 6.12: ZSTD). QEMU boots the
# uncompressed ELF directly through its PVH entry point, which saves the in-guest decompression
# (~6 s per boot under TCG, guest-testing.md). The kernel tree's scripts/extract-vmlinux does
# this, but no small Debian package ships it (linux-kbuild-* lacks it; linux-source-* has it
# inside a 150 MB tarball), so read the payload's place from the boot protocol header instead
# (Documentation/x86/boot.rst: payload_offset/payload_length, protocol >= 2.08).
extract_vmlinux() {
  local bzimage=$1 dest=$2
  [ "$(od -An -c -j 0x202 -N4 "$bzimage" | tr -d ' ')" = HdrS ] || die "$bzimage: not a bzImage"
  [ "$(read_le "$bzimage" 0x206 2)" -ge $((0x208)) ] ||
    die "$bzimage: boot protocol older than 2.08"
  local setup_sects; setup_sects=$(read_le "$bzimage" 0x1f1 1)
  [ "$setup_sects" -ne 0 ] || setup_sects=4
  local start length
  start=$(( (setup_sects + 1) * 512 + $(read_le "$bzimage" 0x248 4) ))
  length=$(read_le "$bzimage" 0x24c 4)
  # The build appends the uncompressed size as a 32-bit LE word after the compressed stream.
  local size; size=$(read_le "$bzimage" $((start + length - 4)) 4)
  local magic decompress
  magic=$(od -An -tx1 -j "$start" -N4 "$bzimage" | tr -d ' ')
  case $magic in
    fd377a58) decompress="xz -dc" ;;
    28b52ffd) decompress="zstd -dcq" ;;
    *) die "$bzimage: kernel payload compression (magic $magic) is neither XZ nor ZSTD" ;;
  esac
  local elf=$work/vmlinux
  dd if="$bzimage" iflag=skip_bytes,count_bytes skip="$start" count=$((length - 4)) bs=1M \
    status=none | $decompress >"$elf" || die "$bzimage: cannot decompress the kernel payload"
  [[ $(stat -c %s "$elf") -eq $size && $(head -c 4 "$elf") == $'\x7fELF' ]] ||
    die "$bzimage: the decompressed payload is not the $size-byte vmlinux ELF"
  mv "$elf" "$dest"
}

# Fetches one kernel package and derives everything the initramfs needs from it: vmlinux,
# the modules in load order (decompressed: busybox insmod reads plain .ko only), VERSION.
# Keyed on the package version and the module list; the unpacked tree is dropped afterwards.
prepare_kernel() {
  local tag=$1 pkg=$2 ver=$3
  local cache=$out/cache/$tag image=$out/$tag
  local key; key=$(printf 'package=%s\nversion=%s\nmodules=%s\n' "$pkg" "$ver" "${MODULES[*]}")
  if [ "$(cat "$cache/stamp" 2>/dev/null)" = "$key" ] && [ -f "$image/vmlinux" ] &&
     [ -f "$image/VERSION" ]; then
    note "$tag: $pkg $ver already prepared"
    return
  fi
  note "$tag: preparing $pkg $ver"
  rm -rf "$cache" "$image"
  mkdir -p "$cache/modules" "$image"
  # apt's download sandbox user cannot write into a root-owned build folder: as root, skip it.
  local sandbox=(); [ "$(id -u)" -ne 0 ] || sandbox=(-o APT::Sandbox::User=root)
  (cd "$cache" && apt-get -q "${sandbox[@]}" download "$pkg=$ver") >&2 ||
    die "apt-get download $pkg=$ver failed: check the apt sources and run 'apt-get update'"
  local root=$work/root-$tag
  dpkg-deb -x "$cache"/*.deb "$root"
  local release; release=$(basename "$(echo "$root"/lib/modules/*)")
  [ -f "$root/boot/vmlinuz-$release" ] || die "$pkg: no /boot/vmlinuz-$release in the package"
  grep -qx CONFIG_PVH=y "$root/boot/config-$release" ||
    die "$pkg: kernel built without CONFIG_PVH, QEMU cannot boot its vmlinux directly"
  extract_vmlinux "$root/boot/vmlinuz-$release" "$image/vmlinux"

  # Debian's packages leave modules.dep to their postinst: compute it inside the unpacked tree.
  depmod -b "$root" "$release"
  local order=() m deps verb path name seen=" "
  for m in "${MODULES[@]}"; do
    # "insmod PATH" per module to load, dependencies first; "builtin NAME" needs nothing.
    deps=$(modprobe -d "$root" -S "$release" --show-depends "$m") || die "$pkg: module $m not found"
    while read -r verb path _; do
      [ "$verb" = insmod ] || continue
      name=$(basename "$path"); name=${name%%.ko*}
      case $seen in *" $name "*) continue ;; esac
      seen+="$name "; order+=("$name")
      case $path in
        *.ko.xz)  xz -dc "$path" ;;
        *.ko.zst) zstd -dcq "$path" ;;
        *.ko.gz)  gzip -dc "$path" ;;
        *.ko)     cat "$path" ;;
        *) die "$path: unknown module file format" ;;
      esac >"$cache/modules/$name.ko"
    done <<<"$deps"
  done
  printf '%s\n' "${order[@]}" >"$cache/modules/load-order"
  printf 'release=%s\npackage=%s\nversion=%s\n' "$release" "$pkg" "$ver" >"$image/VERSION"
  rm -rf "$root"
  echo "$key" >"$cache/stamp"
}

# Assembles the initramfs: busybox as the whole userland, tests/e2e/guest/init as PID 1, the
# modules, and the extra binaries. Cheap, so always rebuilt; reproducible (fixed owners and
# times, sorted entries, no gzip timestamp), so it is replaced only when its content changed.
build_initramfs() {
  local tag=$1 cache=$out/cache/$1 image=$out/$1
  local stage=$work/stage-$tag
  mkdir -p "$stage"/{bin,dev,etc,lib/modules,proc,sys,tmp}
  cp /bin/busybox "$stage/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list); do
    [ "$applet" = busybox ] || ln -s busybox "$stage/bin/$applet"
  done
  install -m 0755 "$repo/tests/e2e/guest/init" "$stage/init"
  cp "$cache/modules/"*.ko "$stage/lib/modules/"
  cp "$cache/modules/load-order" "$stage/etc/modules"
  # The kernel's vsock_test (build_vsock_test), with the package it came from.
  local suite=$out/cache/vsock-test-$tag
  cp "$suite/vsock_test" "$stage/bin/vsock_test"
  cp "$suite/VERSION" "$stage/etc/vsock_test.version"
  local dir file
  shopt -s nullglob
  for dir in "${extra_bin_dirs[@]}"; do
    for file in "$dir"/*; do
      [[ -f $file && -x $file ]] || die "--extra-bin: $file is not an executable file"
      # A dynamically linked program would fail in the guest with a baffling "not found".
      [[ $(readelf -l "$file" 2>/dev/null) != *"Requesting program interpreter"* ]] ||
        die "--extra-bin: $file is dynamically linked; guest binaries must be static"
      rm -f "$stage/bin/$(basename "$file")"
      cp "$file" "$stage/bin/"
    done
  done
  find "$stage" -exec touch -h -d @0 {} +
  (cd "$stage" && find . -mindepth 1 -print0 | LC_ALL=C sort -z |
    cpio --null --create --format=newc --reproducible --owner=0:0 --quiet) |
    gzip -n -9 >"$stage.cpio.gz"
  if cmp -s "$stage.cpio.gz" "$image/initramfs.cpio.gz"; then
    note "$tag: initramfs unchanged"
  else
    mv "$stage.cpio.gz" "$image/initramfs.cpio.gz"
    note "$tag: initramfs written ($(stat -c %s "$image/initramfs.cpio.gz") bytes)"
  fi
}

# The kernel's own tools/testing/vsock/vsock_test, from the linux-source package of the guest
# kernel's version (the same Debian source package builds both). Keyed on that version by
# build-vsock-test.sh itself; the copy next to the image lets the tests check what the guest
# runs.
build_vsock_test() {
  local tag=$1 ver=$2 suite=$out/cache/vsock-test-$1 image=$out/$1
  "$repo/scripts/build-vsock-test.sh" --version "$ver" "$tag" "$suite"
  local from to
  for from in vsock_test VERSION; do
    to=$image/vsock_test; [ "$from" = vsock_test ] || to=$image/vsock_test.version
    cmp -s "$suite/$from" "$to" && continue
    cp "$suite/$from" "$work/vsock_test-$tag"
    mv "$work/vsock_test-$tag" "$to"
  done
}

for tag in 6.1 6.12; do
  kernel=$(resolve_kernel "$tag")
  read -r pkg ver <<<"$kernel"
  prepare_kernel "$tag" "$pkg" "$ver"
  build_vsock_test "$tag" "$ver"
  build_initramfs "$tag"
  note "$tag: ready in $out/$tag ($(sed -n 's/^release=//p' "$out/$tag/VERSION"))"
done

#!/bin/bash
# Builds the real-guest test's assets: Debian bookworm's kernel, an initramfs with its i915 module (and the
# modules i915 depends on), busybox-static, the guest GEM program (tests/guest/gemtest.rs, built static) and
# tests/guest/init. Everything comes from `apt-get download` and this checkout; nothing else is downloaded.
#
#   tests/guest/assets.sh OUT_DIR
#   tests/guest/assets.sh --gemtest-only OUT_DIR    (only the guest program, OUT_DIR/gemtest)
#
# Leaves OUT_DIR/vmlinuz and OUT_DIR/initramfs.cpio.gz. The .deb files are cached in OUT_DIR/debs; the
# guest program and the initramfs are rebuilt on every run.
set -euo pipefail

gemtest_only=
if [ "${1:-}" = --gemtest-only ]; then
    gemtest_only=1
    shift
fi
out=${1:?usage: assets.sh [--gemtest-only] OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out/debs"
out=$(cd "$out" && pwd)

need() { command -v "$1" >/dev/null 2>&1 || { echo "assets.sh: '$1' is missing ($2)" >&2; exit 3; }; }
need rustc "the Rust toolchain"

# The guest program, static (glibc's libc.a through rustc's crt-static).
rustc --edition 2021 -O -C strip=symbols -C target-feature=+crt-static -o "$out/gemtest" "$here/gemtest.rs"
[ -n "$gemtest_only" ] && exit 0

need apt-get "Debian's apt"
need dpkg-deb "Debian's dpkg"
need cpio "apt-get install cpio"
need objcopy "apt-get install binutils"

# 1. Packages: the kernel the bookworm meta package points at, and busybox-static.
cd "$out/debs"
if ! ls linux-image-*-amd64_*.deb >/dev/null 2>&1; then
    image=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -1)
    [ -n "$image" ] || { echo "assets.sh: apt-cache does not know linux-image-amd64 (run apt-get update)" >&2; exit 3; }
    apt-get download "$image" >/dev/null 2>&1 || { echo "assets.sh: apt-get download $image failed" >&2; exit 3; }
fi
if ! ls busybox-static_*.deb >/dev/null 2>&1; then
    apt-get download busybox-static >/dev/null 2>&1 || { echo "assets.sh: apt-get download busybox-static failed" >&2; exit 3; }
fi
kdeb=$(ls linux-image-*-amd64_*.deb | head -1)
bdeb=$(ls busybox-static_*.deb | head -1)

# 2. Unpack the kernel once.
if [ ! -d "$out/kernel" ]; then
    rm -rf "$out/kernel.tmp"
    dpkg-deb -x "$kdeb" "$out/kernel.tmp"
    mv "$out/kernel.tmp" "$out/kernel"
fi
kver=$(ls "$out/kernel/lib/modules" | head -1)
moddir="$out/kernel/lib/modules/$kver"
cp "$out/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"

# 3. i915 and the modules it depends on, in load order, from each module's .modinfo "depends=".
declare -A path_of=()
while IFS= read -r ko; do
    name=$(basename "$ko" .ko)
    path_of[${name//-/_}]=$ko
done < <(find "$moddir/kernel" -name '*.ko')
order=()
declare -A seen=()
visit() {
    local name=${1//-/_} dep
    [ -n "${seen[$name]:-}" ] && return
    seen[$name]=1
    local ko=${path_of[$name]:-}
    [ -n "$ko" ] || { echo "assets.sh: module $name not found in $kver" >&2; exit 3; }
    for dep in $(objcopy -O binary --only-section=.modinfo "$ko" /dev/stdout | tr '\0' '\n' |
        sed -n 's/^depends=//p' | tr ',' ' '); do
        visit "$dep"
    done
    order+=("$name")
}
visit i915

# 4. The initramfs: busybox, the modules in order, init, gemtest.
root="$out/root"
rm -rf "$root" "$out/busybox"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,lib/modules}
dpkg-deb -x "$bdeb" "$out/busybox"
cp "$out/busybox/bin/busybox" "$root/bin/busybox"
for app in sh mount mkdir ls cat echo insmod poweroff sleep dmesg grep head tail; do
    ln -sf busybox "$root/bin/$app"
done
: > "$root/lib/modules/order"
for name in "${order[@]}"; do
    cp "${path_of[$name]}" "$root/lib/modules/$name.ko"
    echo "$name" >> "$root/lib/modules/order"
done
cp "$here/init" "$root/init"
chmod 755 "$root/init"
cp "$out/gemtest" "$root/bin/gemtest"
(cd "$root" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 > "$out/initramfs.cpio.gz.tmp")
mv "$out/initramfs.cpio.gz.tmp" "$out/initramfs.cpio.gz"
echo "assets.sh: kernel $kver, modules: ${order[*]}"

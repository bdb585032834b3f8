#!/bin/bash
# Builds the real-guest test's assets: Debian bookworm's kernel, an initramfs with its i915 module (and the
# modules i915 depends on), busybox-static, the guest GEM program (tests/guest/gemtest.rs, built static) and
# tests/guest/init; and a second initramfs with Debian's Mesa and the guest GL program (tests/guest/gltest.c).
# Everything comes from `apt-get download` and this checkout; nothing else is downloaded.
#
#   tests/guest/assets.sh OUT_DIR
#   tests/guest/assets.sh --gemtest-only OUT_DIR    (only the guest program, OUT_DIR/gemtest)
#
# Leaves OUT_DIR/vmlinuz, OUT_DIR/initramfs.cpio.gz and OUT_DIR/initramfs-mesa.cpio.gz (or OUT_DIR/mesa-skipped
# saying why not). The .deb files are cached in OUT_DIR/debs; the guest programs and the initramfs are rebuilt
# on every run.
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
# vgem: IGT tests that share buffers with another driver (gem_ringfill basic-all) need it.
visit vgem

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

# 5. The Mesa initramfs: the same, plus Debian's Mesa (EGL, GBM, GLES and Vulkan, its Intel drivers
#    alone, so it cannot fall back to software rendering) with every library it needs,
#    glibc's loader, and the guest programs tests/guest/gltest.c and vktest.c built against
#    Debian's -dev headers. Without the headers
#    or the packages it is skipped, with the reason in OUT_DIR/mesa-skipped.
rm -f "$out/initramfs-mesa.cpio.gz" "$out/mesa-skipped"
mesa_skip() { echo "$1" > "$out/mesa-skipped"; echo "assets.sh: Mesa initramfs skipped: $1"; exit 0; }
for h in EGL/egl.h GLES3/gl32.h gbm.h vulkan/vulkan.h; do
    [ -e "/usr/include/$h" ] ||
        mesa_skip "/usr/include/$h is missing (apt-get install libegl-dev libgles-dev libgbm-dev libvulkan-dev)"
done
command -v gcc >/dev/null 2>&1 || mesa_skip "gcc is missing"
gcc -O2 -Wall -o "$out/gltest" "$here/gltest.c" -lEGL -lGLESv2 -lgbm || mesa_skip "gltest.c does not build"
gcc -O2 -Wall -o "$out/vktest" "$here/vktest.c" -lvulkan || mesa_skip "vktest.c does not build"
mkdir -p "$out/debs/mesa"
cd "$out/debs/mesa"
# GL's closure; Vulkan's loader and anv need only libxcb-shm0 beyond it (mesa-vulkan-drivers'
# own dependencies pull in Python and Perl for its tools, which the guest does not run).
pkgs=$( (apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
    --no-enhances libegl1 libgles2 libgbm1 libegl-mesa0 libgl1-mesa-dri 2>/dev/null | grep -E '^[a-z0-9]';
    echo mesa-vulkan-drivers libvulkan1 libxcb-shm0 | tr ' ' '\n') | sort -u)
for p in $pkgs; do
    ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download "$p" >/dev/null 2>&1 || mesa_skip "apt-get download $p failed"
done
if [ "$(cat "$out/mesa/.packages" 2>/dev/null)" != "$pkgs" ]; then
    rm -rf "$out/mesa" "$out/mesa.tmp"
    for p in $pkgs; do dpkg-deb -x "$(ls "${p}"_*.deb | head -1)" "$out/mesa.tmp"; done
    echo "$pkgs" > "$out/mesa.tmp/.packages"
    mv "$out/mesa.tmp" "$out/mesa"
fi
mroot="$out/root-mesa"
rm -rf "$mroot"
cp -a "$root" "$mroot"
for d in lib lib64 usr/lib; do
    [ -d "$out/mesa/$d" ] && mkdir -p "$mroot/$d" && cp -a "$out/mesa/$d/." "$mroot/$d/"
done
# Only the Intel drivers (iris; anv, and hasvk for Gen8 since Mesa 22.3): with no software driver
# beside them, Mesa cannot fall back to one.
find "$mroot/usr/lib/x86_64-linux-gnu/dri" -name '*.so' ! -name 'iris_dri.so' -delete
rm -f "$mroot"/usr/lib/x86_64-linux-gnu/libvulkan_{lvp,radeon}.so "$mroot"/usr/lib/x86_64-linux-gnu/libVkLayer_*
[ -e "$mroot/usr/lib/x86_64-linux-gnu/dri/iris_dri.so" ] || mesa_skip "no iris_dri.so in libgl1-mesa-dri"
[ -e "$mroot/usr/lib/x86_64-linux-gnu/libvulkan_intel.so" ] || mesa_skip "no libvulkan_intel.so in mesa-vulkan-drivers"
mkdir -p "$mroot/usr/share/vulkan/icd.d"
cp -a "$out/mesa/usr/share/glvnd" "$mroot/usr/share/"
cp "$out/mesa/usr/share/vulkan/icd.d/"intel_{,hasvk_}icd.x86_64.json "$mroot/usr/share/vulkan/icd.d/"
[ -d "$out/mesa/usr/share/drirc.d" ] && cp -a "$out/mesa/usr/share/drirc.d" "$mroot/usr/share/"
cp "$out/gltest" "$mroot/bin/gltest"
cp "$out/vktest" "$mroot/bin/vktest"
(cd "$mroot" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 > "$out/initramfs-mesa.cpio.gz.tmp")
mv "$out/initramfs-mesa.cpio.gz.tmp" "$out/initramfs-mesa.cpio.gz"
echo "assets.sh: Mesa initramfs: $(du -sh "$mroot" | cut -f1) ($(echo $pkgs | wc -w) packages)"

# 6. The IGT initramfs, when SHADOWGPU_IGT_TESTS names a folder of IGT 1.27.1 test programs built
#    against Debian's libigt (IGT's own tests are not packaged; nothing here builds them): the Mesa
#    initramfs, plus intel-gpu-tools' libigt and the libraries it needs, the programs in /igt and
#    the subtests to run (tests/guest/igt-subtests).
rm -f "$out/initramfs-igt.cpio.gz" "$out/igt-skipped"
igt_skip() { echo "$1" > "$out/igt-skipped"; echo "assets.sh: IGT initramfs skipped: $1"; exit 0; }
[ -n "${SHADOWGPU_IGT_TESTS:-}" ] || igt_skip "SHADOWGPU_IGT_TESTS is not set (a folder of IGT 1.27.1 test programs)"
[ -d "$SHADOWGPU_IGT_TESTS" ] || igt_skip "SHADOWGPU_IGT_TESTS=$SHADOWGPU_IGT_TESTS is not a folder"
mkdir -p "$out/debs/igt"
cd "$out/debs/igt"
# Libraries only: fonts, debconf and tools in intel-gpu-tools' closure are not needed to run tests.
ipkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
    --no-enhances intel-gpu-tools 2>/dev/null | grep -E '^[a-z0-9]' | sort -u |
    grep -vE '^(fonts-|ttf-|xfonts-|x11-common|cdebconf|debconf|dpkg|install-info|lsb-base|readline-common|sysvinit-utils|tar$|libnewt|libslang|libtextwrap|libdebian-installer|fontconfig-config)')
for p in $ipkgs; do
    ls "${p}"_*.deb >/dev/null 2>&1 || apt-get download "$p" >/dev/null 2>&1 || igt_skip "apt-get download $p failed"
done
iroot="$out/root-igt"
rm -rf "$iroot" "$out/igt.tmp"
for p in $ipkgs; do dpkg-deb -x "$(ls "${p}"_*.deb | head -1)" "$out/igt.tmp"; done
cp -a "$mroot" "$iroot"
for d in lib usr/lib; do
    [ -d "$out/igt.tmp/$d" ] && mkdir -p "$iroot/$d" && cp -a "$out/igt.tmp/$d/." "$iroot/$d/"
done
rm -rf "$out/igt.tmp"
mkdir -p "$iroot/igt"
n=0
while read -r prog _; do
    case "$prog" in ''|'#'*) continue ;; esac
    [ -x "$SHADOWGPU_IGT_TESTS/$prog" ] || igt_skip "$SHADOWGPU_IGT_TESTS/$prog is missing"
    [ -e "$iroot/igt/$prog" ] || { cp "$SHADOWGPU_IGT_TESTS/$prog" "$iroot/igt/"; n=$((n + 1)); }
done < "$here/igt-subtests"
cp "$here/igt-subtests" "$iroot/igt/subtests"
ln -sf busybox "$iroot/bin/timeout"
(cd "$iroot" && find . | LC_ALL=C sort | cpio -o -H newc --quiet | gzip -1 > "$out/initramfs-igt.cpio.gz.tmp")
mv "$out/initramfs-igt.cpio.gz.tmp" "$out/initramfs-igt.cpio.gz"
echo "assets.sh: IGT initramfs: $n programs, $(grep -cvE '^(#|$)' "$here/igt-subtests") subtests"

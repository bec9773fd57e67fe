#!/usr/bin/env bash
# Builds the Bochs that run.sh boots and prints the path of its binary:
# Bochs 3.0 from Debian's source archive (the upstream release, with its
# prebuilt SeaBIOS images), configured with AVX-512 and AMX, plus one fix
# (below). Built once into ${AMX_EMULATOR_CACHE:-~/.cache/kernels-amx-emulator}
# (about 1.5 minutes on 2 cores); later calls reuse it while this script
# is unchanged. Needs curl, xz, a C++ compiler and make.
set -euo pipefail

fail() { echo "error: $*" >&2; exit 1; }

version=3.0
tarball="bochs_${version}+dfsg.orig.tar.xz"
sha256=78f6c73d4a6472d5130a87ab9dc306d02c7c71ed8e25b3a8ef642e2a7acd282b
url="http://deb.debian.org/debian/pool/main/b/bochs/${tarball}"
cache="${AMX_EMULATOR_CACHE:-${XDG_CACHE_HOME:-${HOME}/.cache}/kernels-amx-emulator}"
src="${cache}/bochs-${version}"

# A build is reused only if this script (its fix, its configure flags)
# made it.
recipe="$(sha256sum "$0" | cut -d' ' -f1)"
if [ -x "${src}/bochs" ] && [ "$(cat "${src}/.built" 2>/dev/null)" = "${recipe}" ]; then
    echo "${src}/bochs"
    exit 0
fi
for tool in curl xz make c++; do
    command -v "${tool}" >/dev/null 2>&1 || fail "${tool} not found (Debian: curl xz-utils build-essential)"
done
mkdir -p "${cache}"
echo "building Bochs ${version} in ${src}" >&2
curl -fsSL -o "${cache}/${tarball}" "${url}" || fail "could not download ${url}"
echo "${sha256}  ${cache}/${tarball}" | sha256sum --check --quiet - \
    || fail "${cache}/${tarball} is not the expected archive"
rm -rf "${src}"
tar -xJf "${cache}/${tarball}" -C "${cache}" || fail "could not unpack ${cache}/${tarball}"

# Bochs 3.0 decodes vdpbf16ps's memory operand as one dword, so it scales
# the compressed 8-bit displacement by 4 instead of 64 (the vector, as the
# SDM gives it): `vdpbf16ps zmm5, zmm6, [rsi-0x40]` reads [rsi-4]. The
# AVX512-BF16 unit then fails on the emulator while it passes on Zen 4.
def="${src}/cpu/decoder/ia_opcodes_evex.def"
sed -i '/BX_IA_EVEX_VDPBF16PS_VpsHdqWdq_Kmask/s/OP_mVdq32/OP_mVdq/' "${def}"
grep -q 'VDPBF16PS_MASK_VpsHdqWdqR, BX_ISA_AVX512_BF16, OP_Vps, OP_Hdq, OP_mVdq,' "${def}" \
    || fail "the vdpbf16ps fix did not apply to ${def}"

(
    cd "${src}"
    ./configure --enable-x86-64 --enable-avx --enable-evex --enable-amx \
        --enable-all-optimizations --with-nogui
    make -j"$(nproc)"
) > "${src}/build.log" 2>&1 || fail "Bochs did not build (see ${src}/build.log)"
echo "${recipe}" > "${src}/.built"
echo "${src}/bochs"

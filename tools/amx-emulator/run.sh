#!/usr/bin/env bash
# Runs every bf16 unit of `kernels`, AMX tiles included, on an emulated
# Sapphire Rapids: builds the freestanding program in this folder, boots
# it with GRUB under Bochs twice (the OS granting, then refusing, the
# tile data) and prints its reports. Exit status 0 when both pass.
#
#   BOCHS=/path/to/bochs tools/amx-emulator/run.sh
#
# BOCHS is a Bochs built with --enable-evex --enable-amx (the README's
# "AMX without an AMX CPU" says how, and which Bochs bug to patch);
# BOCHS_BIOS is the folder of its BIOS images (default: `bios` beside the
# binary, as in a Bochs source tree). Needs grub-mkrescue (Debian:
# grub-pc-bin, grub-common, xorriso, mtools) and objcopy.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

fail() { echo "error: $*" >&2; exit 1; }

bochs="${BOCHS:-}"
[ -n "${bochs}" ] || fail "set BOCHS to a Bochs binary built with --enable-evex --enable-amx"
[ -x "${bochs}" ] || fail "BOCHS=${bochs} is not an executable file"
bios="${BOCHS_BIOS:-$(dirname "${bochs}")/bios}"
for image in "${bios}/BIOS-bochs-latest" "${bios}/VGABIOS-lgpl/VGABIOS-lgpl-latest.bin"; do
    [ -f "${image}" ] || fail "no ${image} (set BOCHS_BIOS to the folder of Bochs's BIOS images)"
done
for tool in grub-mkrescue objcopy; do
    command -v "${tool}" >/dev/null 2>&1 || fail "${tool} not found (Debian: grub-pc-bin grub-common xorriso mtools binutils)"
done

cargo build --quiet --release --manifest-path "${here}/Cargo.toml"

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mkdir -p "${work}/iso/boot/grub"
objcopy -O binary "${here}/target/release/amx-emulator" "${work}/iso/boot/amx-emulator.bin"

# 3 GiB: the program's heap is the second GiB. Port 0xE9 is its console.
cat > "${work}/bochsrc" <<EOF
megs: 3072
cpu: model=sapphire_rapids, ips=100000000, reset_on_triple_fault=0
romimage: file=${bios}/BIOS-bochs-latest
vgaromimage: file=${bios}/VGABIOS-lgpl/VGABIOS-lgpl-latest.bin
ata0-master: type=cdrom, path=${work}/boot.iso, status=inserted
boot: cdrom
display_library: nogui
port_e9_hack: enabled=1
log: ${work}/bochs.log
clock: sync=none, time0=local
mouse: enabled=0
panic: action=fatal
error: action=report
EOF

# Boots the program with the GRUB command-line words "$@" (`refuse`: the
# emulated OS refuses the tile data) and checks that it passes.
boot() {
    printf 'set timeout=0\nmenuentry "amx-emulator" {\n    multiboot /boot/amx-emulator.bin %s\n    boot\n}\n' "$*" \
        > "${work}/iso/boot/grub/grub.cfg"
    grub-mkrescue -o "${work}/boot.iso" "${work}/iso" >/dev/null 2>&1 \
        || fail "grub-mkrescue could not make the boot image"
    timeout "${AMX_EMULATOR_TIMEOUT:-900}" "${bochs}" -q -f "${work}/bochsrc" > "${work}/out" 2>&1 || true
    grep -a '^amx-emulator:' "${work}/out" || true
    if ! grep -aq '^amx-emulator: PASS' "${work}/out"; then
        tail -n 20 "${work}/bochs.log" >&2 || true
        fail "the emulated run did not pass (Bochs's log tail above)"
    fi
}

echo "== the OS grants the tile data"
boot
echo "== the OS refuses the tile data"
boot refuse

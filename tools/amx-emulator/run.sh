#!/usr/bin/env bash
# Runs every bf16 unit of `kernels`, AMX tiles included, on an emulated
# Sapphire Rapids: builds the freestanding program in this folder, boots
# it with GRUB under Bochs twice (the OS granting, then refusing, the
# tile data) and prints its reports. Exit status 0 when both pass.
#
#   tools/amx-emulator/run.sh
#
# BOCHS is a Bochs built with --enable-evex --enable-amx and the fix in
# build-bochs.sh; by default build-bochs.sh builds one (once). BOCHS_ROM
# and BOCHS_VGAROM are its BIOS images (default: the SeaBIOS images in
# the `bios` folder beside the binary, as in Bochs's source archive).
# AMX_EMULATOR_TIMEOUT limits each boot (seconds, default 900). Needs
# grub-mkrescue with GRUB's BIOS modules and xorriso (Debian: grub-pc-bin
# grub-common xorriso mtools) and objcopy.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

fail() { echo "error: $*" >&2; exit 1; }

for tool in grub-mkrescue xorriso objcopy; do
    command -v "${tool}" >/dev/null 2>&1 || fail "${tool} not found (Debian: grub-pc-bin grub-common xorriso mtools binutils)"
done
# Without GRUB's BIOS modules grub-mkrescue makes an image Bochs cannot boot.
[ -d /usr/lib/grub/i386-pc ] || fail "no /usr/lib/grub/i386-pc (Debian: grub-pc-bin)"
bochs="${BOCHS:-$("${here}/build-bochs.sh")}"
[ -x "${bochs}" ] || fail "BOCHS=${bochs} is not an executable file"
rom="${BOCHS_ROM:-$(dirname "${bochs}")/bios/bios.bin-1.13.0}"
vgarom="${BOCHS_VGAROM:-$(dirname "${bochs}")/bios/vgabios-cirrus.bin-1.13.0}"
for image in "${rom}" "${vgarom}"; do
    [ -f "${image}" ] || fail "no BIOS image ${image} (set BOCHS_ROM and BOCHS_VGAROM)"
done

cargo build --quiet --release --manifest-path "${here}/Cargo.toml"

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT
mkdir -p "${work}/iso/boot/grub"
objcopy -O binary "${here}/target/release/amx-emulator" "${work}/iso/boot/amx-emulator.bin"

# 2 GiB: the program's heap is the GiB from 512 MiB. Port 0xE9 is its
# console.
cat > "${work}/bochsrc" <<EOF
megs: 2048
cpu: model=sapphire_rapids, ips=100000000, reset_on_triple_fault=0
romimage: file=${rom}
vgaromimage: file=${vgarom}
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
    if ! grub-mkrescue -o "${work}/boot.iso" "${work}/iso" > "${work}/grub.log" 2>&1; then
        cat "${work}/grub.log" >&2
        fail "grub-mkrescue could not make the boot image (its output above)"
    fi
    local status=0
    timeout "${AMX_EMULATOR_TIMEOUT:-900}" "${bochs}" -q -f "${work}/bochsrc" > "${work}/out" 2>&1 || status=$?
    grep -a '^amx-emulator:' "${work}/out" || true
    [ "${status}" -ne 124 ] || fail "Bochs ran past ${AMX_EMULATOR_TIMEOUT:-900} s (AMX_EMULATOR_TIMEOUT)"
    if ! grep -aq '^amx-emulator: PASS' "${work}/out"; then
        tail -n 20 "${work}/bochs.log" >&2 || true
        fail "the emulated run did not pass (Bochs's log tail above)"
    fi
}

echo "== the OS grants the tile data"
boot
echo "== the OS refuses the tile data"
boot refuse

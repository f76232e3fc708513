#!/bin/bash
# immuboot inside a distribution's dracut initramfs (systemd in the initrd):
# the same static binary as immuboot's own initramfs, run by systemd as a
# generator (immuboot-generator) and a service (immuboot-initrd.service).
# See dracut-module/README.md. Works with dracut 059 and dracut-ng.

# Opt-in: only in an initramfs that asks for it (`dracut --add immuboot`, or
# the dracut.conf.d snippet shipped beside this module).
check() {
    require_binaries /usr/lib/immuboot/immuboot-init || return 1
    return 255
}

depends() {
    echo systemd systemd-initrd
    return 0
}

installkernel() {
    # The image is a squashfs file on a loop device, /etc an overlay on
    # tmpfs, the partitions ext4 (vfat for the ESP). udev loads the disk
    # drivers as in any dracut initramfs. The init loads the file systems
    # and loop itself (immuboot-modules), not modules-load.d: loaded before
    # udev starts, they held up the disk (measured, see README.md).
    hostonly='' instmods squashfs loop overlay ext4 vfat
    # A watchdog guards the hand-over to the new root's systemd: the
    # hardware drivers udev matches, and softdog where there is none.
    hostonly='' instmods softdog =drivers/watchdog
}

install() {
    inst_simple /usr/lib/immuboot/immuboot-init
    inst_simple "$moddir/immuboot-modules" /etc/immuboot/modules
    # The generator is the same binary, told apart by its name.
    ln_r /usr/lib/immuboot/immuboot-init "${systemdutildir}/system-generators/immuboot-generator"
    inst_simple "$moddir/immuboot-initrd.service" "${systemdsystemunitdir}/immuboot-initrd.service"
    inst_simple "$moddir/immuboot-initqueue-wake.service" "${systemdsystemunitdir}/immuboot-initqueue-wake.service"
    # The fatal path asks systemd for the reboot.
    inst_multiple systemctl
}

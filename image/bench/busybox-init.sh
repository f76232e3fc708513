#!/bin/busybox sh
# The floor of `cargo xtask bench boot`: the essential work of immuboot's
# init, one step after another, in busybox sh. It loads the drivers this VM
# needs, finds COS_STATE by label, mounts it and slot a's image, puts /etc
# on a tmpfs overlay, COS_PERSISTENT on /usr/local and COS_OEM on /oem, and
# switches to systemd. No boot state, no checks, no layout, no fallback: a
# yardstick for the time that work takes, not a way to boot.
/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run

fail() {
	echo "bench-init: $*" >/dev/kmsg
	sleep 5
	reboot -f
}

for m in virtio_pci virtio_blk ext4 squashfs overlay loop; do
	modprobe "$m" || grep -q "/$m.ko" "/lib/modules/$(uname -r)/modules.builtin" ||
		fail "cannot load $m"
done

# The disk appears when its driver has probed it: poll for the label.
tries=0
until state=$(findfs LABEL=COS_STATE 2>/dev/null); do
	tries=$((tries + 1))
	[ "$tries" -lt 3000 ] || fail "no partition labelled COS_STATE"
	usleep 10000
done

mkdir -p /run/initramfs/cos-state /run/overlay/etc/upper /run/overlay/etc/work
mount -t ext4 -o ro "$state" /run/initramfs/cos-state || fail "cannot mount COS_STATE"
mount -t squashfs -o ro,loop /run/initramfs/cos-state/cOS/a.img /sysroot ||
	fail "cannot mount slot a"
mount -t overlay overlay \
	-o lowerdir=/sysroot/etc,upperdir=/run/overlay/etc/upper,workdir=/run/overlay/etc/work \
	/sysroot/etc || fail "cannot mount the /etc overlay"
mount -t ext4 "$(findfs LABEL=COS_PERSISTENT)" /sysroot/usr/local || fail "cannot mount COS_PERSISTENT"
mount -t ext4 "$(findfs LABEL=COS_OEM)" /sysroot/oem || fail "cannot mount COS_OEM"

echo "bench-init: switching root" >/dev/kmsg
for d in dev proc sys run; do
	mount --move "/$d" "/sysroot/$d"
done
exec switch_root /sysroot /sbin/init

#!/bin/sh
# The node tier guest's /init: load nbd and dm-mod, bring up the SLIRP network (the host's NBD
# sockets are reachable at 10.0.2.100:10809 and :10810 through guestfwd), then serve command channels
# on ttyS1 and ttyS3 (attach agents) and ttyS2 (the test). ttyS0 is the console.
export PATH=/usr/sbin:/usr/bin:/bb DM_DISABLE_UDEV=1 LC_ALL=C
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs run /run; mount -t tmpfs tmp /tmp
while read -r ko; do
  case "$ko" in
    # max_part=0: only kpartx maps partitions, as on nodes where the agent is the one mapping them.
    nbd.ko) insmod /modules/$ko nbds_max=4 max_part=0 ;;
    *) insmod /modules/$ko ;;
  esac || echo "@@VDISK insmod $ko failed"
done < /modules/order
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
for tty in ttyS1 ttyS2 ttyS3; do
  stty -F /dev/$tty raw -echo clocal 115200
  /cmdloop /dev/$tty &
done
echo "@@VDISK READY kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"
while :; do sleep 3600; done

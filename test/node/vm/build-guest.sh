#!/usr/bin/env bash
# Builds the node tier's guest: a stock Debian cloud kernel (fetched with `apt-get download`, never
# installed) and a busybox initramfs carrying nbd-client, kpartx, dmsetup, mkfs.ext4, mkfs.vfat and
# util-linux mount, whose /init serves two command channels (see guest-init.sh). Cached by content.
# Usage: build-guest.sh CACHE_DIR   -> prints "KERNEL=<path>" and "INITRD=<path>"
set -euo pipefail
CACHE=$1
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$CACHE"
say() { printf '[build-guest] %s\n' "$*" >&2; }

KDIR="$CACHE/kernel"
if [[ ! -f "$KDIR/.done" ]]; then
  KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [[ -n "$KPKG" ]] || { say "cannot resolve linux-image-cloud-amd64 (run apt-get update)"; exit 2; }
  say "downloading $KPKG"
  rm -rf "$KDIR"; mkdir -p "$KDIR/dl" "$KDIR/x"
  (cd "$KDIR/dl" && apt-get download "$KPKG" >&2 2>/dev/null) || { say "apt-get download $KPKG failed"; exit 2; }
  dpkg-deb -x "$KDIR"/dl/*.deb "$KDIR/x"
  KVER=$(ls "$KDIR/x/lib/modules" | head -1)
  depmod -b "$KDIR/x" "$KVER"
  echo "$KVER" > "$KDIR/version"
  rm -rf "$KDIR/dl"
  touch "$KDIR/.done"
fi
KVER=$(cat "$KDIR/version")

BINS=(nbd-client kpartx dmsetup mkfs.ext4 mke2fs e2fsck mkfs.vfat fsck.vfat blkid lsblk mount umount blockdev socat)
HASH=$(cat "$HERE/build-guest.sh" "$HERE/guest-init.sh" "$HERE/guest-cmdloop.sh" | sha256sum | cut -c1-12)
INITRD="$CACHE/initramfs-$KVER-$HASH.cpio.gz"
if [[ ! -f "$INITRD" ]]; then
  R=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$R"' EXIT
  mkdir -p "$R"/{usr/bin,usr/sbin,usr/lib/x86_64-linux-gnu,usr/lib64,bb,dev,proc,sys,run,tmp,mnt,etc,modules}
  ln -s usr/bin "$R/bin"; ln -s usr/sbin "$R/sbin"; ln -s usr/lib "$R/lib"; ln -s usr/lib64 "$R/lib64"
  cp /bin/busybox "$R/bb/busybox"
  # busybox --list names itself too: linking that entry would replace the binary with a self-link.
  for applet in $("$R/bb/busybox" --list); do [[ $applet == busybox ]] || ln -sf busybox "$R/bb/$applet"; done
  ln -sf ../../bb/busybox "$R/usr/bin/sh"
  for b in "${BINS[@]}"; do
    p=$(PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v "$b") || { say "missing host binary $b"; exit 2; }
    cp -L "$p" "$R/usr/bin/$b"
    for lib in $(ldd "$p" | grep -o '/[^ )]*'); do
      [[ -e "$R$lib" ]] || { mkdir -p "$(dirname "$R$lib")"; cp -L "$lib" "$R$lib"; }
    done
  done
  cp /etc/mke2fs.conf "$R/etc/" 2>/dev/null || true
  ln -s /proc/self/mounts "$R/etc/mtab"
  echo 'root:x:0:0:root:/:/bin/sh' > "$R/etc/passwd"; echo 'root:x:0:' > "$R/etc/group"
  : > "$R/modules/order"
  seen=" "
  for module in virtio_pci virtio_net nbd dm-mod vfat nls_cp437 nls_ascii nls_iso8859-1 nls_utf8; do
    while read -r _ ko _; do
      [[ $seen == *" $ko "* ]] && continue
      seen+="$ko "
      cp "$ko" "$R/modules/"; basename "$ko" >> "$R/modules/order"
    done < <(modprobe -d "$KDIR/x" -S "$KVER" --ignore-install --show-depends "$module" | grep '^insmod')
  done
  install -m 755 "$HERE/guest-init.sh" "$R/init"
  install -m 755 "$HERE/guest-cmdloop.sh" "$R/cmdloop"
  (cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  find "$CACHE" -maxdepth 1 -name 'initramfs-*.cpio.gz' ! -name "$(basename "$INITRD")" -delete
  say "built $INITRD ($(du -h "$INITRD" | cut -f1))"
fi
echo "KERNEL=$KDIR/x/boot/vmlinuz-$KVER"
echo "INITRD=$INITRD"

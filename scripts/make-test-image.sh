#!/bin/sh
# Builds the offline test guest: a Debian kernel and a busybox initramfs, no disk image.
#
#   make-test-image.sh OUTDIR
#
# Writes OUTDIR/vmlinuz and OUTDIR/initrd.img. The kernel package is fetched once with
# `apt-get download` into $NOVABOX_DEB_CACHE (default OUTDIR/cache) and reused, so later runs
# need no network. Nothing is installed on the host: the .deb is only unpacked with dpkg-deb.
#
# The guest's /init prints stable markers on the serial console that `novabox doctor` (probe
# boot) and the guest tests wait for:
#   novabox-guest: init reached
#   novabox-guest: memory <kB>              (MemTotal: a resize's new RAM is seen here)
#   novabox-guest: hostname <name>          (when a config drive labelled config-2 is attached)
#   novabox-guest: public-key <key>         (idem, the first key)
#   novabox-guest: disk <name> <sectors>    (every virtio/scsi disk at boot, and each one
#                                           hot-plugged later, e.g. an attached volume)
#   novabox-guest: ready
#   novabox-guest: ip <addr>                (once eth0 has a DHCP lease, any time after boot)
# and then keeps a shell on the console.
#
# novabox embeds this file (include_str!) and runs it with sh, so it must stay POSIX sh and
# must not rely on other files from the source tree.
set -eu

out=${1:?usage: make-test-image.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cache=${NOVABOX_DEB_CACHE:-$out/cache}
mkdir -p "$cache"

say() { echo "make-test-image: $*" >&2; }
die() { say "$*"; exit 1; }

busybox=""
for b in /bin/busybox /usr/bin/busybox; do
  # The guest has no libc: only a static busybox runs there.
  if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then busybox=$b; break; fi
done
[ -n "$busybox" ] || die "a static busybox is missing: apt-get install busybox-static"
command -v dpkg-deb >/dev/null || die "dpkg-deb is missing (this recipe needs a Debian-based host)"

# 1. The kernel package. A cached .deb wins, so a re-run is offline.
deb=$(ls -t "$cache"/linux-image-*.deb 2>/dev/null | head -n 1 || true)
if [ -z "$deb" ]; then
  command -v apt-get >/dev/null || die "apt-get is missing and $cache holds no linux-image-*.deb"
  # linux-image-amd64 is a metapackage; the kernel is in the package it depends on.
  pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n 1)
  if [ -z "$pkg" ]; then
    say "apt does not know linux-image-amd64 yet; running apt-get update"
    apt-get update -q >&2 || die "apt-get update failed; fix the apt sources, or put a linux-image-*.deb in $cache"
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -n 1)
  fi
  [ -n "$pkg" ] || die "cannot resolve the kernel package behind linux-image-amd64"
  say "downloading $pkg into $cache"
  (cd "$cache" && apt-get download -q "$pkg" >&2) || die "apt-get download $pkg failed"
  deb=$(ls -t "$cache"/linux-image-*.deb | head -n 1)
fi
say "kernel package $deb"

work=$(mktemp -d "${TMPDIR:-/tmp}/novabox-image.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
dpkg-deb -x "$deb" "$work/pkg"
vmlinuz=$(ls "$work"/pkg/boot/vmlinuz-* 2>/dev/null | head -n 1)
[ -n "$vmlinuz" ] || die "$deb holds no boot/vmlinuz-*"
kver=${vmlinuz##*/vmlinuz-}

# 2. The initramfs tree.
root=$work/root
mkdir -p "$root/bin" "$root/sbin" "$root/proc" "$root/sys" "$root/dev" "$root/mnt/config" "$root/lib/modules" \
  "$root/etc" "$root/tmp" "$root/root"
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done

# Drivers for later guests (disks, NICs, the config drive as iso9660 or vfat) and what they depend on, in an
# order insmod can follow. The .deb ships no modules.dep (depmod writes it on install) and the
# host may have no kmod, so dependencies come from each module's own `depends=` field.
moddir=$work/pkg/lib/modules/$kver
: >"$root/etc/modules"
find "$moddir" -name '*.ko*' >"$work/kolist" 2>/dev/null || true
ko_file() {
  # Module names use '_' where file names may use '-'.
  pat=$(echo "$1" | sed 's/[_-]/[_-]/g')
  grep -E "/${pat}\.ko(\.(xz|zst|gz))?\$" "$work/kolist" | head -n 1
}
ko_cat() {
  case "$1" in
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *) cat "$1" ;;
  esac
}
seen=" "
load_module() {
  case "$seen" in *" $1 "*) return 0 ;; esac
  seen="$seen$1 "
  f=$(ko_file "$1")
  [ -n "$f" ] || return 0 # built into the kernel
  for d in $(ko_cat "$f" | tr '\000' '\n' | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '); do
    load_module "$d"
  done
  f=$(ko_file "$1")
  ko_cat "$f" >"$root/lib/modules/$1.ko"
  echo "$1.ko" >>"$root/etc/modules"
}
for want in virtio_pci virtio_blk virtio_net virtio_scsi ata_piix sr_mod sd_mod cdrom isofs vfat nls_cp437 nls_ascii; do
  load_module "$want"
done

cat >"$root/init" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
echo "novabox-guest: init reached"
echo "novabox-guest: memory $(sed -n 's/^MemTotal: *\([0-9]*\) kB/\1/p' /proc/meminfo)"
while read -r m; do
  insmod "/lib/modules/$m" 2>/dev/null
done </etc/modules
# Report every disk once: those present at boot and those hot-plugged later (volume attach),
# so tests can see the guest notice a new device. Polling is enough; busybox has no udev.
(
  seen=" "
  while true; do
    for b in /sys/block/vd* /sys/block/sd*; do
      [ -e "$b" ] || continue
      n=${b##*/}
      case "$seen" in *" $n "*) continue ;; esac
      seen="$seen$n "
      echo "novabox-guest: disk $n $(cat "$b/size")"
    done
    sleep 1
  done
) &
# Block devices appear asynchronously after their driver loads.
dev=""
for i in 1 2 3 4 5 6 7 8 9 10; do
  dev=$(findfs LABEL=config-2 2>/dev/null) && break
  dev=""
  sleep 0.3
done
if [ -n "$dev" ] && mount -o ro "$dev" /mnt/config 2>/dev/null; then
  meta=/mnt/config/openstack/latest/meta_data.json
  if [ -f "$meta" ]; then
    # meta_data.json is one line of JSON; busybox has no JSON parser, sed is enough here.
    json=$(tr -d '\n' <"$meta")
    echo "$json" | sed -n 's/.*"hostname": *"\([^"]*\)".*/novabox-guest: hostname \1/p'
    echo "$json" | sed -n 's/.*"public_keys": *{ *"[^"]*": *"\([^"]*\)".*/novabox-guest: public-key \1/p'
  fi
fi
# The first NIC asks for an address (bridge mode: novabox's dnsmasq; user mode: qemu's own DHCP)
# in the background, so the console is ready without waiting for it.
if [ -e /sys/class/net/eth0 ]; then
  ip link set lo up
  udhcpc -f -i eth0 -s /etc/udhcpc.script -t 5 -T 1 -A 1 >/dev/null 2>&1 &
  # An ssh-like banner on port 22, so tests can check the user-mode ssh forward reaches the guest.
  nc -ll -p 22 -e /bin/ssh-banner >/dev/null 2>&1 &
fi
echo "novabox-guest: ready"
while true; do
  setsid cttyhack sh
done
EOF
chmod 755 "$root/init"
printf '#!/bin/sh\necho SSH-2.0-novabox-test\n' >"$root/bin/ssh-banner"
chmod 755 "$root/bin/ssh-banner"

# busybox udhcpc runs this on each lease event: set the address, the default route and DNS.
cat >"$root/etc/udhcpc.script" <<'EOF'
#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "${router:-}" ]; then
      ip route add default via "${router%% *}" dev "$interface" 2>/dev/null
    fi
    : >/etc/resolv.conf
    [ -n "${domain:-}" ] && echo "search $domain" >>/etc/resolv.conf
    for d in ${dns:-}; do echo "nameserver $d" >>/etc/resolv.conf; done
    [ "$1" = bound ] && echo "novabox-guest: ip $ip" >/dev/console
    ;;
esac
exit 0
EOF
chmod 755 "$root/etc/udhcpc.script"

# 3. newc cpio, gzip. GNU cpio when present, busybox's otherwise (both write newc).
if command -v cpio >/dev/null; then
  cpio_create() { cpio -o -H newc -R 0:0 --quiet; }
else
  cpio_create() { "$busybox" cpio -o -H newc -R 0:0; }
fi
(cd "$root" && find . | sort | cpio_create) | gzip -9 >"$work/initrd.img"

cp "$vmlinuz" "$work/vmlinuz"
mv "$work/vmlinuz" "$out/vmlinuz"
mv "$work/initrd.img" "$out/initrd.img"
echo "$kver" >"$out/kernel-version"
say "wrote $out/vmlinuz and $out/initrd.img (kernel $kver, $(wc -l <"$root/etc/modules") modules)"

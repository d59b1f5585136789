#!/bin/sh
# /init of the cloudbroker tiny guest (busybox sh, PID 1).
#
# Prints on the serial console, in this order:
#   CLOUDBROKER-GUEST-UP <hostname>            as soon as the kernel runs us
#   CLOUDBROKER-CONFIGDRIVE <device>|none      the NoCloud drive (ISO9660 label "cidata")
#   CLOUDBROKER-HOSTNAME <local-hostname>      from meta-data
#   CLOUDBROKER-INSTANCE-ID <instance-id>      from meta-data
#   CLOUDBROKER-USERDATA-BEGIN / ... / CLOUDBROKER-USERDATA-END
#   CLOUDBROKER-NET eth0 <addr/prefix>|dhcp|none
#   CLOUDBROKER-READY <hostname>               httpd on port 80 is serving
#   CLOUDBROKER-POWEROFF                       on the ACPI power button
# Network: kernel "ip=<addr>::<gw>:<netmask>:<hostname>:<dev>:off" first, then a static address
# in the drive's network-config, else udhcpc in the background.
/bin/busybox mkdir -p /bin /proc /sys /dev /tmp /run /mnt/cidata /www /etc /var/run
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
exec </dev/console >/dev/console 2>&1

for m in $(cat /etc/cloudbroker-modules); do insmod "/lib/modules/$m" 2>/dev/null; done

ip_arg=""
host="tiny"
for word in $(cat /proc/cmdline); do
    case "$word" in
        ip=*) ip_arg="${word#ip=}" ;;
        cb.hostname=*) host="${word#cb.hostname=}" ;;
    esac
done
ip_addr=$(echo "$ip_arg" | cut -d: -f1)
ip_gw=$(echo "$ip_arg" | cut -d: -f3)
ip_mask=$(echo "$ip_arg" | cut -d: -f4)
ip_host=$(echo "$ip_arg" | cut -d: -f5)
[ -n "$ip_host" ] && host="$ip_host"
hostname "$host"
echo "CLOUDBROKER-GUEST-UP $host"

mkdir -p /etc/acpi/PWRF
printf '#!/bin/sh\necho CLOUDBROKER-POWEROFF >/dev/console\nsync\npoweroff -f\n' \
    >/etc/acpi/PWRF/00000080
chmod 755 /etc/acpi/PWRF/00000080
acpid -c /etc/acpi -l /tmp/acpid.log

# The NoCloud drive: a block device whose ISO9660 volume label (bytes 40-71 of sector 16) is
# "cidata". insmod returns after the disk controllers have probed, so the devices are there.
find_cidata() {
    for dev in /dev/sr* /dev/vd* /dev/sd* /dev/hd*; do
        [ -b "$dev" ] || continue
        label=$(dd if="$dev" bs=2048 skip=16 count=1 2>/dev/null |
            dd bs=1 skip=40 count=32 2>/dev/null | tr -d ' \000')
        case "$label" in
            cidata | CIDATA) echo "$dev"; return 0 ;;
        esac
    done
    return 1
}
drive=""
tries=0
while [ "$tries" -lt 10 ]; do
    drive=$(find_cidata) && break
    tries=$((tries + 1))
    sleep 0.1
done
instance_id=""
if [ -n "$drive" ] && mount -t iso9660 -o ro "$drive" /mnt/cidata; then
    echo "CLOUDBROKER-CONFIGDRIVE $drive"
    md=/mnt/cidata/meta-data
    if [ -f "$md" ]; then
        h=$(sed -n 's/^[ "]*local-hostname"*: *"*\([^"]*\)"*,* *$/\1/p' "$md" | head -n 1)
        instance_id=$(sed -n 's/^[ "]*instance-id"*: *"*\([^"]*\)"*,* *$/\1/p' "$md" | head -n 1)
        if [ -n "$h" ]; then host="$h"; hostname "$host"; fi
    fi
    echo "CLOUDBROKER-HOSTNAME $host"
    echo "CLOUDBROKER-INSTANCE-ID $instance_id"
    echo "CLOUDBROKER-USERDATA-BEGIN"
    [ -f /mnt/cidata/user-data ] && cat /mnt/cidata/user-data && echo
    echo "CLOUDBROKER-USERDATA-END"
else
    echo "CLOUDBROKER-CONFIGDRIVE none"
fi

ip link set lo up
ip link set eth0 up 2>/dev/null
net="none"
if [ -n "$ip_addr" ]; then
    prefix=24
    [ -n "$ip_mask" ] && prefix=$(ipcalc -p "$ip_addr" "$ip_mask" | cut -d= -f2)
    ip addr add "$ip_addr/$prefix" dev eth0 && net="$ip_addr/$prefix"
    [ -n "$ip_gw" ] && ip route add default via "$ip_gw"
elif [ -f /mnt/cidata/network-config ]; then
    nc_file=/mnt/cidata/network-config
    quad='[0-9]\{1,3\}\.[0-9]\{1,3\}\.[0-9]\{1,3\}\.[0-9]\{1,3\}'
    addr=$(grep -i 'address' "$nc_file" | grep -o "$quad\(/[0-9]\{1,2\}\)\?" | head -n 1)
    mask=$(grep -i 'netmask' "$nc_file" | grep -o "$quad" | head -n 1)
    gw=$(grep -i 'gateway' "$nc_file" | grep -o "$quad" | head -n 1)
    if [ -n "$addr" ]; then
        case "$addr" in
            */*) ;;
            *) if [ -n "$mask" ]; then
                   addr="$addr/$(ipcalc -p "$addr" "$mask" | cut -d= -f2)"
               else
                   addr="$addr/24"
               fi ;;
        esac
        ip addr add "$addr" dev eth0 && net="$addr"
        [ -n "$gw" ] && ip route add default via "$gw"
    fi
fi
if [ "$net" = "none" ] && [ -e /sys/class/net/eth0 ]; then
    printf '%s\n' '#!/bin/sh' \
        'case "$1" in bound|renew)' \
        '  ip addr flush dev "$interface"' \
        '  ip addr add "$ip/${mask:-24}" dev "$interface"' \
        '  [ -n "$router" ] && ip route add default via "${router%% *}";;' \
        'esac' >/etc/udhcpc.script
    chmod 755 /etc/udhcpc.script
    udhcpc -i eth0 -b -q -s /etc/udhcpc.script >/dev/null 2>&1
    net="dhcp"
fi
echo "CLOUDBROKER-NET eth0 $net"

printf 'cloudbroker tiny guest\nhostname: %s\ninstance-id: %s\n' "$host" "$instance_id" \
    >/www/index.html
httpd -p 80 -h /www
echo "CLOUDBROKER-READY $host"

while true; do
    sleep 3600
done

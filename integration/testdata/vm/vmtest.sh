# The kernel WireGuard scenario, run inside the guest (vm_test.go checks
# what it prints). Three namespace hosts on one underlay bridge:
#   h1 192.0.2.1  --datapath auto (the guest's kernel has WireGuard: kernel)
#   h2 192.0.2.2  --datapath userspace (forced, on a kernel that has it)
#   h3 192.0.2.3  --datapath kernel
#   h4 198.51.100.2 --datapath kernel, behind r4, a stock masquerade router
#                   (WAN 192.0.2.4) configured as the nat bed's NATStock
#                   (testbed/nat.go: one nftables rule and ip_forward), whose
#                   WAN link has MTU 1380 (its veth and the bridge port):
#                   h1's probes find the smaller path
#   h5 198.51.100.34 --datapath kernel, behind r5 (WAN 192.0.2.5), another
#                   stock masquerade router: h4 and h5 are two NATed
#                   kernel hosts, which stock routers keep relayed
#                   (docs/architecture.md's NAT table), through h1
# h2 and h3 cannot reach each other on the underlay (a blackhole route on
# each side), so they are relayed through h1, a kernel host; h4 and h5
# reach only h1 directly (so they are no relay for h2 and h3 either).
# h1 has a host firewall as ufw leaves one after `ufw allow 6783` (the
# README's advice): so every host's probes, STUN and relay frames through
# h1 cross the kernel datapath's port sharing behind it.
# Later r4's WAN address moves to 192.0.2.6 (roaming), and the h2-h3
# underlay opens and closes again (moves onto and off h3's kernel device).
# Lines "RESULT NAME: OK|FAIL ..." are checks; blocks between
# "=== BEGIN NAME" and "=== END NAME" are outputs the test parses.

# busybox sh runs its own applets before PATH (FEATURE_SH_STANDALONE):
# iproute2's ip, which has netns, must be named.
ip() { /usr/sbin/ip "$@"; }
result() { echo "RESULT $1: $2"; }
dump() { # NAME COMMAND...
	local name=$1
	shift
	echo "=== BEGIN $name"
	"$@" 2>&1
	echo "=== END $name"
}

ip link add ul type bridge
ip link set ul up
for i in 1 2 3; do
	ip netns add h$i
	ip link add u$i type veth peer name eth0 netns h$i
	ip link set u$i master ul up
	ip -n h$i link set lo up
	ip -n h$i addr add 192.0.2.$i/24 dev eth0
	ip -n h$i link set eth0 up
done
# stock_router N WAN LAN_GW/PREFIX HOST/PREFIX [MTU]: router rN on the
# underlay at WAN with the nat bed's NATStock configuration (one nftables
# masquerade rule and ip_forward), host hN behind it on LAN; MTU, when
# given, is that of rN's WAN link (its veth and the bridge port).
stock_router() {
	n=$1 wan=$2 gw=$3 haddr=$4 mtu=$5
	ip netns add r$n
	ip link add u$n type veth peer name eth0 netns r$n
	if [ -n "$mtu" ]; then
		ip link set u$n mtu $mtu
		ip -n r$n link set eth0 mtu $mtu
	fi
	ip link set u$n master ul up
	ip -n r$n link set lo up
	ip -n r$n addr add $wan/24 dev eth0
	ip -n r$n link set eth0 up
	ip -n r$n link add lan0 type bridge
	ip -n r$n addr add $gw dev lan0
	ip -n r$n link set lan0 up
	ip netns exec r$n nft -f - <<'NFT'
table ip wwgnat {
	chain nat_postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade
	}
}
NFT
	ip netns exec r$n sysctl -q -w net.ipv4.ip_forward=1
	ip netns add h$n
	ip -n r$n link add l$n type veth peer name eth0 netns h$n
	ip -n r$n link set l$n master lan0 up
	ip -n h$n link set lo up
	ip -n h$n addr add $haddr dev eth0
	ip -n h$n link set eth0 up
	ip -n h$n route add default via ${gw%/*}
}
stock_router 4 192.0.2.4 198.51.100.1/27 198.51.100.2/27 1380
# r5: the same stock router (full MTU), h5 behind it.
stock_router 5 192.0.2.5 198.51.100.33/27 198.51.100.34/27
# h1's firewall: ufw's rules that decide for the underlay, at ufw's
# priority (ufw itself, Python, is not in the guest): default-deny input
# but replies, loopback and the ICMP types ufw's before.rules admit, and
# the allow rule `ufw allow 6783` adds (TCP and UDP). weavewg opens its
# own interfaces in it as on any host.
ip netns exec h1 nft -f - <<'NFT'
table inet hostfw {
	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		ct state invalid drop
		iif lo accept
		icmp type { destination-unreachable, time-exceeded, parameter-problem, echo-request } accept
		tcp dport 6783 accept
		udp dport 6783 accept
	}
}
NFT
[ $? = 0 ] && result "h1-firewall" OK || result "h1-firewall" "FAIL (nft refused the ufw model)"
ip -n h2 route add blackhole 192.0.2.3/32
ip -n h3 route add blackhole 192.0.2.2/32
for i in 2 3; do
	for r in 4 5 6; do
		ip -n h$i route add blackhole 192.0.2.$r/32
	done
	ip -n h4 route add blackhole 192.0.2.$i/32
	ip -n h5 route add blackhole 192.0.2.$i/32
done

# run HOST COMMAND ARGS...: weavewg launch or join on a host, in the
# background, ARGS (flags, then the token) after the common flags. Joining
# with a token, not --password: the password's Argon2id (64 MiB) takes
# minutes in an emulated CPU.
# h3's wireguard-go socket is where wg looks (/var/run/wireguard), so that
# `wg show weavewg0` reads h3's userspace device.
# weavewg_debug=1 on the kernel command line (WEAVEWG_VM_DEBUG=1 for the
# test) runs every daemon with --log-level debug (wireguard-go's handshakes).
loglevel=info
grep -q 'weavewg_debug=1' /proc/cmdline && loglevel=debug
# At debug level the kernel's WireGuard says what it sends and receives
# too (its pr_debug lines; dumped as dmesg at the end).
if [ $loglevel = debug ]; then
	mount -t debugfs none /sys/kernel/debug 2>/dev/null
	echo 'module wireguard +p' >/sys/kernel/debug/dynamic_debug/control || echo "VMTEST no dynamic debug for wireguard"
fi
run() {
	i=$1 cmd=$2
	shift 2
	uapi=/run/h$i-wg
	[ $i = 3 ] && uapi=/run/wireguard
	mkdir -p $uapi
	ip netns exec h$i weavewg $cmd --name h$i --host-ip 10.32.0.$i/12 --log-level $loglevel \
		--state-dir /run/h$i --api-socket /run/h$i.sock --wg-uapi-dir $uapi --no-dns \
		"$@" >/run/h$i.log 2>&1 &
}
run 1 launch
n=0
tok=""
while [ -z "$tok" ] && [ $n -lt 120 ]; do
	tok=$(ip netns exec h1 weavewg token create --api-socket /run/h1.sock 2>/dev/null | sed -n 's/.*weavewg join //p')
	[ -n "$tok" ] || sleep 1
	n=$((n + 1))
done
if [ -n "$tok" ]; then result token OK; else result token "FAIL (h1's API never answered)"; fi
run 2 join --datapath userspace $tok
run 3 join --datapath kernel $tok
run 4 join --datapath kernel $tok
run 5 join --datapath kernel $tok
# A host's own services are closed to the overlay until exposed: open
# each, once its API answers, for the transfers between host addresses.
for i in 1 2 3 4 5; do
	n=0
	until ip netns exec h$i weavewg expose --api-socket /run/h$i.sock >/dev/null 2>&1 || [ $n -ge 180 ]; do
		sleep 1
		n=$((n + 1))
	done
	if [ $n -lt 180 ]; then result "expose-h$i" OK; else result "expose-h$i" "FAIL (weavewg expose never succeeded)"; fi
done

# waitping FROM TO SECONDS: one echo answered within SECONDS tries. A
# pair still silent after 15 tries says what its hosts and h1, the relay,
# see then (slow-ping-*: the relayed pairs start slowly under load; the
# UDP sockets' receive queues, /proc/net/udp, show a relay's backlog;
# the routes, the kernel device's peers and the steering set say which
# device each side's handshakes leave from and reach).
waitping() {
	n=0
	while [ $n -lt $3 ]; do
		ip netns exec h$1 ping -c1 -W1 10.32.0.$2 >/dev/null 2>&1 && return 0
		n=$((n + 1))
		if [ $n = 15 ]; then
			for i in $(echo "$1 $2 1" | tr " " "\n" | sort -u); do
				dump "slow-ping-h$1-h$2-at-h$i" sh -c "date; weavewg status connections --api-socket /run/h$i.sock; weavewg status --json --api-socket /run/h$i.sock | tr ',' '\n' | grep -E 'udp_|handshake|relay|datapath|nickname'; grep 'level=' /run/h$i.log | grep -i handshake | tail -n 40; /usr/sbin/ip netns exec h$i cat /proc/net/udp; /usr/sbin/ip -n h$i route show; /usr/sbin/ip netns exec h$i wg show kwweavewg0 dump; /usr/sbin/ip netns exec h$i nft list set inet weavewg_split_6783 kernel4"
			done
		fi
	done
	return 1
}

# waitlisten HOST PORT: until a listener on PORT is in LISTEN in HOST (0A
# in /proc/net/tcp*, port in hex): in an emulated CPU on a loaded machine a
# background `nc -l` can take more than a second to listen, and a sender
# that comes first is refused and sends nothing.
waitlisten() {
	hex=$(printf '%04X' $2)
	n=0
	until ip netns exec h$1 cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | grep -Eq ":$hex [0-9A-F]+:0000 0A " || [ $n -ge 600 ]; do
		sleep 0.1
		n=$((n + 1))
	done
}

# waitsize FILE BYTES SECONDS: until FILE holds BYTES or SECONDS have
# passed; n is the seconds waited.
waitsize() {
	n=0
	while [ "$(wc -c <$1)" -lt $2 ] && [ $n -lt $3 ]; do
		sleep 1
		n=$((n + 1))
	done
}

# A file per host, fetched by every other host over the overlay.
for i in 1 2 3 4 5; do
	head -c 1000000 /dev/urandom >/run/blob$i
	echo "=== BEGIN sum-h$i"
	sha256sum </run/blob$i
	echo "=== END sum-h$i"
done

for pair in 1-2 2-1 1-3 3-1 2-3 3-2 4-1 1-4 5-1 1-5 4-5 5-4; do
	a=${pair%-*} b=${pair#*-}
	if waitping $a $b 60; then
		result "ping-h$a-h$b" OK
	else
		result "ping-h$a-h$b" FAIL
		# Say why at once: the rest of the run may not finish in time.
		for i in 1 2 3 4 5; do
			dump "failed-ping-connections-h$i" weavewg status connections --api-socket /run/h$i.sock
			dump "failed-ping-log-h$i" tail -n 60 /run/h$i.log
		done
		dump "failed-ping-udp-h1" ip netns exec h1 cat /proc/net/udp
		# At debug level, h1 (the relay) is made to dump its goroutines
		# (SIGQUIT ends it: the rest of the run fails).
		if [ $loglevel = debug ]; then
			for p in $(ip netns pids h1); do
				[ "$(cat /proc/$p/comm)" = weavewg ] && kill -QUIT $p
			done
			sleep 5
			dump "failed-ping-goroutines-h1" sh -c "grep -v 'level=' /run/h1.log | tail -n 4000"
		fi
	fi
done
# Transfers with busybox nc (its wget segfaults here over the overlay).
# Its nc exits as soon as either side's input ends, so the receiver
# listens with an input that never ends (a sleep) and the sender, whose
# file ends, closes the connection: then the receiver has it all.
port=8000
for pair in 1-2 2-1 1-3 3-1 2-3 3-2 1-4 4-1 1-5 5-1 4-5 5-4; do
	a=${pair%-*} b=${pair#*-}
	port=$((port + 1))
	(sleep 600 | ip netns exec h$a nc -l -p $port >/run/got-$a-$b) &
	waitlisten $a $port
	ip netns exec h$b timeout 300 nc 10.32.0.$a $port </run/blob$b
	waitsize /run/got-$a-$b 1000000 10
	echo "=== BEGIN fetch-h$a-h$b"
	sha256sum </run/got-$a-$b
	wc -c </run/got-$a-$b
	echo "=== END fetch-h$a-h$b"
	echo "VMTEST fetched h$a from h$b"
done

# The MSS clamp on the kernel device: once h1's probes have found h4's
# smaller path (its route into kwweavewg0 gets an MTU), a container on h1
# connects to h4, and the SYN that leaves through kwweavewg0 carries the
# MSS of that route, not the container's own (its ethwe0 has the tunnel's
# MTU).
n=0
until ip -n h1 route show 10.32.0.4 | grep -q " mtu " || [ $n -ge 120 ]; do
	sleep 1
	n=$((n + 1))
done
dump route-h1-h4 ip -n h1 route show 10.32.0.4
ip netns add c1
dump attach-c1 ip netns exec h1 weavewg attach --api-socket /run/h1.sock --json --name c1 /run/netns/c1
dump link-c1 ip -n c1 -o link show ethwe0
(sleep 60 | ip netns exec h4 nc -l -p 9100 >/dev/null) &
waitlisten 4 9100
ip netns exec h1 timeout 90 tcpdump -Z root -l -nn -i kwweavewg0 -c 1 'tcp[tcpflags] & tcp-syn != 0 and dst port 9100' >/run/syn 2>/run/syn.err &
n=0
until grep -q "listening on" /run/syn.err || [ $n -ge 60 ]; do
	sleep 1
	n=$((n + 1))
done
echo hello | ip netns exec c1 timeout 30 nc 10.32.0.4 9100
wait $!
dump syn-c1-h4 cat /run/syn /run/syn.err
echo "VMTEST SYN checked"

for i in 1 2 3 4 5; do
	dump "status-h$i" weavewg status --json --api-socket /run/h$i.sock
	dump "connections-h$i" weavewg status connections --api-socket /run/h$i.sock
	dump "routes-h$i" ip -n h$i route show
	dump "kwdev-h$i" ip -n h$i -d link show kwweavewg0
	dump "wgdump-h$i" ip netns exec h$i wg show kwweavewg0 dump
	dump "udp-h$i" ip netns exec h$i cat /proc/net/udp
	dump "snmp-h$i" ip netns exec h$i cat /proc/net/snmp
done

# stream NAME TO FROM PORT ACTION: 1 MB from hFROM to hTO over the overlay
# (port PORT), then ACTION (a function, run once the first half has
# arrived; what it writes to /run/NAME.log is printed after the stream),
# then another 1 MB on the same connection. Blocks: sum-NAME (the whole
# stream's sha256), NAME2-start and NAME2-end (unix seconds around the
# second half), fetch-NAME (what arrived: sha256, bytes).
stream() {
	local name=$1 to=$2 from=$3 port=$4 action=$5
	head -c 1000000 /dev/urandom >/run/${name}1
	head -c 1000000 /dev/urandom >/run/${name}2
	echo "=== BEGIN sum-$name"
	cat /run/${name}1 /run/${name}2 | sha256sum
	echo "=== END sum-$name"
	: >/run/$name.log
	(sleep 900 | ip netns exec h$to nc -l -p $port >/run/got-$name) &
	waitlisten $to $port
	(
		cat /run/${name}1
		waitsize /run/got-$name 1000000 300
		echo "VMTEST $name: first half arrived after ${n}s" >/dev/console
		$action
		date +%s >/run/${name}2.start
		cat /run/${name}2
	) | ip netns exec h$from timeout 600 nc 10.32.0.$to $port
	waitsize /run/got-$name 2000000 30
	# How long the second half took (said, not checked: emulated time).
	echo "VMTEST $name: second half in $(($(date +%s) - $(cat /run/${name}2.start)))s, $(wc -c </run/got-$name) bytes in all"
	dump ${name}2-start cat /run/${name}2.start
	dump ${name}2-end date +%s
	cat /run/$name.log
	echo "=== BEGIN fetch-$name"
	sha256sum </run/got-$name
	wc -c </run/got-$name
	echo "=== END fetch-$name"
}

# The move: a stream from relayed to direct, onto h3's kernel device. h2
# (userspace) sends 1 MB to h3 (kernel) relayed through h1; then the
# underlay between them opens, both sides go direct, h3 routes h2 into
# its kernel device; then h2 sends a second 1 MB on the same connection.
# h2 may still hold the session it made with h3's wireguard-go through
# the relay, and whichever side goes direct first sees the other's
# WireGuard datagrams arrive straight at a host that relays it: the
# second half must cross h3's kernel device (its bytes from h2 grow by it)
# and stay there.
move() {
	dump route-move0-h3 ip -n h3 route show 10.32.0.2 >>/run/move.log
	ip -n h2 route del blackhole 192.0.2.3/32
	ip -n h3 route del blackhole 192.0.2.2/32
	n=0
	until ip -n h3 route show 10.32.0.2 | grep -q kwweavewg0 || [ $n -ge 180 ]; do
		sleep 1
		n=$((n + 1))
	done
	echo "VMTEST move: h3 routes h2 into kwweavewg0 after ${n}s" >/dev/console
	# The kernel handshakes with the peer it was just given at once, with
	# no data to send (the second half is not sent yet): the session the
	# peer then sends with is the kernel's. Without it the peer went on
	# with its session from the relay, which the kernel cannot read.
	n=0
	until [ "$(ip netns exec h3 wg show kwweavewg0 dump | awk -F'\t' '$3 == "192.0.2.2:6783" { print $5 }')" -gt 0 ] 2>/dev/null || [ $n -ge 60 ]; do
		sleep 1
		n=$((n + 1))
	done
	if [ $n -lt 60 ]; then
		result move-handshake OK
	else
		result move-handshake "FAIL (h3's kernel device made no handshake with h2 in 60 s, with nothing sent yet)"
	fi >/dev/console
	echo "VMTEST move: h3's kernel handshook with h2 after ${n}s" >/dev/console
	dump wgdump-move0-h3 ip netns exec h3 wg show kwweavewg0 dump >>/run/move.log
}
stream move 3 2 9200 move
dump wgdump-move1-h3 ip netns exec h3 wg show kwweavewg0 dump
dump route-move1-h3 ip -n h3 route show 10.32.0.2
dump connections-move-h3 weavewg status connections --api-socket /run/h3.sock
echo "VMTEST move done"

# The move back: h2 streams to h3 again, now on h3's kernel device; the
# underlay between them closes again under the stream, both go back to
# the relay through h1, h3 routes h2 into its TUN again. h2 holds the
# session it made with h3's kernel, which h3's wireguard-go cannot read:
# h3's wireguard-go must handshake with h2 at once, with nothing sent yet
# (h2 would give up on its session only 15 s after data of its own went
# unanswered), and the second half must arrive, relayed.
h2key=$(ip netns exec h3 wg show kwweavewg0 dump | awk -F'\t' '$3 == "192.0.2.2:6783" { print $1 }')
# wgohs: h3's wireguard-go's last handshake with h2 (unix seconds)
wgohs() {
	ip netns exec h3 wg show weavewg0 dump | awk -F'\t' -v k="$h2key" '$1 == k { print $5 }'
}
back() {
	dump route-back0-h3 ip -n h3 route show 10.32.0.2 >>/run/back.log
	dump wgdump-back0-h3 ip netns exec h3 wg show kwweavewg0 dump >>/run/back.log
	hs0=$(wgohs)
	ip -n h2 route add blackhole 192.0.2.3/32
	ip -n h3 route add blackhole 192.0.2.2/32
	n=0
	until ip -n h3 route show 10.32.0.2 | grep -q "dev weavewg0" || [ $n -ge 180 ]; do
		sleep 1
		n=$((n + 1))
	done
	echo "VMTEST back: h3 routes h2 into weavewg0 after ${n}s" >/dev/console
	n=0
	until [ "$(wgohs)" -gt "${hs0:-0}" ] 2>/dev/null || [ $n -ge 60 ]; do
		sleep 1
		n=$((n + 1))
	done
	if [ -n "$h2key" ] && [ $n -lt 60 ]; then
		result back-handshake OK
	else
		result back-handshake "FAIL (h3's wireguard-go made no handshake with h2 (key '$h2key', last at '$hs0') in 60 s after h2 came back to it, with nothing sent yet)"
	fi >/dev/console
	echo "VMTEST back: h3's wireguard-go handshook with h2 after ${n}s" >/dev/console
	dump wgodump-back0-h3 ip netns exec h3 wg show weavewg0 dump >>/run/back.log
}
stream back 3 2 9300 back
dump wgodump-back1-h3 ip netns exec h3 wg show weavewg0 dump
dump route-back1-h3 ip -n h3 route show 10.32.0.2
dump connections-back-h3 weavewg status connections --api-socket /run/h3.sock
echo "VMTEST back done"

# Roaming: r4's WAN address moves from 192.0.2.4 to 192.0.2.6 (a new
# lease; masquerade forgets the old address's flows) under a stream from
# h4 to h1, kernel to kernel. The kernel does not roam h4 itself (its
# datagrams from the new address are steered to h1's wireguard-go): h1's
# path owner must learn the new address from h4's probes and give it to
# the kernel device, and the stream's second half, sent at once, must
# arrive through h1's kernel device.
roam() {
	dump wgdump-roam0-h1 ip netns exec h1 wg show kwweavewg0 dump >>/run/roam.log
	ip -n r4 addr del 192.0.2.4/24 dev eth0
	ip -n r4 addr add 192.0.2.6/24 dev eth0
}
stream roam 1 4 9400 roam
dump wgdump-roam1-h1 ip netns exec h1 wg show kwweavewg0 dump
dump route-roam1-h1 ip -n h1 route show 10.32.0.4
dump connections-roam-h1 weavewg status connections --api-socket /run/h1.sock
dump connections-roam-h4 weavewg status connections --api-socket /run/h4.sock
echo "VMTEST roam done"

# Stop the daemons (SIGTERM) and wait for them to exit.
ip netns exec h1 weavewg detach --api-socket /run/h1.sock /run/netns/c1 >/dev/null 2>&1
for i in 1 2 3 4 5; do
	kill $(ip netns pids h$i) 2>/dev/null
done
n=0
while [ -n "$(ip netns pids h1)$(ip netns pids h2)$(ip netns pids h3)$(ip netns pids h4)$(ip netns pids h5)" ] && [ $n -lt 120 ]; do
	sleep 1
	n=$((n + 1))
done
for i in 1 2 3 4 5; do
	# At debug level the whole log (WEAVEWG_VM_CONSOLE keeps it).
	if [ $loglevel = debug ]; then
		dump "log-h$i" cat /run/h$i.log
	else
		dump "log-h$i" grep -v level=DEBUG /run/h$i.log
	fi
	dump "after-h$i" ip -n h$i link show
done
if [ $loglevel = debug ]; then
	dump dmesg dmesg
fi

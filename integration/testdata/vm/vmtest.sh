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
# h2 and h3 cannot reach each other on the underlay (a blackhole route on
# each side), so they are relayed through h1, a kernel host; h4 reaches
# only h1 directly (so it is no relay for them either).
# Lines "RESULT NAME: OK|FAIL ..." are checks; blocks between
# "=== BEGIN NAME" and "=== END NAME" are outputs the test parses.

# busybox sh runs its own applets before PATH (FEATURE_SH_STANDALONE):
# iproute2's ip, which has netns, must be named.
ip() { /usr/sbin/ip "$@"; }
result() { echo "RESULT $1: $2"; }
dump() { # NAME COMMAND...
	name=$1; shift
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
ip netns add r4
ip link add u4 type veth peer name eth0 netns r4
ip link set u4 mtu 1380
ip link set u4 master ul up
ip -n r4 link set lo up
ip -n r4 link set eth0 mtu 1380
ip -n r4 addr add 192.0.2.4/24 dev eth0
ip -n r4 link set eth0 up
ip -n r4 link add lan0 type bridge
ip -n r4 addr add 198.51.100.1/27 dev lan0
ip -n r4 link set lan0 up
ip netns exec r4 nft -f - <<'NFT'
table ip wwgnat {
	chain nat_postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname "eth0" masquerade
	}
}
NFT
ip netns exec r4 sysctl -q -w net.ipv4.ip_forward=1
ip netns add h4
ip -n r4 link add l4 type veth peer name eth0 netns h4
ip -n r4 link set l4 master lan0 up
ip -n h4 link set lo up
ip -n h4 addr add 198.51.100.2/27 dev eth0
ip -n h4 link set eth0 up
ip -n h4 route add default via 198.51.100.1
ip -n h2 route add blackhole 192.0.2.3/32
ip -n h3 route add blackhole 192.0.2.2/32
for i in 2 3; do
	ip -n h$i route add blackhole 192.0.2.4/32
	ip -n h4 route add blackhole 192.0.2.$i/32
done

# run HOST COMMAND ARGS...: weavewg launch or join on a host, in the
# background, ARGS (flags, then the token) after the common flags. Joining
# with a token, not --password: the password's Argon2id (64 MiB) takes
# minutes in an emulated CPU.
run() {
	i=$1 cmd=$2
	shift 2
	mkdir -p /run/h$i-wg
	ip netns exec h$i weavewg $cmd --name h$i --host-ip 10.32.0.$i/12 \
		--state-dir /run/h$i --api-socket /run/h$i.sock --wg-uapi-dir /run/h$i-wg --no-dns \
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
# A host's own services are closed to the overlay until exposed: open
# each, once its API answers, for the transfers between host addresses.
for i in 1 2 3 4; do
	n=0
	until ip netns exec h$i weavewg expose --api-socket /run/h$i.sock >/dev/null 2>&1 || [ $n -ge 180 ]; do
		sleep 1
		n=$((n + 1))
	done
	if [ $n -lt 180 ]; then result "expose-h$i" OK; else result "expose-h$i" "FAIL (weavewg expose never succeeded)"; fi
done

# waitping FROM TO SECONDS: one echo answered within SECONDS tries.
waitping() {
	n=0
	while [ $n -lt $3 ]; do
		ip netns exec h$1 ping -c1 -W1 10.32.0.$2 >/dev/null 2>&1 && return 0
		n=$((n + 1))
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

# A file per host, fetched by every other host over the overlay.
for i in 1 2 3 4; do
	head -c 1000000 /dev/urandom >/run/blob$i
	echo "=== BEGIN sum-h$i"
	sha256sum </run/blob$i
	echo "=== END sum-h$i"
done

for pair in 1-2 2-1 1-3 3-1 2-3 3-2 4-1 1-4; do
	a=${pair%-*} b=${pair#*-}
	if waitping $a $b 60; then
		result "ping-h$a-h$b" OK
	else
		result "ping-h$a-h$b" FAIL
		# Say why at once: the rest of the run may not finish in time.
		for i in $(echo "$a $b 1 4" | tr " " "\n" | sort -u); do
			dump "failed-ping-connections-h$i" weavewg status connections --api-socket /run/h$i.sock
			dump "failed-ping-log-h$i" tail -n 60 /run/h$i.log
		done
	fi
done
# Transfers with busybox nc (its wget segfaults here over the overlay).
# Its nc exits as soon as either side's input ends, so the receiver
# listens with an input that never ends (a sleep) and the sender, whose
# file ends, closes the connection: then the receiver has it all.
port=8000
for pair in 1-2 2-1 1-3 3-1 2-3 3-2 1-4 4-1; do
	a=${pair%-*} b=${pair#*-}
	port=$((port + 1))
	(sleep 600 | ip netns exec h$a nc -l -p $port >/run/got-$a-$b) &
	waitlisten $a $port
	ip netns exec h$b timeout 300 nc 10.32.0.$a $port </run/blob$b
	n=0
	while [ "$(wc -c </run/got-$a-$b)" -lt 1000000 ] && [ $n -lt 10 ]; do
		sleep 1
		n=$((n + 1))
	done
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

for i in 1 2 3 4; do
	dump "status-h$i" weavewg status --json --api-socket /run/h$i.sock
	dump "connections-h$i" weavewg status connections --api-socket /run/h$i.sock
	dump "routes-h$i" ip -n h$i route show
	dump "kwdev-h$i" ip -n h$i -d link show kwweavewg0
	dump "wgdump-h$i" ip netns exec h$i wg show kwweavewg0 dump
	dump "udp-h$i" ip netns exec h$i cat /proc/net/udp
	dump "snmp-h$i" ip netns exec h$i cat /proc/net/snmp
done

# Stop the daemons (SIGTERM) and wait for them to exit.
# A stream that moves from relayed to direct, onto h3's kernel device:
# h2 (userspace) sends 1 MB to h3 (kernel) relayed through h1; then the
# underlay between them opens, both sides go direct, h3 routes h2 into
# its kernel device; then h2 sends a second 1 MB on the same connection.
# h2 may still hold the session it made with h3's wireguard-go through
# the relay, and whichever side goes direct first sees the other's
# WireGuard datagrams arrive straight at a host that relays it: the
# second half must cross h3's kernel device (its bytes from h2 grow by it)
# and stay there.
head -c 1000000 /dev/urandom >/run/move1
head -c 1000000 /dev/urandom >/run/move2
echo "=== BEGIN sum-move"
cat /run/move1 /run/move2 | sha256sum
echo "=== END sum-move"
(sleep 900 | ip netns exec h3 nc -l -p 9200 >/run/got-move) &
waitlisten 3 9200
(
	cat /run/move1
	n=0
	while [ "$(wc -c </run/got-move)" -lt 1000000 ] && [ $n -lt 300 ]; do
		sleep 1
		n=$((n + 1))
	done
	echo "VMTEST move: first half arrived relayed after ${n}s" >/dev/console
	dump route-move0-h3 ip -n h3 route show 10.32.0.2 >/run/move.log
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
	date +%s >/run/move2.start
	cat /run/move2
) | ip netns exec h2 timeout 600 nc 10.32.0.3 9200
n=0
while [ "$(wc -c </run/got-move)" -lt 2000000 ] && [ $n -lt 30 ]; do
	sleep 1
	n=$((n + 1))
done
# How long the second half took (said, not checked: emulated time).
echo "VMTEST move: second half in $(($(date +%s) - $(cat /run/move2.start)))s, $(wc -c </run/got-move) bytes in all"
cat /run/move.log
echo "=== BEGIN fetch-move"
sha256sum </run/got-move
wc -c </run/got-move
echo "=== END fetch-move"
dump wgdump-move1-h3 ip netns exec h3 wg show kwweavewg0 dump
dump route-move1-h3 ip -n h3 route show 10.32.0.2
dump connections-move-h3 weavewg status connections --api-socket /run/h3.sock
echo "VMTEST move done"

ip netns exec h1 weavewg detach --api-socket /run/h1.sock /run/netns/c1 >/dev/null 2>&1
for i in 1 2 3 4; do
	kill $(ip netns pids h$i) 2>/dev/null
done
n=0
while [ -n "$(ip netns pids h1)$(ip netns pids h2)$(ip netns pids h3)$(ip netns pids h4)" ] && [ $n -lt 120 ]; do
	sleep 1
	n=$((n + 1))
done
for i in 1 2 3 4; do
	dump "log-h$i" cat /run/h$i.log
	dump "after-h$i" ip -n h$i link show
done

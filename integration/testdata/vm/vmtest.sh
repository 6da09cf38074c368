# The kernel WireGuard scenario, run inside the guest (vm_test.go checks
# what it prints). Three namespace hosts on one underlay bridge:
#   h1 192.0.2.1  --datapath auto (the guest's kernel has WireGuard: kernel)
#   h2 192.0.2.2  --datapath userspace (forced, on a kernel that has it)
#   h3 192.0.2.3  --datapath kernel
# h2 and h3 cannot reach each other on the underlay (a blackhole route on
# each side), so they are relayed through h1, a kernel host.
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
ip -n h2 route add blackhole 192.0.2.3/32
ip -n h3 route add blackhole 192.0.2.2/32

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
# A host's own services are closed to the overlay until exposed: open
# each, once its API answers, for the transfers between host addresses.
for i in 1 2 3; do
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

# A file per host, fetched by every other host over the overlay.
for i in 1 2 3; do
	head -c 1000000 /dev/urandom >/run/blob$i
	echo "=== BEGIN sum-h$i"
	sha256sum </run/blob$i
	echo "=== END sum-h$i"
done

for pair in 1-2 2-1 1-3 3-1 2-3 3-2; do
	a=${pair%-*} b=${pair#*-}
	if waitping $a $b 60; then result "ping-h$a-h$b" OK; else result "ping-h$a-h$b" FAIL; fi
done
# Transfers with busybox nc (its wget segfaults here over the overlay).
# Its nc exits as soon as either side's input ends, so the receiver
# listens with an input that never ends (a sleep) and the sender, whose
# file ends, closes the connection: then the receiver has it all.
port=8000
for pair in 1-2 2-1 1-3 3-1 2-3 3-2; do
	a=${pair%-*} b=${pair#*-}
	port=$((port + 1))
	(sleep 600 | ip netns exec h$a nc -l -p $port >/run/got-$a-$b) &
	sleep 1
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

for i in 1 2 3; do
	dump "status-h$i" weavewg status --json --api-socket /run/h$i.sock
	dump "connections-h$i" weavewg status connections --api-socket /run/h$i.sock
	dump "routes-h$i" ip -n h$i route show
	dump "kwdev-h$i" ip -n h$i -d link show kwweavewg0
	dump "wgdump-h$i" ip netns exec h$i wg show kwweavewg0 dump
	dump "udp-h$i" ip netns exec h$i cat /proc/net/udp
	dump "snmp-h$i" ip netns exec h$i cat /proc/net/snmp
done

# Stop the daemons (SIGTERM) and wait for them to exit.
for i in 1 2 3; do
	kill $(ip netns pids h$i) 2>/dev/null
done
n=0
while [ -n "$(ip netns pids h1)$(ip netns pids h2)$(ip netns pids h3)" ] && [ $n -lt 120 ]; do
	sleep 1
	n=$((n + 1))
done
for i in 1 2 3; do
	dump "log-h$i" cat /run/h$i.log
	dump "after-h$i" ip -n h$i link show
done

// Package sim runs many peers' control planes in one process: for each
// simulated peer a real discovery.Router (Noise handshakes, gossip, routes,
// channels), a real ipam.Allocator and a real dns.Server table, with no TUN,
// no WireGuard and no sockets. Routers talk over an in-memory network
// (Network, through the discovery.Network seam) that counts every frame and
// byte each peer sends and can partition the peers into groups.
//
// Cluster drives the peers (join, leave, partition, heal) and tells when
// every live peer agrees on the topology, the IPAM ring and the DNS names
// (Converged). `make bench-scale` times convergence with it at N = 100, 300
// and 1,000 (cmd/simbench); TestRandomChurn runs a seeded random sequence
// at N = 20 in `make test`.
//
// # What one process cannot show
//
// Every record and channel message is signed (XEdDSA) and every receiver
// verifies it: a record change costs one verification per peer, O(N) CPU
// across the mesh but O(1) per host. In one process the N peers'
// verifications add up to O(N²) CPU on the simulator's cores. The cluster
// therefore shares one VerifyCache between its routers: a signature is
// checked once for the whole simulation and its later checks are cache
// hits. The cache counts both, so the bench reports the verifications each
// peer would do on its own host (calls) beside the ones the simulator did.
//
// The node loop (node.go) is the control-plane half of the daemon's
// reconcile loop (daemon/daemon.go reconcile, daemon/ipam.go ipamTick):
// reachability to IPAM and DNS, the allocator's tick and anti-entropy, one
// "container" per peer whose address comes from IPAM and whose name goes
// into DNS.
package sim

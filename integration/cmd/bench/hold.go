package main

import (
	"fmt"
	"os"
	"time"
)

// --hold keeps the test bed up with every path ready and measures nothing:
// for profiling a path by hand (perf record on the printed pids, iperf3
// between the printed namespaces). Ctrl-C tears the bed down.

// holdPath is what --hold prints of one path.
type holdPath struct {
	key, name    string
	srcNS, dstNS string
	dst          string
	pids         []int
}

func hold(paths []holdPath) {
	for _, p := range paths {
		fmt.Printf("(%s) %s: from netns %s to %s in netns %s; tunnel pids %v\n", p.key, p.name, p.srcNS, p.dst, p.dstNS, p.pids)
	}
	fmt.Fprintln(os.Stderr, "bench: --hold: the paths are up; Ctrl-C (SIGINT/SIGTERM) tears the bed down")
	for {
		time.Sleep(time.Hour)
	}
}

package testbed

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// A qemu guest for what this machine's kernel lacks (kernel WireGuard):
// qemu in software emulation (TCG; this machine is itself a VM without
// nested virtualisation) boots Debian's own kernel from a tree that `make
// deps` unpacks from Debian's linux-image package, with an initramfs this
// file writes: busybox, iproute2's ip and wireguard-tools' wg with their
// libraries, the weavewg binary, the kernel modules asked for (and what
// they depend on, read from their .modinfo), and a script run as init.

// EnvVMKernel names a directory holding an unpacked Debian linux-image
// package (boot/vmlinuz-VERSION, lib/modules/VERSION); DefaultVMKernelDir
// is where `make deps` puts one.
const (
	EnvVMKernel        = "WEAVEWG_VM_KERNEL"
	DefaultVMKernelDir = "/var/cache/weavewg-test/linux-image"
)

// VMKernel is an unpacked kernel package.
type VMKernel struct {
	Vmlinuz string // boot/vmlinuz-VERSION
	Modules string // lib/modules/VERSION
	Version string
}

// FindVMKernel finds the kernel tree, or says why there is none.
func FindVMKernel() (VMKernel, error) {
	dir := os.Getenv(EnvVMKernel)
	if dir == "" {
		dir = DefaultVMKernelDir
	}
	vms, _ := filepath.Glob(filepath.Join(dir, "boot", "vmlinuz-*"))
	if len(vms) == 0 {
		return VMKernel{}, fmt.Errorf("no Debian kernel in %s (make deps unpacks linux-image-amd64 there; or set %s)", dir, EnvVMKernel)
	}
	slices.Sort(vms)
	v := strings.TrimPrefix(filepath.Base(vms[len(vms)-1]), "vmlinuz-")
	k := VMKernel{Vmlinuz: vms[len(vms)-1], Modules: filepath.Join(dir, "lib", "modules", v), Version: v}
	if _, err := os.Stat(k.Modules); err != nil {
		return VMKernel{}, fmt.Errorf("kernel %s has no modules: %w", v, err)
	}
	return k, nil
}

// ModuleOrder is the .ko files (paths under k.Modules) that loading names
// needs, each after those it depends on. Built-in modules are skipped.
func (k VMKernel) ModuleOrder(names ...string) ([]string, error) {
	byName := map[string]string{}
	err := filepath.WalkDir(filepath.Join(k.Modules, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".ko") {
			byName[modName(strings.TrimSuffix(d.Name(), ".ko"))] = p
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	builtin, _ := os.ReadFile(filepath.Join(k.Modules, "modules.builtin"))
	var order []string
	done := map[string]bool{}
	var visit func(n string, depth int) error
	visit = func(n string, depth int) error {
		n = modName(n)
		if done[n] || n == "" {
			return nil
		}
		done[n] = true
		p, ok := byName[n]
		if !ok {
			if bytes.Contains(builtin, []byte("/"+n+".ko")) || bytes.Contains(builtin, []byte("/"+strings.ReplaceAll(n, "_", "-")+".ko")) {
				return nil
			}
			return fmt.Errorf("module %s: not in %s", n, k.Modules)
		}
		deps, err := moduleDepends(p)
		if err != nil {
			return fmt.Errorf("module %s: %w", n, err)
		}
		for _, d := range deps {
			if err := visit(d, depth+1); err != nil {
				return err
			}
		}
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		if err := visit(n, 0); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// modName is a module's name as the kernel compares it ('-' is '_').
func modName(n string) string { return strings.ReplaceAll(n, "-", "_") }

// moduleDepends reads depends= from a module's .modinfo section.
func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return nil, errors.New("no .modinfo section")
	}
	b, err := s.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			if len(v) == 0 {
				return nil, nil
			}
			return strings.Split(string(v), ","), nil
		}
	}
	return nil, nil
}

// Initramfs is a newc cpio archive being written.
type Initramfs struct {
	w    *bufio.Writer
	f    *os.File
	ino  uint32
	dirs map[string]bool // directories added
	libs map[string]bool // shared libraries added
	err  error
}

// NewInitramfs starts an archive at path.
func NewInitramfs(path string) (*Initramfs, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &Initramfs{f: f, w: bufio.NewWriterSize(f, 1<<20), dirs: map[string]bool{}, libs: map[string]bool{}}, nil
}

func (a *Initramfs) header(name string, mode uint32, size int) {
	if a.err != nil {
		return
	}
	a.ino++
	name = strings.TrimPrefix(name, "/")
	fmt.Fprintf(a.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		a.ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	a.w.WriteString(name)
	a.w.WriteByte(0)
	a.pad(110 + len(name) + 1)
}

func (a *Initramfs) pad(n int) {
	for ; n%4 != 0; n++ {
		a.w.WriteByte(0)
	}
}

// Dir adds a directory and its parents.
func (a *Initramfs) Dir(name string) {
	name = strings.Trim(name, "/")
	if name == "" || name == "." || a.dirs[name] {
		return
	}
	a.Dir(filepath.Dir(name))
	a.dirs[name] = true
	a.header(name, 0o040755, 0)
}

// File adds a file with mode perm and contents b.
func (a *Initramfs) File(name string, perm uint32, b []byte) {
	a.Dir(filepath.Dir(name))
	a.header(name, 0o100000|perm, len(b))
	if a.err == nil {
		a.w.Write(b)
		a.pad(len(b))
	}
}

// Copy adds the host file src at name (symlinks followed).
func (a *Initramfs) Copy(name, src string) {
	b, err := os.ReadFile(src)
	if err != nil {
		a.err = errors.Join(a.err, err)
		return
	}
	st, _ := os.Stat(src)
	a.File(name, uint32(st.Mode().Perm()), b)
}

// Symlink adds name pointing at target.
func (a *Initramfs) Symlink(name, target string) {
	a.Dir(filepath.Dir(name))
	a.header(name, 0o120777, len(target))
	if a.err == nil {
		a.w.WriteString(target)
		a.pad(len(target))
	}
}

// CopyDynamic adds the host program src at name with the shared libraries
// ldd lists for it, each at its host path.
func (a *Initramfs) CopyDynamic(name, src string) {
	a.Copy(name, src)
	out, err := exec.Command("ldd", src).Output()
	if err != nil {
		a.err = errors.Join(a.err, fmt.Errorf("ldd %s: %v", src, err))
		return
	}
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		for _, p := range f {
			if strings.HasPrefix(p, "/") && !a.libs[p] {
				a.libs[p] = true
				a.Copy(p, p)
			}
		}
	}
}

// Close writes the trailer.
func (a *Initramfs) Close() error {
	a.header("TRAILER!!!", 0, 0)
	err := a.err
	if ferr := a.w.Flush(); err == nil {
		err = ferr
	}
	if cerr := a.f.Close(); err == nil {
		err = cerr
	}
	return err
}

// RunVM boots kernel with initrd under qemu (TCG) with no network card,
// appends cmdline to the kernel's command line, and returns everything the
// guest printed on its serial console, line by line to progress as well.
// The guest is expected to power off; it is killed at the deadline.
func RunVM(ctx context.Context, kernel, initrd, cmdline string, memMB int, progress func(string)) (string, error) {
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", fmt.Sprint(memMB),
		"-smp", "1", "-nic", "none", "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", initrd,
		"-append", "console=ttyS0 quiet panic=-1 "+cmdline)
	cmd.WaitDelay = 5 * time.Second
	// qemu runs in no namespace of the bed, so no Sweep finds it: a test
	// binary that dies (go test's -timeout panics) must take it along, or
	// it keeps a core busy for the rest of its guest's run.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return "", err
	}
	var all strings.Builder
	r := bufio.NewReader(out)
	for {
		l, rerr := r.ReadString('\n')
		all.WriteString(l)
		if progress != nil && l != "" {
			progress(strings.TrimRight(l, "\r\n"))
		}
		if rerr == io.EOF {
			break
		} else if rerr != nil {
			break
		}
	}
	err = cmd.Wait()
	if ctx.Err() != nil {
		err = fmt.Errorf("the guest did not power off in time: %w", ctx.Err())
	}
	return all.String(), err
}

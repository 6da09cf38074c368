// Package cni is weavewg's CNI plugin (spec 1.1: ADD, DEL, CHECK, STATUS,
// GC, VERSION). It is the weavewg binary itself, run by a container runtime
// (Kubernetes, Podman, Nomad…) with CNI_COMMAND set; it holds no state and
// does no plumbing of its own: it asks the local daemon over its API socket,
// whose attachment service makes the interface, allocates the address from
// the overlay's IPAM and registers the pod's name in weave.local.
//
// Network configuration (one plugin of a conflist; see Install):
//
//	{"cniVersion": "1.1.0", "name": "weavewg", "type": "weavewg",
//	 "api_socket": "/run/weavewg/weavewg.sock",   // default api.DefaultSocket
//	 "wait_seconds": 30}                           // ADD's wait for address space
//
// The name registered in DNS is K8S_POD_NAME from CNI_ARGS (Kubernetes,
// Podman) or NAME=…; none registers none.
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/unixhttp"
)

// Error codes of weavewg's own (the spec reserves 100 and up for plugins).
const (
	// ErrRefused: the daemon refused the request (e.g. a bad address or
	// namespace); retrying the same request will not help.
	ErrRefused = 100
	// ErrDaemon: the daemon failed to do what it was asked.
	ErrDaemon = 101
	// ErrCheckFailed: CHECK found the attachment not as ADD left it.
	ErrCheckFailed = 102
	// errPluginNotAvailable is the spec's 50: STATUS says ADD would fail.
	errPluginNotAvailable = 50
)

// SupportedVersions are the CNI versions the plugin speaks.
var SupportedVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// NetConf is the plugin's network configuration.
type NetConf struct {
	types.PluginConf
	// APISocket is the weavewg daemon's API socket.
	APISocket string `json:"api_socket,omitempty"`
	// WaitSeconds bounds ADD's wait for address space while the host
	// joins the network (0: the daemon's default).
	WaitSeconds float64 `json:"wait_seconds,omitempty"`
}

// Main runs the plugin for the command in the environment and exits.
func Main(about string) {
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add: cmdAdd, Del: cmdDel, Check: cmdCheck, GC: cmdGC, Status: cmdStatus,
	}, version.PluginSupports(SupportedVersions...), about)
}

func loadConf(data []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(data, conf); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "the network configuration is not valid JSON", err.Error())
	}
	if conf.APISocket == "" {
		conf.APISocket = api.DefaultSocket
	}
	if conf.WaitSeconds < 0 {
		return nil, types.NewError(types.ErrInvalidNetworkConfig, "wait_seconds must not be negative", "")
	}
	return conf, nil
}

// client calls the daemon; each call is bounded so a hung daemon cannot
// hang the runtime.
func (c *NetConf) call(method, path string, in, out any, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return daemonError(c.APISocket, unixhttp.NewClient(c.APISocket, 0).Do(ctx, method, path, in, out))
}

// daemonError turns a failed call into a CNI error with a code a runtime
// acts on: "try again later" when the daemon cannot be reached.
func daemonError(socket string, err error) error {
	if err == nil {
		return nil
	}
	var de *unixhttp.DialError
	if errors.As(err, &de) {
		return types.NewError(types.ErrTryAgainLater,
			fmt.Sprintf("the weavewg daemon is not running (nothing answers on %s); start it with weavewg launch or join", socket),
			de.Err.Error())
	}
	var se *unixhttp.StatusError
	if errors.As(err, &se) {
		if se.Status/100 == 4 {
			return types.NewError(ErrRefused, "weavewg refused: "+se.Message, "")
		}
		return types.NewError(ErrDaemon, "weavewg failed: "+se.Message, "")
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return types.NewError(types.ErrTryAgainLater, "the weavewg daemon did not answer in time", err.Error())
	}
	return types.NewError(ErrDaemon, "talking to the weavewg daemon: "+err.Error(), "")
}

// podName is the name the runtime gives the container, if any.
func podName(cniArgs string) string {
	var name string
	for _, kv := range strings.Split(cniArgs, ";") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case "K8S_POD_NAME":
			name = v
		case "NAME":
			if name == "" {
				name = v
			}
		}
	}
	return name
}

func cmdAdd(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	wait := conf.WaitSeconds
	if wait == 0 {
		wait = api.DefaultAttachWait.Seconds()
	}
	req := api.AttachRequest{
		Netns: args.Netns, Origin: api.OriginCNI, ContainerID: args.ContainerID, IfName: args.IfName,
		Name: podName(args.Args), WaitSeconds: wait,
	}
	var a api.Attachment
	if err := conf.call("POST", api.PathAttach, req, &a, time.Duration(wait)*time.Second+30*time.Second); err != nil {
		return err
	}
	var st api.Status
	if err := conf.call("GET", api.PathStatus, nil, &st, 10*time.Second); err != nil {
		return err
	}
	res, err := result(a, st, args)
	if err != nil {
		return types.NewError(ErrDaemon, "the daemon's answer", err.Error())
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// result is the CNI result of an attachment: the interface in the sandbox
// with its MAC, the address, no routes beyond the interface's own prefix
// (the overlay is one flat subnet), and weavewg's DNS on the host address.
func result(a api.Attachment, st api.Status, args *skel.CmdArgs) (*types100.Result, error) {
	ip, err := netip.ParsePrefix(a.IP)
	if err != nil {
		return nil, fmt.Errorf("address %q: %v", a.IP, err)
	}
	mac, _ := linkMAC(args.Netns, a.Interface)
	res := &types100.Result{
		CNIVersion: types100.ImplementedSpecVersion,
		Interfaces: []*types100.Interface{{Name: a.Interface, Mac: mac, Sandbox: args.Netns, Mtu: a.MTU}},
		IPs: []*types100.IPConfig{{
			Interface: types100.Int(0),
			Address:   net.IPNet{IP: ip.Addr().AsSlice(), Mask: net.CIDRMask(ip.Bits(), 32)},
		}},
	}
	if st.DNS.Enabled {
		if h, err := netip.ParsePrefix(st.HostIP); err == nil {
			domain := strings.TrimSuffix(st.DNS.Domain, ".")
			res.DNS = types.DNS{Nameservers: []string{h.Addr().String()}, Domain: domain, Search: []string{domain}}
		}
	}
	return res, nil
}

// cmdDel is idempotent: an attachment the daemon does not know is
// released already. It fails only when the daemon cannot be asked, so the
// runtime retries and the address is freed once the daemon is back.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	req := api.DetachRequest{Origin: api.OriginCNI, ContainerID: args.ContainerID, IfName: args.IfName}
	return conf.call("POST", api.PathDetach, req, nil, 30*time.Second)
}

// cmdCheck verifies that the daemon still has the attachment and that the
// interface in the sandbox is up with its address and the overlay route.
func cmdCheck(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	var ps []api.Attachment
	if err := conf.call("GET", api.PathPS, nil, &ps, 10*time.Second); err != nil {
		return err
	}
	id := "cni:" + args.ContainerID + "/" + args.IfName
	var a *api.Attachment
	for i := range ps {
		if ps[i].ID == id {
			a = &ps[i]
		}
	}
	if a == nil {
		return types.NewError(ErrCheckFailed, fmt.Sprintf("weavewg has no attachment for container %s interface %s", args.ContainerID, args.IfName), "")
	}
	if len(conf.RawPrevResult) > 0 {
		if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
			return types.NewError(types.ErrDecodingFailure, "prevResult", err.Error())
		}
		prev, err := types100.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "prevResult", err.Error())
		}
		found := false
		for _, ip := range prev.IPs {
			if p, ok := netip.AddrFromSlice(ip.Address.IP.To4()); ok && strings.HasPrefix(a.IP, p.String()+"/") {
				found = true
			}
		}
		if !found {
			return types.NewError(ErrCheckFailed, fmt.Sprintf("the attachment has %s, not the address of the previous result", a.IP), "")
		}
	}
	ip, err := netip.ParsePrefix(a.IP)
	if err != nil {
		return types.NewError(ErrDaemon, "the daemon's answer", err.Error())
	}
	if err := checkInterface(args.Netns, args.IfName, ip); err != nil {
		return types.NewError(ErrCheckFailed, err.Error(), "")
	}
	return nil
}

// cmdGC releases every weavewg CNI attachment not in the valid list.
func cmdGC(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	req := api.GCRequest{Valid: []api.GCAttachment{}}
	for _, v := range conf.ValidAttachments {
		req.Valid = append(req.Valid, api.GCAttachment{ContainerID: v.ContainerID, IfName: v.IfName})
	}
	return conf.call("POST", api.PathGC, req, nil, 60*time.Second)
}

// cmdStatus says whether an ADD would succeed now.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData)
	if err != nil {
		return err
	}
	var ready api.AttachReady
	if err := conf.call("GET", api.PathAttachReady, nil, &ready, 10*time.Second); err != nil {
		var e *types.Error
		if errors.As(err, &e) && e.Code == types.ErrTryAgainLater {
			e.Code = errPluginNotAvailable
		}
		return err
	}
	if !ready.Ready {
		return types.NewError(errPluginNotAvailable, "weavewg cannot attach yet: "+ready.Reason, "")
	}
	return nil
}

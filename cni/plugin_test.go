package cni

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weavewg/weavewg/types/unixhttp"
)

func TestPodName(t *testing.T) {
	for _, tc := range []struct{ args, want string }{
		{"", ""},
		{"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc", "web-0"},
		{"NAME=db", "db"},
		{"NAME=db;K8S_POD_NAME=web", "web"},
		{"garbage;;=", ""},
	} {
		if got := podName(tc.args); got != tc.want {
			t.Errorf("podName(%q) = %q, want %q", tc.args, got, tc.want)
		}
	}
}

// TestDaemonErrorCodes: a runtime acts on the code, so each failure of the
// daemon call maps to the one that says what to do.
func TestDaemonErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code uint
	}{
		{"daemon down", &unixhttp.DialError{Socket: "/x", Err: errors.New("connection refused")}, types.ErrTryAgainLater},
		{"refused", &unixhttp.StatusError{Status: 400, Message: "netns is required"}, ErrRefused},
		{"failed", &unixhttp.StatusError{Status: 500, Message: "disk full"}, ErrDaemon},
	} {
		var e *types.Error
		if err := daemonError("/x", tc.err); !errors.As(err, &e) || e.Code != tc.code || e.Msg == "" {
			t.Errorf("%s: %v, want code %d", tc.name, err, tc.code)
		}
	}
	if daemonError("/x", nil) != nil {
		t.Error("no error became one")
	}
}

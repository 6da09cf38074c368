package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weavewg/weavewg/types/api"
)

// maxRequestBody bounds what a client may send; every request is small.
const maxRequestBody = 64 << 10

// serveAPI listens on the unix socket (mode 0600: the API can reconfigure the
// host's network, so it is root's alone) and serves the local API.
func (d *Daemon) serveAPI() (*http.Server, error) {
	path := d.cfg.APISocket
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("api socket directory: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another weavewg daemon answers on %s; stop it or use a different --api-socket", path)
	}
	// Nothing answers: whatever is there is a stale socket from a crash.
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("api socket: %w", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(metricsCollector{d})

	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathStatus, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.status())
	})
	mux.HandleFunc("POST "+api.PathConnect, func(w http.ResponseWriter, r *http.Request) {
		var req api.ConnectRequest
		if !readJSON(w, r, &req) {
			return
		}
		d.answer(w, addressError(d.router.Connect(req.Address)), nil)
	})
	mux.HandleFunc("POST "+api.PathForget, func(w http.ResponseWriter, r *http.Request) {
		var req api.ConnectRequest
		if !readJSON(w, r, &req) {
			return
		}
		d.answer(w, addressError(d.router.Forget(req.Address)), nil)
	})
	mux.HandleFunc("POST "+api.PathAttach, func(w http.ResponseWriter, r *http.Request) {
		var req api.AttachRequest
		if !readJSON(w, r, &req) {
			return
		}
		a, err := d.attach(r.Context(), req)
		d.answer(w, err, a)
	})
	mux.HandleFunc("POST "+api.PathDetach, func(w http.ResponseWriter, r *http.Request) {
		var req api.DetachRequest
		if !readJSON(w, r, &req) {
			return
		}
		d.answer(w, d.detach(req), nil)
	})
	mux.HandleFunc("GET "+api.PathIPAM, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.ipamStatus())
	})
	mux.HandleFunc("GET "+api.PathPS, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.ps())
	})
	mux.HandleFunc("POST "+api.PathRmpeer, func(w http.ResponseWriter, r *http.Request) {
		var req api.RmpeerRequest
		if !readJSON(w, r, &req) {
			return
		}
		name, err := d.rmpeer(req.Peer)
		d.answer(w, err, api.RmpeerResult{Peer: name})
	})
	mux.HandleFunc("GET "+api.PathTokens, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.listTokens())
	})
	mux.HandleFunc("POST "+api.PathTokens, func(w http.ResponseWriter, r *http.Request) {
		var req api.TokenRequest
		if !readJSON(w, r, &req) {
			return
		}
		t, err := d.createToken(req)
		d.answer(w, err, t)
	})
	mux.HandleFunc("POST "+api.PathTokenRevoke, func(w http.ResponseWriter, r *http.Request) {
		var req api.TokenRevokeRequest
		if !readJSON(w, r, &req) {
			return
		}
		d.answer(w, d.revokeToken(req.ID), nil)
	})
	mux.HandleFunc("POST "+api.PathReset, func(w http.ResponseWriter, r *http.Request) {
		res, err := d.reset()
		d.answer(w, err, res)
	})
	mux.HandleFunc("GET "+api.PathDNS, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, d.dnsStatus(true))
	})
	mux.HandleFunc("GET "+api.PathDNSLookup, func(w http.ResponseWriter, r *http.Request) {
		res, err := d.dnsLookup(r.URL.Query().Get("name"))
		d.answer(w, err, res)
	})
	mux.HandleFunc("POST "+api.PathDNSAdd, func(w http.ResponseWriter, r *http.Request) {
		var req api.DNSRequest
		if !readJSON(w, r, &req) {
			return
		}
		_, err := d.dnsChange(req, true)
		d.answer(w, err, nil)
	})
	mux.HandleFunc("POST "+api.PathDNSRemove, func(w http.ResponseWriter, r *http.Request) {
		var req api.DNSRequest
		if !readJSON(w, r, &req) {
			return
		}
		n, err := d.dnsChange(req, false)
		d.answer(w, err, api.DNSRemoved{Removed: n})
	})
	mux.Handle("GET "+api.PathMetrics, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// Profiles, for when a benchmark ratio falls short: the socket is
	// root's alone, so this exposes nothing new.
	//   curl --unix-socket SOCK http://x/debug/pprof/profile?seconds=10 > cpu.pprof
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	// The catch-all would otherwise shadow ServeMux's own 405 answers.
	methods := map[string]string{
		api.PathStatus: "GET", api.PathMetrics: "GET", api.PathConnect: "POST",
		api.PathForget: "POST", api.PathAttach: "POST", api.PathDetach: "POST",
		api.PathIPAM: "GET", api.PathPS: "GET", api.PathRmpeer: "POST",
		api.PathTokens: "GET or POST", api.PathTokenRevoke: "POST", api.PathReset: "POST",
		api.PathDNS: "GET", api.PathDNSLookup: "GET", api.PathDNSAdd: "POST", api.PathDNSRemove: "POST",
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if m, ok := methods[r.URL.Path]; ok {
			w.Header().Set("Allow", m)
			writeJSON(w, http.StatusMethodNotAllowed, api.Error{Error: r.URL.Path + " takes " + m + ", not " + r.Method})
			return
		}
		writeJSON(w, http.StatusNotFound, api.Error{Error: "no such API path: " + r.Method + " " + r.URL.Path})
	})

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("api server stopped", "err", err)
		}
	}()
	return srv, nil
}

// answer writes the result of a mutation: the value or {} on success, the
// error with 400 (the request's fault) or 500 (the host's) otherwise.
func (d *Daemon) answer(w http.ResponseWriter, err error, v any) {
	switch {
	case err == nil && v == nil:
		writeJSON(w, http.StatusOK, struct{}{})
	case err == nil:
		writeJSON(w, http.StatusOK, v)
	case errors.Is(err, errBadRequest):
		writeJSON(w, http.StatusBadRequest, api.Error{Error: unwrapBadRequest(err)})
	default:
		d.log.Warn("api request failed", "err", err)
		writeJSON(w, http.StatusInternalServerError, api.Error{Error: err.Error()})
	}
}

// addressError marks connect and forget failures as the request's fault:
// they fail only for an address that is malformed, unresolvable or unknown.
func addressError(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", errBadRequest, err)
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	if err := dec.Decode(v); err != nil {
		writeJSON(w, http.StatusBadRequest, api.Error{Error: "request body is not the expected JSON: " + err.Error()})
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func unwrapBadRequest(err error) string {
	s := err.Error()
	prefix := errBadRequest.Error() + ": "
	if len(s) > len(prefix) && s[:len(prefix)] == prefix {
		return s[len(prefix):]
	}
	return s
}

package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weavewg/weavewg/types/api"
	"github.com/weavewg/weavewg/types/unixhttp"
)

// maxRequestBody bounds what a client may send; every request is small.
const maxRequestBody = 64 << 10

// serveAPI listens on the unix socket (mode 0600: the API can reconfigure the
// host's network, so it is root's alone) and serves the local API.
func (d *Daemon) serveAPI() (*http.Server, error) {
	path := d.cfg.APISocket
	ln, err := unixhttp.Listen(path, 0o600)
	if errors.Is(err, unixhttp.ErrInUse) {
		return nil, fmt.Errorf("another weavewg daemon answers on %s; stop it or use a different --api-socket", path)
	}
	if err != nil {
		return nil, fmt.Errorf("api socket: %w", err)
	}

	reg := d.metricsRegistry()

	rt := &routes{d: d, mux: http.NewServeMux(), methods: map[string][]string{}}
	rt.get(api.PathStatus, func(*http.Request) (any, error) { return d.status(), nil })
	rt.get(api.PathReport, func(*http.Request) (any, error) { return d.report(), nil })
	rt.get(api.PathIPAM, func(*http.Request) (any, error) { return d.ipamStatus(), nil })
	rt.get(api.PathPS, func(*http.Request) (any, error) { return d.ps(), nil })
	rt.get(api.PathTokens, func(*http.Request) (any, error) { return d.listTokens(), nil })
	rt.get(api.PathDNS, func(*http.Request) (any, error) { return d.dnsStatus(true), nil })
	rt.get(api.PathDNSLookup, func(r *http.Request) (any, error) { return d.dnsLookup(r.URL.Query().Get("name")) })
	post(rt, api.PathConnect, func(_ *http.Request, req api.ConnectRequest) (any, error) {
		return nil, addressError(d.router.Connect(req.Address))
	})
	post(rt, api.PathForget, func(_ *http.Request, req api.ConnectRequest) (any, error) {
		return nil, addressError(d.router.Forget(req.Address))
	})
	post(rt, api.PathAttach, func(r *http.Request, req api.AttachRequest) (any, error) { return d.attach(r.Context(), req) })
	post(rt, api.PathDetach, func(_ *http.Request, req api.DetachRequest) (any, error) { return d.detach(req) })
	post(rt, api.PathGC, func(_ *http.Request, req api.GCRequest) (any, error) { return d.gc(req) })
	rt.get(api.PathAttachReady, func(*http.Request) (any, error) {
		why := d.attachReady()
		return api.AttachReady{Ready: why == "", Reason: why}, nil
	})
	post(rt, api.PathExpose, func(_ *http.Request, req api.ExposeRequest) (any, error) { return d.expose(req) })
	post(rt, api.PathHide, func(_ *http.Request, req api.ExposeRequest) (any, error) { return d.hide(req) })
	post(rt, api.PathRmpeer, func(_ *http.Request, req api.RmpeerRequest) (any, error) {
		name, err := d.rmpeer(req.Peer)
		return api.RmpeerResult{Peer: name}, err
	})
	post(rt, api.PathTokens, func(_ *http.Request, req api.TokenRequest) (any, error) { return d.createToken(req) })
	post(rt, api.PathTokenRevoke, func(_ *http.Request, req api.TokenRevokeRequest) (any, error) {
		return nil, d.revokeToken(req.ID)
	})
	post(rt, api.PathEvict, func(_ *http.Request, req api.EvictRequest) (any, error) { return d.evict(req.Peer) })
	post(rt, api.PathRotateSecret, func(_ *http.Request, _ struct{}) (any, error) { return d.rotateSecret() })
	rt.get(api.PathEvicted, func(*http.Request) (any, error) { return d.evictedList(), nil })
	post(rt, api.PathReset, func(_ *http.Request, _ struct{}) (any, error) { return d.reset() })
	post(rt, api.PathDNSAdd, func(_ *http.Request, req api.DNSRequest) (any, error) {
		_, err := d.dnsChange(req, true)
		return nil, err
	})
	post(rt, api.PathDNSRemove, func(_ *http.Request, req api.DNSRequest) (any, error) {
		n, err := d.dnsChange(req, false)
		return api.DNSRemoved{Removed: n}, err
	})
	rt.handle("GET", api.PathMetrics, promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// Profiles, for when a benchmark ratio falls short: the socket is
	// root's alone, so this exposes nothing new.
	//   curl --unix-socket SOCK http://x/debug/pprof/profile?seconds=10 > cpu.pprof
	rt.mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	rt.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	rt.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	rt.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	for _, add := range testRoutes {
		add(rt)
	}
	rt.mux.HandleFunc("/", rt.notFound)
	mux := rt.mux

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("api server stopped", "err", err)
		}
	}()
	return srv, nil
}

// routes registers the API's handlers and remembers each path's methods, so
// a known path asked with the wrong method gets 405 (the catch-all would
// otherwise shadow ServeMux's own 405 answers).
type routes struct {
	d       *Daemon
	mux     *http.ServeMux
	methods map[string][]string
}

// testRoutes are added by test-only builds (build tag forgetest: a member
// that misbehaves on purpose, forge_forgetest.go). Release builds have
// none.
var testRoutes []func(*routes)

func (rt *routes) handle(method, path string, h http.Handler) {
	rt.mux.Handle(method+" "+path, h)
	rt.methods[path] = append(rt.methods[path], method)
}

// get serves path with f's value as JSON.
func (rt *routes) get(path string, f func(*http.Request) (any, error)) {
	rt.handle("GET", path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		v, err := f(r)
		rt.d.answer(w, err, v)
	}))
}

// post serves path: the JSON body decoded into a Req (an empty body is a
// zero Req only where Req has no fields), f's value or error as the answer.
func post[Req any](rt *routes, path string, f func(*http.Request, Req) (any, error)) {
	rt.handle("POST", path, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if _, empty := any(req).(struct{}); !empty && !readJSON(w, r, &req) {
			return
		}
		v, err := f(r, req)
		rt.d.answer(w, err, v)
	}))
}

func (rt *routes) notFound(w http.ResponseWriter, r *http.Request) {
	if ms, ok := rt.methods[r.URL.Path]; ok {
		allowed := strings.Join(ms, " or ")
		w.Header().Set("Allow", strings.Join(ms, ", "))
		writeJSON(w, http.StatusMethodNotAllowed, api.Error{Error: r.URL.Path + " takes " + allowed + ", not " + r.Method})
		return
	}
	writeJSON(w, http.StatusNotFound, api.Error{Error: "no such API path: " + r.Method + " " + r.URL.Path})
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

package emulator

import (
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
)

// FaultKind is the kind of an injected fault.
type FaultKind string

// Fault kinds.
const (
	// FaultStatus answers with Fault.Status (default 500) and the service's error body.
	FaultStatus FaultKind = "status"
	// FaultReset drops the connection (HTTP/1.1) or resets the stream (HTTP/2) without
	// an answer.
	FaultReset FaultKind = "reset"
	// FaultThrottle answers 429 with Retry-After (Fault.RetryAfterSeconds, default 1).
	FaultThrottle FaultKind = "throttle"
)

// Operations a fault can match, in Fault.Match. Empty matches every Key Vault and Azure
// AD request.
const (
	OpGet      = "get"      // Key Vault: get a secret, certificate or key
	OpList     = "list"     // Key Vault: list secrets or versions (each page)
	OpKeyVault = "keyvault" // any Key Vault operation
	OpToken    = "token"    // Azure AD token endpoint
	OpMSI      = "msi"      // managed-identity endpoint
	OpOpenID   = "openid"   // OpenID configuration and instance discovery
	OpAAD      = "aad"      // any Azure AD or managed-identity operation
)

// Fault is a fault to inject. Key Vault faults apply only to requests that carry a valid
// token (the 401 challenge round trip is never faulted), after the firewall check and
// before throttling and authorization.
type Fault struct {
	Kind FaultKind `json:"kind"`
	// Status is the status code of a FaultStatus (default 500).
	Status int `json:"status,omitempty"`
	// RetryAfterSeconds is the Retry-After of a FaultThrottle (default 1).
	RetryAfterSeconds int `json:"retryAfterSeconds,omitempty"`
	// Count is how many requests the fault applies to; 0 means until ClearFaults.
	Count int `json:"count,omitempty"`
	// Match is the operation to fault (see the Op constants); empty matches all.
	Match string `json:"match,omitempty"`
	// Vault restricts a Key Vault fault to one vault; empty matches all vaults.
	Vault string `json:"vault,omitempty"`
}

type activeFault struct {
	Fault
	remaining int // 0 = unlimited
}

func (f Fault) validate() error {
	switch f.Kind {
	case FaultStatus:
		if f.Status != 0 && (f.Status < 400 || f.Status > 599) {
			return fmt.Errorf("emulator: fault status %d is not an error status", f.Status)
		}
	case FaultReset, FaultThrottle:
	default:
		return fmt.Errorf("emulator: unknown fault kind %q", f.Kind)
	}
	switch f.Match {
	case "", OpGet, OpList, OpKeyVault, OpToken, OpMSI, OpOpenID, OpAAD:
	default:
		return fmt.Errorf("emulator: unknown fault match %q", f.Match)
	}
	if f.Count < 0 {
		return fmt.Errorf("emulator: negative fault count")
	}
	return nil
}

// InjectFault adds a fault. Faults are tried in the order they were added; the first
// that matches a request applies.
func (e *Emulator) InjectFault(f Fault) error {
	if err := f.validate(); err != nil {
		return err
	}
	e.faultsMu.Lock()
	defer e.faultsMu.Unlock()
	e.faults = append(e.faults, &activeFault{Fault: f, remaining: f.Count})
	return nil
}

// ClearFaults removes all faults.
func (e *Emulator) ClearFaults() {
	e.faultsMu.Lock()
	defer e.faultsMu.Unlock()
	e.faults = nil
}

func (f *Fault) matches(op, vaultName string) bool {
	if f.Vault != "" && !strings.EqualFold(f.Vault, vaultName) {
		return false
	}
	kv := op == OpGet || op == OpList
	switch f.Match {
	case "":
		return true
	case OpKeyVault:
		return kv
	case OpAAD:
		return !kv
	default:
		return f.Match == op
	}
}

// takeFault returns the first fault matching the operation and consumes one use of it.
func (e *Emulator) takeFault(op, vaultName string) (Fault, bool) {
	e.faultsMu.Lock()
	defer e.faultsMu.Unlock()
	for i, f := range e.faults {
		if !f.matches(op, vaultName) {
			continue
		}
		if f.remaining > 0 {
			f.remaining--
			if f.remaining == 0 {
				e.faults = append(e.faults[:i:i], e.faults[i+1:]...)
			}
		}
		return f.Fault, true
	}
	return Fault{}, false
}

// applyFault answers the request according to a matching fault, if any, and reports
// whether it did. errBody builds the service-specific error body for a status.
func (e *Emulator) applyFault(w http.ResponseWriter, r *http.Request, op, vaultName string,
	errBody func(status int) any) bool {
	f, ok := e.takeFault(op, vaultName)
	if !ok {
		return false
	}
	e.stats.faults.Add(1)
	infoFrom(r).fault = string(f.Kind)
	switch f.Kind {
	case FaultReset:
		resetConnection(w)
	case FaultThrottle:
		e.stats.throttled.Add(1)
		ra := f.RetryAfterSeconds
		if ra <= 0 {
			ra = 1
		}
		w.Header().Set("Retry-After", strconv.Itoa(ra))
		writeJSON(w, http.StatusTooManyRequests, errBody(http.StatusTooManyRequests))
	default:
		status := f.Status
		if status == 0 {
			status = http.StatusInternalServerError
		}
		if status == http.StatusTooManyRequests {
			e.stats.throttled.Add(1)
		}
		writeJSON(w, status, errBody(status))
	}
	return true
}

// resetConnection drops the connection of an HTTP/1.1 request with a TCP reset, or
// resets the stream of an HTTP/2 request.
func resetConnection(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		// HTTP/2: net/http resets the stream when a handler aborts.
		panic(http.ErrAbortHandler)
	}
	if tc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		if tcp, ok := tc.NetConn().(*net.TCPConn); ok {
			_ = tcp.SetLinger(0)
		}
	}
	_ = conn.Close()
}

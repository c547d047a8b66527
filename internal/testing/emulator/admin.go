package emulator

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// AdminTokenHeader is the header that carries the admin token (Emulator.AdminToken) on
// admin API requests.
const AdminTokenHeader = "X-Emulator-Admin-Token"

const adminPrefix = "/_emulator/"

// Config is a declarative set-up of vaults, secrets, grants and identities, as read by
// the kvemulator command and the admin API (POST /_emulator/config).
type Config struct {
	Vaults             []VaultConfig      `json:"vaults,omitempty"`
	WorkloadIdentities []WorkloadIdentity `json:"workloadIdentities,omitempty"`
	ManagedIdentities  []string           `json:"managedIdentities,omitempty"`
	// SystemIdentity is the client ID of the system-assigned managed identity.
	SystemIdentity string `json:"systemIdentity,omitempty"`
}

// VaultConfig is a vault in a Config.
type VaultConfig struct {
	Name string `json:"name"`
	VaultOptions
	FirewallBlocked bool           `json:"firewallBlocked,omitempty"`
	Secrets         []SecretConfig `json:"secrets,omitempty"`
	Grants          []GrantConfig  `json:"grants,omitempty"`
	// Certificates and Keys are imported after the secrets.
	Certificates []CertificateConfig `json:"certificates,omitempty"`
	Keys         []KeyConfig         `json:"keys,omitempty"`
}

// SecretConfig is a secret in a VaultConfig: each entry adds a version.
type SecretConfig struct {
	Name        string            `json:"name"`
	Value       string            `json:"value"`
	ContentType string            `json:"contentType,omitempty"`
	Tags        map[string]string `json:"tags,omitempty"`
	Disabled    bool              `json:"disabled,omitempty"`
}

// GrantConfig gives an identity permissions on a vault.
type GrantConfig struct {
	ClientID    string       `json:"clientId"`
	Permissions []Permission `json:"permissions"`
}

// Apply adds everything in a Config. Secrets get a new version each time.
func (e *Emulator) Apply(c Config) error {
	for _, wi := range c.WorkloadIdentities {
		if err := e.AddWorkloadIdentity(wi); err != nil {
			return err
		}
	}
	for _, id := range c.ManagedIdentities {
		if err := e.AddManagedIdentity(id); err != nil {
			return err
		}
	}
	if c.SystemIdentity != "" {
		if err := e.SetSystemIdentity(c.SystemIdentity); err != nil {
			return err
		}
	}
	for _, v := range c.Vaults {
		if err := e.AddVault(v.Name, v.VaultOptions); err != nil {
			return err
		}
		if err := e.SetFirewall(v.Name, v.FirewallBlocked); err != nil {
			return err
		}
		for _, s := range v.Secrets {
			if _, err := e.setSecret(v.Name, s.Name, s.Value, s.options()...); err != nil {
				return err
			}
		}
		for _, c := range v.Certificates {
			if _, err := c.importInto(e, v.Name, c.Name); err != nil {
				return err
			}
		}
		for _, k := range v.Keys {
			if _, err := k.importInto(e, v.Name, k.Name); err != nil {
				return err
			}
		}
		for _, g := range v.Grants {
			if err := e.Grant(v.Name, g.ClientID, g.Permissions...); err != nil {
				return err
			}
		}
	}
	return nil
}

func (s SecretConfig) options() []SecretOption {
	var opts []SecretOption
	if s.ContentType != "" {
		opts = append(opts, WithContentType(s.ContentType))
	}
	if len(s.Tags) > 0 {
		opts = append(opts, WithTags(s.Tags))
	}
	if s.Disabled {
		opts = append(opts, WithDisabled())
	}
	return opts
}

// AdminStats is the answer of GET /_emulator/stats.
type AdminStats struct {
	Stats
	VaultReads map[string]int64 `json:"vaultReads"`
	// ValueReads are the get requests by client ID (see Emulator.ValueReads).
	ValueReads map[string]int64 `json:"valueReads,omitempty"`
}

// serveAdmin serves the admin API. Routes (JSON bodies):
//
//	GET    /_emulator/stats                          -> AdminStats
//	POST   /_emulator/reset-stats
//	POST   /_emulator/config                         Config
//	PUT    /_emulator/vaults/{vault}                 VaultOptions
//	DELETE /_emulator/vaults/{vault}
//	PUT    /_emulator/vaults/{vault}/secrets/{name}  SecretConfig (name from the path) -> {"version":...}
//	POST   /_emulator/vaults/{vault}/secrets/{name}/disable
//	POST   /_emulator/vaults/{vault}/secrets/{name}/enable
//	PATCH  /_emulator/vaults/{vault}/secrets/{name}  SecretUpdate
//	DELETE /_emulator/vaults/{vault}/secrets/{name}
//	PUT    /_emulator/vaults/{vault}/certificates/{name}  CertificateConfig (name from the path) -> {"version":...}
//	PUT    /_emulator/vaults/{vault}/keys/{name}          KeyConfig (name from the path) -> {"version":...}
//	POST   /_emulator/vaults/{vault}/grants          GrantConfig
//	PUT    /_emulator/vaults/{vault}/firewall        {"blocked":true}
//	POST   /_emulator/identities/workload            WorkloadIdentity
//	POST   /_emulator/identities/managed             {"clientId":"...","system":false}
//	POST   /_emulator/faults                         Fault
//	DELETE /_emulator/faults
//	PUT    /_emulator/latency                        {"latency":"20ms"}
//	PUT    /_emulator/throttle                       {"limit":4000,"window":"10s"}
//	POST   /_emulator/expire-tokens
func (e *Emulator) serveAdmin(w http.ResponseWriter, r *http.Request) {
	if subtle.ConstantTimeCompare([]byte(r.Header.Get(AdminTokenHeader)), []byte(e.opts.AdminToken)) != 1 {
		adminError(w, http.StatusUnauthorized, errors.New("missing or wrong "+AdminTokenHeader))
		return
	}
	e.adminOnce.Do(func() { e.adminMux = e.newAdminMux() })
	e.adminMux.ServeHTTP(w, r)
}

func (e *Emulator) newAdminMux() *http.ServeMux {
	mux := http.NewServeMux()
	p := strings.TrimSuffix(adminPrefix, "/")
	handle := func(pattern string, f func(r *http.Request) (any, error)) {
		method, path, _ := strings.Cut(pattern, " ")
		mux.HandleFunc(method+" "+p+path, func(w http.ResponseWriter, r *http.Request) {
			out, err := f(r)
			switch {
			case errors.Is(err, ErrNotFound):
				adminError(w, http.StatusNotFound, err)
			case err != nil:
				adminError(w, http.StatusBadRequest, err)
			case out == nil:
				w.WriteHeader(http.StatusNoContent)
			default:
				writeJSON(w, http.StatusOK, out)
			}
		})
	}
	handle("GET /stats", func(*http.Request) (any, error) {
		s := AdminStats{Stats: e.Stats(), VaultReads: map[string]int64{}}
		e.mu.RLock()
		defer e.mu.RUnlock()
		for name, v := range e.vaults {
			s.VaultReads[name] = v.reads.Load()
		}
		e.byClient.Range(func(k, c any) bool {
			if n := c.(*clientCounters).valueReads.Load(); n > 0 {
				if s.ValueReads == nil {
					s.ValueReads = map[string]int64{}
				}
				s.ValueReads[k.(string)] = n
			}
			return true
		})
		return s, nil
	})
	handle("POST /reset-stats", func(*http.Request) (any, error) { e.ResetStats(); return nil, nil })
	handle("POST /config", func(r *http.Request) (any, error) {
		var c Config
		if err := decode(r, &c); err != nil {
			return nil, err
		}
		return nil, e.Apply(c)
	})
	handle("PUT /vaults/{vault}", func(r *http.Request) (any, error) {
		var o VaultOptions
		if err := decode(r, &o); err != nil {
			return nil, err
		}
		return nil, e.AddVault(r.PathValue("vault"), o)
	})
	handle("DELETE /vaults/{vault}", func(r *http.Request) (any, error) {
		e.RemoveVault(r.PathValue("vault"))
		return nil, nil
	})
	handle("PUT /vaults/{vault}/secrets/{name}", func(r *http.Request) (any, error) {
		var s SecretConfig
		if err := decode(r, &s); err != nil {
			return nil, err
		}
		v, err := e.setSecret(r.PathValue("vault"), r.PathValue("name"), s.Value, s.options()...)
		if err != nil {
			return nil, err
		}
		return map[string]string{"version": v}, nil
	})
	handle("POST /vaults/{vault}/secrets/{name}/disable", func(r *http.Request) (any, error) {
		return nil, e.DisableSecret(r.PathValue("vault"), r.PathValue("name"))
	})
	handle("POST /vaults/{vault}/secrets/{name}/enable", func(r *http.Request) (any, error) {
		return nil, e.EnableSecret(r.PathValue("vault"), r.PathValue("name"))
	})
	handle("PATCH /vaults/{vault}/secrets/{name}", func(r *http.Request) (any, error) {
		var u SecretUpdate
		if err := decode(r, &u); err != nil {
			return nil, err
		}
		return nil, e.UpdateSecret(r.PathValue("vault"), r.PathValue("name"), u)
	})
	handle("DELETE /vaults/{vault}/secrets/{name}", func(r *http.Request) (any, error) {
		return nil, e.DeleteSecret(r.PathValue("vault"), r.PathValue("name"))
	})
	handle("PUT /vaults/{vault}/certificates/{name}", func(r *http.Request) (any, error) {
		var c CertificateConfig
		if err := decode(r, &c); err != nil {
			return nil, err
		}
		v, err := c.importInto(e, r.PathValue("vault"), r.PathValue("name"))
		if err != nil {
			return nil, err
		}
		return map[string]string{"version": v}, nil
	})
	handle("PUT /vaults/{vault}/keys/{name}", func(r *http.Request) (any, error) {
		var k KeyConfig
		if err := decode(r, &k); err != nil {
			return nil, err
		}
		v, err := k.importInto(e, r.PathValue("vault"), r.PathValue("name"))
		if err != nil {
			return nil, err
		}
		return map[string]string{"version": v}, nil
	})
	handle("POST /vaults/{vault}/grants", func(r *http.Request) (any, error) {
		var g GrantConfig
		if err := decode(r, &g); err != nil {
			return nil, err
		}
		return nil, e.Grant(r.PathValue("vault"), g.ClientID, g.Permissions...)
	})
	handle("PUT /vaults/{vault}/firewall", func(r *http.Request) (any, error) {
		var b struct {
			Blocked bool `json:"blocked"`
		}
		if err := decode(r, &b); err != nil {
			return nil, err
		}
		return nil, e.SetFirewall(r.PathValue("vault"), b.Blocked)
	})
	handle("POST /identities/workload", func(r *http.Request) (any, error) {
		var wi WorkloadIdentity
		if err := decode(r, &wi); err != nil {
			return nil, err
		}
		return nil, e.AddWorkloadIdentity(wi)
	})
	handle("POST /identities/managed", func(r *http.Request) (any, error) {
		var b struct {
			ClientID string `json:"clientId"`
			System   bool   `json:"system"`
		}
		if err := decode(r, &b); err != nil {
			return nil, err
		}
		if b.System {
			return nil, e.SetSystemIdentity(b.ClientID)
		}
		return nil, e.AddManagedIdentity(b.ClientID)
	})
	handle("POST /faults", func(r *http.Request) (any, error) {
		var f Fault
		if err := decode(r, &f); err != nil {
			return nil, err
		}
		return nil, e.InjectFault(f)
	})
	handle("DELETE /faults", func(*http.Request) (any, error) { e.ClearFaults(); return nil, nil })
	handle("PUT /latency", func(r *http.Request) (any, error) {
		var b struct {
			Latency string `json:"latency"`
		}
		if err := decode(r, &b); err != nil {
			return nil, err
		}
		d, err := time.ParseDuration(b.Latency)
		if err != nil {
			return nil, err
		}
		e.SetLatency(d)
		return nil, nil
	})
	handle("PUT /throttle", func(r *http.Request) (any, error) {
		var b struct {
			Limit  int    `json:"limit"`
			Window string `json:"window"`
		}
		if err := decode(r, &b); err != nil {
			return nil, err
		}
		var d time.Duration
		if b.Window != "" {
			var err error
			if d, err = time.ParseDuration(b.Window); err != nil {
				return nil, err
			}
		}
		e.SetThrottle(b.Limit, d)
		return nil, nil
	})
	handle("POST /expire-tokens", func(*http.Request) (any, error) { e.ExpireTokens(); return nil, nil })
	return mux
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("invalid JSON body: %w", err)
	}
	return nil
}

func adminError(w http.ResponseWriter, status int, err error) {
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

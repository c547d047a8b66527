package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"

	"github.com/kvinject/kvinject/pkg/agentconfig"
)

// This file lets the doctor (internal/doctor) read and check entries with the
// agent's own code: the reads of fetch.go and objects.go, and render.go.

// Object is what the agent read for one entry, without its value (which
// stays unexported, for Render).
type Object struct {
	// Version is the version read (the newest, for history).
	Version string
	// Versions are the versions of a history read, newest first.
	Versions []string
	// Bytes is the size of the value read (summed over a history's versions).
	Bytes int
	// ContentType and CertBacked describe a secret: its content type, and
	// whether it belongs to a certificate.
	ContentType string
	CertBacked  bool
	// Enabled, NotBefore and Expires are the object's attributes, when
	// known (not for history reads).
	Enabled            *bool
	NotBefore, Expires *time.Time

	v     objectValue
	vault string
}

// SameObject reports whether entries a and b read the same object (kind,
// name, version and history), which the agent reads once for both.
func SameObject(a, b agentconfig.Entry) bool { return refOf(a) == refOf(b) }

// ObjectWord names an entry's kind of object: "secret", "certificate" or "key".
func ObjectWord(t agentconfig.ObjectType) string { return objectWord(t) }

// Read reads e's object as the agent does: a secret (get), a certificate
// (certificates get) or a key (keys get), or a history (secrets list, then a
// get of each version). Its errors are the agent's: a *SecretError, for
// Reason.
func (c *Clients) Read(ctx context.Context, e agentconfig.Entry) (*Object, error) {
	r := refOf(e)
	var raw *http.Response
	if r.history == 0 {
		ctx = runtime.WithCaptureResponse(ctx, &raw)
	}
	v, err := c.f.get(ctx, r, e)
	if err != nil {
		return nil, err
	}
	o := &Object{Version: v.version, ContentType: v.contentType, CertBacked: v.certBacked, v: v, vault: c.f.vault}
	if len(v.versions) == 0 {
		o.Bytes = len(v.value)
	}
	for _, vv := range v.versions {
		o.Versions = append(o.Versions, vv.version)
		o.Bytes += len(vv.value)
	}
	o.attributes(raw)
	return o, nil
}

// attributes reads the object's attributes from Key Vault's answer (the
// same for secrets, certificates and keys); it never keeps the value.
func (o *Object) attributes(resp *http.Response) {
	if resp == nil {
		return
	}
	body, err := runtime.Payload(resp)
	if err != nil {
		return
	}
	var b struct {
		Attributes *struct {
			Enabled   *bool       `json:"enabled"`
			NotBefore json.Number `json:"nbf"`
			Expires   json.Number `json:"exp"`
		} `json:"attributes"`
	}
	if json.Unmarshal(body, &b) != nil || b.Attributes == nil {
		return
	}
	o.Enabled = b.Attributes.Enabled
	unix := func(n json.Number) *time.Time {
		s, err := n.Float64()
		if err != nil {
			return nil
		}
		t := time.Unix(int64(s), 0)
		return &t
	}
	o.NotBefore, o.Expires = unix(b.Attributes.NotBefore), unix(b.Attributes.Expires)
}

// Render renders e from the object as the agent writes it (render.go) and
// returns the paths of the files, never their content. e must read the same
// object as the entry o was read for (SameObject). Its errors are the
// agent's: a *SecretError wrapping a *ContentError, for Reason.
func (o *Object) Render(e agentconfig.Entry) ([]string, error) {
	files, err := render(e, o.v, o.vault)
	if err != nil {
		return nil, err
	}
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = f.Path
	}
	return paths, nil
}

// RenderTemplates renders the templates from the objects read for the
// entries (objects[i] was read for entries[i]) as the agent does, and
// returns the size of each rendered file, never its content. Its error is
// the agent's: a *ConfigError naming the template, the line and what is
// missing, or an entry's *SecretError.
func RenderTemplates(ts []agentconfig.Template, entries []agentconfig.Entry, objects []*Object) ([]int, error) {
	compiled, probs := agentconfig.CheckTemplates(ts, entries)
	if len(probs) > 0 {
		return nil, &ConfigError{Msg: fmt.Sprintf("template %q: %s", probs[0].File, probs[0].Msg)}
	}
	files := map[string][]byte{}
	for i, e := range entries {
		if i >= len(objects) || objects[i] == nil {
			return nil, fmt.Errorf("internal error: no object read for entry %s", e.String())
		}
		fs, err := render(e, objects[i].v, objects[i].vault)
		if err != nil {
			return nil, err
		}
		for _, f := range fs {
			files[f.Path] = f.Data
		}
	}
	out, err := renderTemplates(compiled, files)
	if err != nil {
		return nil, err
	}
	sizes := make([]int, len(out))
	for i, f := range out {
		sizes[i] = len(f.Data)
	}
	return sizes, nil
}

// Package events reads Key Vault's events (Microsoft.KeyVault.*NewVersionCreated,
// *NearExpiry, *Expired), which Event Grid delivers to an Azure Storage queue,
// as hints for the version hub (issue 17): an event says which object of which
// vault may have a new version; the hub confirms it with a version listing.
//
// Parse is lenient, as deliveries have varied: the message text is the event
// JSON or its base64 encoding, one event or an array of them, in Event Grid's
// schema or CloudEvents', with field names in any case (the documented samples
// use PascalCase in data, the SDK models camelCase), and NBF/EXP as numbers,
// numeric strings, RFC 3339 times or null.
package events

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Object kinds, as pkg/hubapi spells them.
const (
	KindSecret      = "secret"
	KindCertificate = "certificate"
	KindKey         = "key"
)

// Changes an event reports.
const (
	ChangeNewVersion = "NewVersionCreated"
	ChangeNearExpiry = "NearExpiry"
	ChangeExpired    = "Expired"
)

// typePrefix is the prefix of Key Vault's event types.
const typePrefix = "Microsoft.KeyVault."

// Event is a Key Vault event as the hub uses it.
type Event struct {
	// ID is the event's id (logs; Event Grid may deliver it twice).
	ID string
	// Type is the event type, e.g. Microsoft.KeyVault.SecretNewVersionCreated.
	Type string
	// Kind is KindSecret, KindCertificate or KindKey, and Change one of the
	// Change* constants; both empty for other Key Vault events (such as
	// VaultAccessPolicyChanged), which the hub ignores.
	Kind, Change string
	// VaultURL is the vault's URL, https://NAME.vault.azure.net/ (the host of
	// data.Id, so other clouds' too).
	VaultURL string
	// Name and Version are the object's name and version id.
	Name, Version string
	// NotBefore and Expires are the version's nbf and exp; zero when absent.
	NotBefore, Expires time.Time
}

// Parse reads the events of one queue message. Its errors name what is missing
// or wrong and the event's id, never the message's content.
func Parse(text string) ([]Event, error) {
	body := bytes.TrimSpace([]byte(text))
	if len(body) == 0 {
		return nil, errors.New("empty message")
	}
	if body[0] != '{' && body[0] != '[' {
		dec, err := decodeBase64(string(body))
		if err != nil {
			return nil, errors.New("the message is neither JSON nor base64-encoded JSON")
		}
		body = bytes.TrimSpace(dec)
		if len(body) == 0 || (body[0] != '{' && body[0] != '[') {
			return nil, errors.New("the message's base64 does not decode to JSON")
		}
	}
	var raws []json.RawMessage
	if body[0] == '[' {
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, fmt.Errorf("the message is not a JSON array of events: %s", jsonErr(err))
		}
		if len(raws) == 0 {
			return nil, errors.New("the message is an empty array of events")
		}
	} else {
		raws = []json.RawMessage{body}
	}
	out := make([]Event, 0, len(raws))
	for i, raw := range raws {
		ev, err := parseOne(raw)
		if err != nil {
			if len(raws) > 1 {
				err = fmt.Errorf("event %d of %d: %w", i+1, len(raws), err)
			}
			return nil, err
		}
		out = append(out, ev)
	}
	return out, nil
}

// decodeBase64 accepts standard and URL-safe base64, padded or not.
func decodeBase64(s string) ([]byte, error) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(s); err == nil {
			return b, nil
		}
	}
	return nil, errors.New("not base64")
}

// jsonErr is a JSON error without the input's content.
func jsonErr(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return "invalid JSON at byte " + strconv.FormatInt(se.Offset, 10)
	}
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return "a JSON " + te.Value + " where an object was expected"
	}
	return "invalid JSON"
}

// fields is a JSON object with its keys in lower case.
type fields map[string]json.RawMessage

func objectOf(raw json.RawMessage) (fields, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, errors.New(jsonErr(err))
	}
	f := make(fields, len(m))
	for k, v := range m {
		f[strings.ToLower(k)] = v
	}
	return f, nil
}

// str returns the first of the keys that holds a string ("" if none).
func (f fields) str(keys ...string) string {
	for _, k := range keys {
		var s string
		if v, ok := f[k]; ok && json.Unmarshal(v, &s) == nil && s != "" {
			return s
		}
	}
	return ""
}

// unixTime reads NBF or EXP: a number or a numeric string of Unix seconds, an
// RFC 3339 time, or null/absent (zero).
func (f fields) unixTime(key string) (time.Time, error) {
	v, ok := f[key]
	if !ok || string(v) == "null" {
		return time.Time{}, nil
	}
	var n json.Number
	if err := json.Unmarshal(v, &n); err == nil {
		if i, err := n.Int64(); err == nil {
			return time.Unix(i, 0).UTC(), nil
		}
	}
	var s string
	if err := json.Unmarshal(v, &s); err == nil {
		if s == "" {
			return time.Time{}, nil
		}
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.Unix(i, 0).UTC(), nil
		}
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("data.%s is neither Unix seconds nor an RFC 3339 time", strings.ToUpper(key))
}

func parseOne(raw json.RawMessage) (Event, error) {
	top, err := objectOf(raw)
	if err != nil {
		return Event{}, fmt.Errorf("the event is not a JSON object: %s", err)
	}
	ev := Event{ID: top.str("id"), Type: top.str("eventtype", "type")}
	who := "event"
	if ev.ID != "" {
		who = "event " + ev.ID
	}
	if ev.Type == "" {
		return Event{}, fmt.Errorf("%s has no eventType (Event Grid schema) or type (CloudEvents)", who)
	}
	if len(ev.Type) <= len(typePrefix) || !strings.EqualFold(ev.Type[:len(typePrefix)], typePrefix) {
		return Event{}, fmt.Errorf("%s: type %q is not a Key Vault event (%s*)", who, ev.Type, typePrefix)
	}
	rest := ev.Type[len(typePrefix):]
	for _, k := range []struct{ prefix, kind string }{{"Secret", KindSecret}, {"Certificate", KindCertificate}, {"Key", KindKey}} {
		if len(rest) > len(k.prefix) && strings.EqualFold(rest[:len(k.prefix)], k.prefix) {
			for _, c := range []string{ChangeNewVersion, ChangeNearExpiry, ChangeExpired} {
				if strings.EqualFold(rest[len(k.prefix):], c) {
					ev.Kind, ev.Change = k.kind, c
				}
			}
		}
	}
	if ev.Kind == "" {
		return ev, nil // another Key Vault event: nothing to watch
	}
	dataRaw, ok := top["data"]
	if !ok || string(dataRaw) == "null" {
		return Event{}, fmt.Errorf("%s (%s) has no data", who, ev.Type)
	}
	data, err := objectOf(dataRaw)
	if err != nil {
		return Event{}, fmt.Errorf("%s (%s): data is not a JSON object: %s", who, ev.Type, err)
	}
	ev.Name, ev.Version = data.str("objectname"), data.str("version")
	if id := data.str("id"); id != "" {
		u, err := url.Parse(id)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return Event{}, fmt.Errorf("%s (%s): data.Id is not an https URL of a Key Vault object", who, ev.Type)
		}
		ev.VaultURL = "https://" + strings.ToLower(u.Host) + "/"
		// /secrets/NAME/VERSION: where ObjectName or Version is missing.
		parts := strings.Split(strings.Trim(u.Path, "/"), "/")
		if len(parts) >= 2 && ev.Name == "" {
			ev.Name = parts[1]
		}
		if len(parts) >= 3 && ev.Version == "" {
			ev.Version = parts[2]
		}
	} else if vn := data.str("vaultname"); vn != "" {
		ev.VaultURL = "https://" + strings.ToLower(vn) + ".vault.azure.net/"
	}
	switch {
	case ev.VaultURL == "":
		return Event{}, fmt.Errorf("%s (%s) names no vault: neither data.Id nor data.VaultName", who, ev.Type)
	case ev.Name == "":
		return Event{}, fmt.Errorf("%s (%s) names no object: neither data.ObjectName nor data.Id", who, ev.Type)
	}
	if ev.NotBefore, err = data.unixTime("nbf"); err != nil {
		return Event{}, fmt.Errorf("%s (%s): %w", who, ev.Type, err)
	}
	if ev.Expires, err = data.unixTime("exp"); err != nil {
		return Event{}, fmt.Errorf("%s (%s): %w", who, ev.Type, err)
	}
	return ev, nil
}

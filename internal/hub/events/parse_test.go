package events

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// documentedSample is the SecretNewVersionCreated sample of Event Grid's Key
// Vault documentation (PascalCase data, NBF and EXP as strings).
const documentedSample = `{
  "id":"00eccf70-95a7-4e7c-8299-2eb17ee9ad64",
  "topic":"/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/sample-rg/providers/Microsoft.KeyVault/vaults/sample-kv",
  "subject":"newsecret",
  "eventType":"Microsoft.KeyVault.SecretNewVersionCreated",
  "eventTime":"2019-07-25T01:08:33.1036736Z",
  "data":{
    "Id":"https://sample-kv.vault.azure.net/secrets/newsecret/ee059b2bb5bc48398a53b168c6cdcb10",
    "VaultName":"sample-kv",
    "ObjectType":"Secret",
    "ObjectName":"newsecret",
    "Version":"ee059b2bb5bc48398a53b168c6cdcb10",
    "NBF":"1559081980",
    "EXP":"1559082102"
  },
  "dataVersion":"1",
  "metadataVersion":"1"
}`

var sampleEvent = Event{
	ID: "00eccf70-95a7-4e7c-8299-2eb17ee9ad64", Type: "Microsoft.KeyVault.SecretNewVersionCreated",
	Kind: KindSecret, Change: ChangeNewVersion, VaultURL: "https://sample-kv.vault.azure.net/",
	Name: "newsecret", Version: "ee059b2bb5bc48398a53b168c6cdcb10",
	NotBefore: time.Unix(1559081980, 0).UTC(), Expires: time.Unix(1559082102, 0).UTC(),
}

func TestParse(t *testing.T) {
	b64 := base64.StdEncoding.EncodeToString
	tests := []struct {
		name string
		text string
		want []Event
	}{
		{"documented sample, plain JSON", documentedSample, []Event{sampleEvent}},
		{"documented sample, base64 (Event Grid's default for queues)", b64([]byte(documentedSample)), []Event{sampleEvent}},
		{"base64 without padding, surrounded by spaces", " " + base64.RawStdEncoding.EncodeToString([]byte(documentedSample)) + "\n", []Event{sampleEvent}},
		{"an array of one", "[" + documentedSample + "]", []Event{sampleEvent}},
		{"camelCase data, numbers, null NBF", `{"id":"e1","eventType":"Microsoft.KeyVault.CertificateNewVersionCreated","data":{"id":"https://Orders.vault.azure.net/certificates/tls/0a1b","vaultName":"orders","objectType":"Certificate","objectName":"tls","version":"0a1b","nbf":null,"exp":1900000000}}`,
			[]Event{{ID: "e1", Type: "Microsoft.KeyVault.CertificateNewVersionCreated", Kind: KindCertificate, Change: ChangeNewVersion,
				VaultURL: "https://orders.vault.azure.net/", Name: "tls", Version: "0a1b", Expires: time.Unix(1900000000, 0).UTC()}}},
		{"CloudEvents schema, RFC 3339 EXP", `{"specversion":"1.0","id":"e2","type":"Microsoft.KeyVault.SecretNearExpiry","source":"/subscriptions/x/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/orders","subject":"db","data":{"Id":"https://orders.vault.usgovcloudapi.net/secrets/db/77","ObjectName":"db","Version":"77","EXP":"2027-01-02T03:04:05Z"}}`,
			[]Event{{ID: "e2", Type: "Microsoft.KeyVault.SecretNearExpiry", Kind: KindSecret, Change: ChangeNearExpiry,
				VaultURL: "https://orders.vault.usgovcloudapi.net/", Name: "db", Version: "77", Expires: time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)}}},
		{"name and version from data.Id only", `{"id":"e3","eventType":"Microsoft.KeyVault.KeyExpired","data":{"Id":"https://orders.vault.azure.net/keys/signing/99"}}`,
			[]Event{{ID: "e3", Type: "Microsoft.KeyVault.KeyExpired", Kind: KindKey, Change: ChangeExpired, VaultURL: "https://orders.vault.azure.net/", Name: "signing", Version: "99"}}},
		{"vault from VaultName only", `{"id":"e4","eventType":"microsoft.keyvault.secretnewversioncreated","data":{"VaultName":"Orders","ObjectName":"db","Version":"1"}}`,
			[]Event{{ID: "e4", Type: "microsoft.keyvault.secretnewversioncreated", Kind: KindSecret, Change: ChangeNewVersion, VaultURL: "https://orders.vault.azure.net/", Name: "db", Version: "1"}}},
		{"another Key Vault event: no kind", `{"id":"e5","eventType":"Microsoft.KeyVault.VaultAccessPolicyChanged","data":{"VaultName":"orders"}}`,
			[]Event{{ID: "e5", Type: "Microsoft.KeyVault.VaultAccessPolicyChanged"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.text)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("Parse (-want +got):\n%s", d)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	const marker = "s3cr3t-marker"
	tests := []struct {
		name, text, inErr string
	}{
		{"empty", "  ", "empty message"},
		{"neither JSON nor base64", "hello " + marker, "neither JSON nor base64"},
		{"base64 of something else", base64.StdEncoding.EncodeToString([]byte(marker)), "does not decode to JSON"},
		{"broken JSON", `{"id":"e1","eventType":` + marker, "invalid JSON"},
		{"no type", `{"id":"e1","data":{"x":"` + marker + `"}}`, "event e1 has no eventType"},
		{"not Key Vault", `{"id":"e1","eventType":"Microsoft.Storage.BlobCreated","data":{}}`, `"Microsoft.Storage.BlobCreated" is not a Key Vault event`},
		{"no data", `{"id":"e1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated"}`, "has no data"},
		{"data not an object", `{"id":"e1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":"` + marker + `"}`, "data is not a JSON object"},
		{"no vault", `{"id":"e1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"ObjectName":"db"}}`, "names no vault"},
		{"no object", `{"id":"e1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"VaultName":"orders"}}`, "names no object"},
		{"Id not https", `{"id":"e1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"Id":"http://orders.vault.azure.net/secrets/db/1"}}`, "not an https URL"},
		{"bad EXP", `{"id":"e1","eventType":"Microsoft.KeyVault.SecretNewVersionCreated","data":{"VaultName":"orders","ObjectName":"db","EXP":"` + marker + `"}}`, "data.EXP is neither"},
		{"second of an array", "[" + documentedSample + `,{"id":"e9"}]`, "event 2 of 2: event e9 has no eventType"},
		{"empty array", "[]", "empty array"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.text)
			if err == nil || !strings.Contains(err.Error(), tc.inErr) {
				t.Fatalf("Parse: %v, want an error containing %q", err, tc.inErr)
			}
			if strings.Contains(err.Error(), marker) {
				t.Errorf("the error repeats the message's content: %v", err)
			}
		})
	}
}

// FuzzParse: Parse never panics, and an error never repeats a message's
// content beyond the event's id and type.
func FuzzParse(f *testing.F) {
	f.Add(documentedSample)
	f.Add(base64.StdEncoding.EncodeToString([]byte(documentedSample)))
	f.Add(`[{"id":"a","type":"Microsoft.KeyVault.KeyExpired","data":{"Id":"https://v.vault.azure.net/keys/k/1"}}]`)
	f.Fuzz(func(t *testing.T, text string) {
		evs, err := Parse(text)
		if err == nil {
			for _, ev := range evs {
				if ev.Kind != "" && (ev.VaultURL == "" || ev.Name == "") {
					t.Fatalf("event without vault or name: %+v", ev)
				}
			}
		}
	})
}

package agentconfig

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseTypedEntries(t *testing.T) {
	const v = "4387e9f3d6e14c459867679a90fd0f79"
	tests := []struct {
		in      string
		want    Entry
		wantErr string
	}{
		// Accepted forms, in docs/contract.md's order.
		{in: "tls=secret:web-cert;format=pem;split", want: Entry{File: "tls", Name: "web-cert", Type: ObjectSecret, Format: FormatPEM, Split: true}},
		{in: "tls.pem=secret:web-cert;format=pem", want: Entry{File: "tls.pem", Name: "web-cert", Type: ObjectSecret, Format: FormatPEM}},
		{in: "web.pfx=secret:web-cert;format=pfx", want: Entry{File: "web.pfx", Name: "web-cert", Type: ObjectSecret, Format: FormatPFX}},
		{in: "ca.crt=cert:web-cert", want: Entry{File: "ca.crt", Name: "web-cert", Type: ObjectCert}},
		{in: "ca.crt=cert:web-cert@" + v + ";format=pem", want: Entry{File: "ca.crt", Name: "web-cert", Version: v, Type: ObjectCert, Format: FormatPEM}},
		{in: "signing.pub=key:signing-key", want: Entry{File: "signing.pub", Name: "signing-key", Type: ObjectKey}},
		{in: "blob.bin=secret:blob;encoding=base64", want: Entry{File: "blob.bin", Name: "blob", Type: ObjectSecret, Encoding: EncodingBase64}},
		{in: "k.bin=secret:k;encoding=hex", want: Entry{File: "k.bin", Name: "k", Type: ObjectSecret, Encoding: EncodingHex}},
		{in: "db=secret:db-pass;history=3", want: Entry{File: "db", Name: "db-pass", Type: ObjectSecret, History: 3}},
		{in: "cfg=secret:app-config;format=json", want: Entry{File: "cfg", Name: "app-config", Type: ObjectSecret, Format: FormatJSON}},
		{in: "a=secret:A;mode=0400", want: Entry{File: "a", Name: "A", Type: ObjectSecret, Mode: 0o400}},
		{in: "certs=secret:web-cert;format=pem;split;history=2", want: Entry{File: "certs", Name: "web-cert", Type: ObjectSecret, Format: FormatPEM, Split: true, History: 2}},
		{in: "db/password=DB-PASSWORD;nofile", want: Entry{File: "db/password", Name: "DB-PASSWORD", NoFile: true}},
		{in: "cfg=secret:app;format=json;NoFile", want: Entry{File: "cfg", Name: "app", Type: ObjectSecret, Format: FormatJSON, NoFile: true}},
		{in: "feature.txt=secret:FEATURE-FLAG;optional", want: Entry{File: "feature.txt", Name: "FEATURE-FLAG", Type: ObjectSecret, Optional: true}},
		{in: "ca.crt=cert:web-cert;optional", want: Entry{File: "ca.crt", Name: "web-cert", Type: ObjectCert, Optional: true}},
		{in: "db=secret:db-pass;history=2;OPTIONAL", want: Entry{File: "db", Name: "db-pass", Type: ObjectSecret, History: 2, Optional: true}},
		{in: "apikey.txt=API-KEY; optional ;mode=0400", want: Entry{File: "apikey.txt", Name: "API-KEY", Mode: 0o400, Optional: true}},
		{in: "other.txt=API-KEY;vault=OtherVault", want: Entry{File: "other.txt", Name: "API-KEY", Vault: "othervault"}},
		{in: "ca.crt=cert:root;vault=https://Other.vault.azure.net", want: Entry{File: "ca.crt", Name: "root", Type: ObjectCert, Vault: "https://other.vault.azure.net/"}},
		{in: "f=secret:flag;optional;vault=https://gov-kv.vault.usgovcloudapi.net/", want: Entry{File: "f", Name: "flag", Type: ObjectSecret, Optional: true, Vault: "https://gov-kv.vault.usgovcloudapi.net/"}},
		// Options without a kind read a secret; a bare typed entry is named after the object.
		{in: "blob.bin=blob;encoding=base64", want: Entry{File: "blob.bin", Name: "blob", Encoding: EncodingBase64}},
		{in: "cert:web-cert", want: Entry{File: "web-cert", Name: "web-cert", Type: ObjectCert}},
		{in: "web-cert;format=pem", want: Entry{File: "web-cert", Name: "web-cert", Format: FormatPEM}},
		// Case-insensitive kinds and options, spaces around the parts.
		{in: " tls = Secret:web-cert ; Format=PEM ; SPLIT ; mode = 0o440 ", want: Entry{File: "tls", Name: "web-cert", Type: ObjectSecret, Format: FormatPEM, Split: true, Mode: 0o440}},

		// Refused, each with its reason and fix.
		{in: "a=certificate:B", wantErr: `unknown kind "certificate": use secret (a secret's value), cert (a certificate's public certificate) or key (a key's public key)`},
		{in: "a=cert:B:C", wantErr: `"B:C": a name cannot contain ':'`},
		{in: "a=cert:B_C", wantErr: `certificate name "B_C" must be 1-127 letters, digits or hyphens; write <file>=<kind>:<name>`},
		{in: "a=key:", wantErr: `key name "" must be`},
		{in: "a=B;", wantErr: "empty option (a stray ';')"},
		{in: "a=B;;split", wantErr: "empty option"},
		{in: "a=B;colour=red", wantErr: `unknown option "colour"; options are format=pem|pfx|json|auto, split, encoding=base64|hex, history=<1-16>, mode=<octal>, nofile, optional and vault=<vault name or URL>`},
		{in: "a=B;optional=true", wantErr: "optional takes no value (write ;optional)"},
		{in: "a=B;vault", wantErr: "option vault needs a value, e.g. vault=othervault"},
		{in: "a=B;vault=", wantErr: "option vault needs a value, e.g. vault=othervault"},
		{in: "a=B;vault=my_vault", wantErr: `vault "my_vault" is not a valid vault name: 3-24 letters, digits and single hyphens`},
		{in: "a=B;vault=http://v1.vault.azure.net/", wantErr: `vault: vault URL "http://v1.vault.azure.net/" must use https`},
		{in: "a=B;vault=https://v1.example.com/", wantErr: `vault: vault URL "https://v1.example.com/" is not a Key Vault of AzurePublicCloud`},
		{in: "a=B;vault=https://v1.vault.azure.net/secrets", wantErr: "must not have a path"},
		{in: "a=B;optional;optional", wantErr: "option optional is given twice"},
		{in: "a=B@" + v + ";optional", wantErr: "optional waits for an object to appear, but a pinned version is read once and never again (and a version that does not exist is a mistake in the mapping); drop @" + v + " to read the latest, or drop ;optional"},
		{in: "a=cert:B@" + v + ";optional", wantErr: "drop @" + v + " to read the latest, or drop ;optional"},
		{in: "a=B;format=pem;format=pfx", wantErr: "option format is given twice"},
		{in: "a=B;format", wantErr: "option format needs a value, e.g. format=pem"},
		{in: "a=B;format=der", wantErr: `format "der": use pem`},
		{in: "a=B;format=pem;split=yes", wantErr: "split takes no value"},
		{in: "a=B;split", wantErr: "split writes <file>.key and <file>.crt from a certificate's PEM; add ;format=pem"},
		{in: "a=B;format=pfx;split", wantErr: "add ;format=pem"},
		{in: "a=B;encoding=utf-8", wantErr: `encoding "utf-8" is the default: drop ;encoding=utf-8`},
		{in: "a=B;encoding=base32", wantErr: `encoding "base32": use base64 or hex`},
		{in: "a=B;format=pem;encoding=base64", wantErr: "encoding does not apply with format=pem, which decodes the certificate's secret itself; drop ;encoding=base64"},
		{in: "a=B;format=json;encoding=hex", wantErr: "encoding cannot be combined with format=json"},
		{in: "a=B;nofile=yes", wantErr: "nofile takes no value (write ;nofile)"},
		{in: "a=B;nofile;mode=0400", wantErr: "mode sets the mode of the entry's file, but nofile writes no file; drop ;mode=0400"},
		{in: "a=B;history=0", wantErr: `history "0" must be a number of versions from 1 to 16`},
		{in: "a=B;history=17", wantErr: "from 1 to 16"},
		{in: "a=B;history=x", wantErr: "from 1 to 16"},
		{in: "a=B@" + v + ";history=2", wantErr: "history writes the newest 2 versions, so it cannot start at a pinned version; drop @" + v + " or ;history=2"},
		{in: "a=B;mode=0644x", wantErr: `mode "0644x" is not an octal mode`},
		{in: "a=B;mode=0200", wantErr: "must let the owner read"},
		{in: "a=B;mode=0755", wantErr: "must not make secrets executable"},
		{in: "a=cert:B;format=pfx", wantErr: "format=pfx needs the private key, but cert: reads only the public certificate; write a=secret:B;format=pfx"},
		{in: "a=cert:B;split", wantErr: "write a=secret:B;format=pem;split"},
		{in: "a=cert:B;format=json", wantErr: "it does not apply to cert:"},
		{in: "a=cert:B;encoding=base64", wantErr: "encoding decodes a secret's value; cert: already writes a certificate's public certificate as PEM"},
		{in: "a=cert:B;history=2", wantErr: "for a certificate's versions write a=secret:B;format=pem;history=2"},
		{in: "a=key:B;format=pfx", wantErr: "Key Vault never releases a key's private part"},
		{in: "a=key:B;history=2", wantErr: "it does not apply to key:"},
		{in: "a=key:B;encoding=hex", wantErr: "key: already writes a key's public key as PEM"},
		{in: "../a=cert:B", wantErr: "must not start with '..'"},
		{in: strings.Repeat("a", 250) + "=B;format=pem;split", wantErr: "the entry writes"},
		{in: strings.Repeat("a", 251) + "=B;history=12", wantErr: "longer than 253 characters"},
	}
	for _, tt := range tests {
		got, err := ParseEntry(strings.TrimSpace(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseEntry(%q) = %+v, %v; want an error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseEntry(%q): %v", tt.in, err)
			continue
		}
		if d := cmp.Diff(tt.want, got); d != "" {
			t.Errorf("ParseEntry(%q) (-want +got):\n%s", tt.in, d)
		}
		// The canonical form parses to the same entry.
		if again, err := ParseEntry(got.String()); err != nil || again != got {
			t.Errorf("ParseEntry(%q) = %+v, %v; want %+v", got.String(), again, err, got)
		}
	}
}

func TestTypedEntryString(t *testing.T) {
	for in, want := range map[string]string{
		"tls=Secret:web-cert;split;FORMAT=pem":                     "tls=secret:web-cert;format=pem;split",
		"a=B;mode=400;history=2;encoding=HEX":                      "a=B;encoding=hex;history=2;mode=0400",
		"cert:web-cert":                                            "web-cert=cert:web-cert",
		"c=secret:x;format=json;mode=0o440":                        "c=secret:x;format=json;mode=0440",
		"db/password=DB-PASSWORD@4387E9F3D6E14C459867679A90FD0F79": "db/password=DB-PASSWORD@4387e9f3d6e14c459867679a90fd0f79",
	} {
		e, err := ParseEntry(in)
		if err != nil || e.String() != want {
			t.Errorf("ParseEntry(%q).String() = %q, %v; want %q", in, e.String(), err, want)
		}
	}
}

func TestTypedFileCollisions(t *testing.T) {
	tests := []struct {
		in      string
		wantErr string // empty: accepted
	}{
		{in: "tls=secret:c;format=pem;split, tls=secret:c;format=pem"},
		{in: "tls=secret:c;format=pem;split, tls.key=other", wantErr: `entry "tls.key=other": file "tls.key" is already used by entry "tls=secret:c;format=pem;split"`},
		{in: "tls.crt=cert:c, tls=secret:c;format=pem;split", wantErr: `file "tls.crt" is already used by entry "tls.crt=cert:c"`},
		{in: "db=secret:p;history=3, db/0=x", wantErr: `entry "db=secret:p;history=3" writes the directory "db" (one file per version); "db/0" cannot be inside it`},
		{in: "cfg=secret:c;format=json, cfg/extra=x", wantErr: `writes the directory "cfg" (one file per JSON key); "cfg/extra" cannot be inside it`},
		{in: "cfg=secret:c;format=json, cfg=x", wantErr: `file "cfg" is already used`},
		{in: "a=x, a/db=secret:p;history=2", wantErr: `file "a" cannot also be the directory of "a/db"`},
		{in: "tls.key=secret:c;format=pem;split", wantErr: ""},
		{in: "tls.key/x=a, tls=secret:c;format=pem;split", wantErr: `file "tls.key" cannot also be the directory of "tls.key/x"`},
		{in: "db=secret:p;history=2, db2=secret:p;history=2, cfg/a=secret:c;format=json, cfg/b=secret:c;format=json"},
	}
	for _, tt := range tests {
		_, err := ParseEntries(tt.in)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("ParseEntries(%q): %v", tt.in, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("ParseEntries(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestEntryFiles(t *testing.T) {
	tests := []struct {
		in    string
		files []string
		dir   bool
	}{
		{"a=B", []string{"a"}, false},
		{"tls=secret:c;format=pem;split", []string{"tls.key", "tls.crt"}, false},
		{"db=secret:p;history=3", []string{"db"}, true},
		{"cfg=secret:c;format=json", []string{"cfg"}, true},
		{"h=secret:c;format=pem;split;history=2", []string{"h"}, true},
	}
	for _, tt := range tests {
		e, err := ParseEntry(tt.in)
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(tt.files, e.Files()); d != "" || e.IsDir() != tt.dir {
			t.Errorf("%q: Files (-want +got):\n%s; IsDir %v, want %v", tt.in, d, e.IsDir(), tt.dir)
		}
	}
}

func TestJSONFile(t *testing.T) {
	tests := []struct {
		dir, key, want, wantErr string
	}{
		{"cfg", "DB_HOST", "cfg/DB_HOST", ""},
		{"cfg/0", "app.json", "cfg/0/app.json", ""},
		{"cfg", ".hidden", "cfg/.hidden", ""},
		{"cfg", "", "", `the JSON key "" cannot be a file name`},
		{"cfg", "a/b", "", "contains '/'"},
		{"cfg", "..data", "", "no path segment may start with '..'"},
		{"cfg", "..", "", "'.' or '..' segments"},
		{"cfg", "has space", "", "may only use letters"},
		{"cfg", strings.Repeat("k", 250), "", "longer than 253"},
	}
	for _, tt := range tests {
		got, err := JSONFile(tt.dir, tt.key)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("JSONFile(%q, %q) = %q, %v; want an error containing %q", tt.dir, tt.key, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("JSONFile(%q, %q) = %q, %v; want %q", tt.dir, tt.key, got, err, tt.want)
		}
	}
}

func TestAgentArgsTypedRoundTrip(t *testing.T) {
	var entries []Entry
	for _, s := range []string{"tls=secret:web-cert;format=pem;split;mode=0400", "ca.crt=cert:web-cert", "signing.pub=key:signing-key",
		"blob.bin=secret:blob;encoding=base64", "db=secret:db-pass;history=3", "cfg=secret:app-config;format=json", "plain=P"} {
		e, err := ParseEntry(s)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	c := Config{Mode: ModeInit, VaultURL: "https://myvault.vault.azure.net/", Entries: entries, Dir: "/s", FileMode: 0o440, Identity: IdentityWorkload}
	got, err := ParseArgs(c.Args(), nil)
	if err != nil {
		t.Fatalf("ParseArgs(%q): %v", c.Args(), err)
	}
	if d := cmp.Diff(c, got); d != "" {
		t.Errorf("round trip (-want +got):\n%s", d)
	}
	_, err = ParseArgs([]string{"init", "--dir=/d", "--vault=https://v/", "--identity=system", "--secret=db=secret:p;history=2", "--secret=db/0=x"}, nil)
	if err == nil || !strings.Contains(err.Error(), `--secret: entry "db=secret:p;history=2" writes the directory "db"`) {
		t.Errorf("nested in a history directory: %v", err)
	}
}

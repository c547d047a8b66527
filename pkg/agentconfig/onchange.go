package agentconfig

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// OnChangeKind is what the rotating agent does after it swaps in a new set.
type OnChangeKind string

// Actions on change. The zero OnChange (Kind "") does nothing.
const (
	// OnChangeHTTP calls http://127.0.0.1:<port><path> in the pod's network
	// namespace, which the agent shares.
	OnChangeHTTP OnChangeKind = "http"
	// OnChangeRestart reports each new set to the version hub, whose restart
	// controller rolls the pod's owner.
	OnChangeRestart OnChangeKind = "restart"
)

// Defaults and bounds of the http action's options.
const (
	DefaultOnChangeMethod  = "POST"
	DefaultOnChangeTimeout = 5 * time.Second
	MinOnChangeTimeout     = time.Second
	MaxOnChangeTimeout     = time.Minute
	DefaultOnChangeRetries = 5
	MaxOnChangeRetries     = 10
	// MaxOnChangePath bounds the path (with its query) of the http action.
	MaxOnChangePath = 512
)

// onChangeMethods are the methods the http action may use, in the order
// messages list them.
var onChangeMethods = []string{"POST", "PUT", "PATCH", "GET"}

// maxOnChangeLen bounds a whole written action: "http:", a port, the path and
// every option once, with room for spaces.
const maxOnChangeLen = len("http:65535") + MaxOnChangePath + 96

// OnChange is the pod's action after the rotating agent swaps in a new set
// (never after the first set).
//
// The written grammar (see docs/contract.md, "Actions on change"):
//
//	on-change = "restart" | "http:" port path *( ";" option )
//	port      = 1-65535
//	path      = "/" *( RFC 3986 pchar | "/" | "?" ) without ";" (at most 512 characters)
//	option    = "method=" ( "POST" | "PUT" | "PATCH" | "GET" )
//	          | "timeout=" duration (1s-60s) | "retries=" 0-10
//
// Kinds, option names and methods are case-insensitive; String writes kinds
// and option names in lower case and methods in upper case, leaves out the
// options at their defaults, and writes the others in the order above.
type OnChange struct {
	// Kind is OnChangeHTTP, OnChangeRestart, or "" for no action.
	Kind OnChangeKind
	// Port and Path are the http action's target on 127.0.0.1; Path starts
	// with '/' and may carry a query.
	Port int
	Path string
	// Method is the http action's method (upper case).
	Method string
	// Timeout bounds each attempt of the http action.
	Timeout time.Duration
	// Retries is how many times a failed http call is tried again.
	Retries int
}

// IsZero reports whether o is no action.
func (o OnChange) IsZero() bool { return o.Kind == "" }

// URL is the http action's URL.
func (o OnChange) URL() string { return "http://127.0.0.1:" + strconv.Itoa(o.Port) + o.Path }

// String returns the action in its canonical written form ("" for none).
func (o OnChange) String() string {
	switch o.Kind {
	case OnChangeRestart:
		return string(OnChangeRestart)
	case OnChangeHTTP:
	default:
		return ""
	}
	var b strings.Builder
	b.WriteString("http:" + strconv.Itoa(o.Port) + o.Path)
	if o.Method != DefaultOnChangeMethod {
		b.WriteString(";method=" + o.Method)
	}
	if o.Timeout != DefaultOnChangeTimeout {
		b.WriteString(";timeout=" + o.Timeout.String())
	}
	if o.Retries != DefaultOnChangeRetries {
		b.WriteString(";retries=" + strconv.Itoa(o.Retries))
	}
	return b.String()
}

// onChangeHint is the form every error of ParseOnChange ends with.
const onChangeHint = "write http:<port><path>[;method=<M>][;timeout=<duration>][;retries=<n>] (e.g. http:8080/-/reload) or restart"

// onChangeOptionsHint lists the http action's options.
const onChangeOptionsHint = "options are method=POST|PUT|PATCH|GET (default POST), timeout=<1s-60s> (default 5s) and retries=<0-10> (default 5)"

// ParseOnChange parses an action on change (see OnChange for the grammar).
// Its errors quote the value (at most its first 40 characters when it is
// longer than any valid action) and say what to write instead.
func ParseOnChange(raw string) (OnChange, error) {
	s := strings.TrimSpace(raw)
	if len(s) > maxOnChangeLen {
		return OnChange{}, fmt.Errorf("%q... is longer than the longest valid action (%d characters); %s", s[:40], maxOnChangeLen, onChangeHint)
	}
	fail := func(format string, args ...any) (OnChange, error) {
		return OnChange{}, fmt.Errorf("%q: "+format, append([]any{s}, args...)...)
	}
	if s == "" {
		return fail("empty; %s, or remove the annotation for no action", onChangeHint)
	}
	head, opts, hasOpts := strings.Cut(s, ";")
	head = strings.TrimSpace(head)
	if strings.EqualFold(head, string(OnChangeRestart)) {
		if hasOpts {
			return fail("restart takes no options; write restart")
		}
		return OnChange{Kind: OnChangeRestart}, nil
	}
	kind, target, hasKind := strings.Cut(head, ":")
	switch k := strings.ToLower(strings.TrimSpace(kind)); {
	case k == "signal" || strings.HasPrefix(k, "sig"):
		return fail("signals are not supported (the agent would need the app's user and PID namespace, which would expose its Azure token to the app; see docs/contract.md, \"Actions on change\"); %s", onChangeHint)
	case !hasKind:
		return fail("unknown action; %s", onChangeHint)
	case k == "https":
		return fail("the agent calls the app on 127.0.0.1 in plain HTTP (the call never leaves the pod); write http:<port><path>")
	case k != string(OnChangeHTTP):
		return fail("unknown action %q; %s", strings.TrimSpace(kind), onChangeHint)
	}
	o := OnChange{Kind: OnChangeHTTP, Method: DefaultOnChangeMethod, Timeout: DefaultOnChangeTimeout, Retries: DefaultOnChangeRetries}
	target = strings.TrimSpace(target)
	if strings.HasPrefix(target, "//") {
		return fail("write the port right after http: (the agent calls 127.0.0.1, the pod itself), e.g. http:8080/-/reload")
	}
	slash := strings.IndexByte(target, '/')
	port := target
	if slash >= 0 {
		port, o.Path = target[:slash], target[slash:]
	}
	n, err := strconv.Atoi(port)
	switch {
	case port == "":
		return fail("no port: write the app's port right after http:, e.g. http:8080/-/reload")
	case err != nil || !allBytes(port, func(c byte) bool { return '0' <= c && c <= '9' }):
		return fail("port %q must be a number from 1 to 65535 (the agent calls 127.0.0.1:<port>; no host can be given), e.g. http:8080/-/reload", port)
	case n < 1 || n > 65535:
		return fail("port %s must be from 1 to 65535", port)
	}
	o.Port = n
	if err := checkOnChangePath(o.Path); err != nil {
		return fail("%v", err)
	}
	if hasOpts {
		if err := o.parseOptions(opts); err != nil {
			return fail("%v", err)
		}
	}
	return o, nil
}

// checkOnChangePath checks the path (and query) of the http action: RFC 3986
// path and query characters, without ';' (the options' separator) or a
// fragment.
func checkOnChangePath(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("no path: write the app's reload path after the port, e.g. http:8080/-/reload")
	case len(p) > MaxOnChangePath:
		return fmt.Errorf("the path is longer than %d characters", MaxOnChangePath)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '#':
			return fmt.Errorf("path %q has a fragment ('#'), which is never sent to the app; drop it", p)
		case c == '%':
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return fmt.Errorf("path %q: '%%' must start a percent-encoding such as %%2F", p)
			}
			i += 2
		case !isPathByte(c):
			return fmt.Errorf("path %q may only use the characters of a URL path and query (RFC 3986: letters, digits and -._~!$&'()*+,=:@/?, or %%XX); percent-encode the others", p)
		}
	}
	return nil
}

// isPathByte reports whether c may appear as it is in the http action's path
// or query: RFC 3986 unreserved, sub-delims but ';', ':', '@', '/' and '?'.
func isPathByte(c byte) bool {
	return isAlnum(c) || strings.IndexByte("-._~!$&'()*+,=:@/?", c) >= 0
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// parseOptions parses the http action's options, the text after the first ';'.
func (o *OnChange) parseOptions(s string) error {
	seen := map[string]bool{}
	for _, opt := range strings.Split(s, ";") {
		key, val, hasVal := strings.Cut(strings.TrimSpace(opt), "=")
		key, val = strings.ToLower(strings.TrimSpace(key)), strings.TrimSpace(val)
		if key == "" {
			return fmt.Errorf("empty option (a stray ';', or a ';' in the path, which must be percent-encoded as %%3B); %s", onChangeOptionsHint)
		}
		if seen[key] {
			return fmt.Errorf("option %s is given twice", key)
		}
		seen[key] = true
		switch key {
		case "method", "timeout", "retries":
			if !hasVal || val == "" {
				return fmt.Errorf("option %s needs a value; %s", key, onChangeOptionsHint)
			}
		default:
			return fmt.Errorf("unknown option %q; %s", key, onChangeOptionsHint)
		}
		switch key {
		case "method":
			m := strings.ToUpper(val)
			ok := false
			for _, allowed := range onChangeMethods {
				ok = ok || m == allowed
			}
			if !ok {
				return fmt.Errorf("method %q: use %s (the call has an empty body)", val, strings.Join(onChangeMethods, ", "))
			}
			o.Method = m
		case "timeout":
			d, err := time.ParseDuration(val)
			switch {
			case err != nil:
				return fmt.Errorf("timeout %q is not a duration such as 3s", val)
			case d < MinOnChangeTimeout || d > MaxOnChangeTimeout:
				return fmt.Errorf("timeout %q must be from %s to %s (it bounds each attempt)", val, MinOnChangeTimeout, MaxOnChangeTimeout)
			}
			o.Timeout = d
		case "retries":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 || n > MaxOnChangeRetries {
				return fmt.Errorf("retries %q must be a number from 0 to %d", val, MaxOnChangeRetries)
			}
			o.Retries = n
		}
	}
	return nil
}

package events

import (
	"fmt"
	"net/url"
	"strings"
)

// ParseQueueURL checks the URL of a Storage queue given to the hub
// (--events-queue), https://ACCOUNT.queue.core.windows.net/QUEUE (or a
// sovereign cloud's queue.core.* suffix), and returns it normalized. Errors
// say what is wrong and what to give instead; a SAS token is refused, since
// the hub reads the queue with its Azure AD identity.
func ParseQueueURL(raw string) (string, error) {
	const want = "give https://ACCOUNT.queue.core.windows.net/QUEUE (az storage account show --query primaryEndpoints.queue, then the queue's name)"
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("not a URL: %s", want)
	}
	if u.Scheme != "https" {
		return "", fmt.Errorf("scheme %q: the queue is read over https only; %s", u.Scheme, want)
	}
	if u.User != nil {
		return "", fmt.Errorf("the URL holds a user name or password: %s", want)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("the URL has a query or fragment (a SAS token?): the hub reads the queue with its Azure AD identity, %s", want)
	}
	host := strings.ToLower(u.Hostname())
	labels := strings.Split(host, ".")
	if len(labels) < 3 || labels[1] != "queue" {
		return "", fmt.Errorf("host %q is not a Storage account's queue endpoint ACCOUNT.queue.<cloud suffix>: %s", host, want)
	}
	if err := checkAccountName(labels[0]); err != nil {
		return "", fmt.Errorf("host %q: %v; %s", host, err, want)
	}
	name := strings.Trim(u.Path, "/")
	if name == "" || strings.Contains(name, "/") {
		return "", fmt.Errorf("path %q: the URL must name exactly one queue after the host; %s", u.Path, want)
	}
	if err := checkQueueName(name); err != nil {
		return "", err
	}
	u.Scheme, u.Host, u.Path, u.RawPath = "https", strings.ToLower(u.Host), "/"+name, ""
	return u.String(), nil
}

// checkAccountName checks a Storage account's name: 3 to 24 lower-case
// letters and digits.
func checkAccountName(s string) error {
	if len(s) < 3 || len(s) > 24 {
		return fmt.Errorf("account name %q is not 3 to 24 characters", s)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return fmt.Errorf("account name %q has %q: only lower-case letters and digits", s, r)
		}
	}
	return nil
}

// checkQueueName checks a queue's name as Azure Storage does: 3 to 63
// lower-case letters, digits and single hyphens, starting and ending with a
// letter or digit.
func checkQueueName(s string) error {
	bad := func(why string) error {
		return fmt.Errorf("queue name %q: %s (3 to 63 lower-case letters, digits and single hyphens, starting and ending with a letter or digit)", s, why)
	}
	if len(s) < 3 || len(s) > 63 {
		return bad("not 3 to 63 characters")
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return bad(fmt.Sprintf("has %q", r))
		}
	}
	if s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return bad("a hyphen at an end, or two in a row")
	}
	return nil
}

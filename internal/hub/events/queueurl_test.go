package events

import (
	"strings"
	"testing"
)

func TestParseQueueURL(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{in: "https://kvevents.queue.core.windows.net/kvinject-events", want: "https://kvevents.queue.core.windows.net/kvinject-events"},
		{in: " https://KVEvents.Queue.Core.Windows.Net/kvinject-events/ ", want: "https://kvevents.queue.core.windows.net/kvinject-events"},
		{in: "https://kvevents.queue.core.chinacloudapi.cn/q01", want: "https://kvevents.queue.core.chinacloudapi.cn/q01"},
		{in: "http://kvevents.queue.core.windows.net/q01", err: `scheme "http": the queue is read over https only`},
		{in: "kvevents.queue.core.windows.net/q01", err: "not a URL"},
		{in: "https://kvevents.queue.core.windows.net/q01?sv=2024&sig=abc", err: "a SAS token?"},
		{in: "https://kvevents.blob.core.windows.net/q01", err: "is not a Storage account's queue endpoint"},
		{in: "https://myvault.vault.azure.net/q01", err: "is not a Storage account's queue endpoint"},
		{in: "https://KV_events.queue.core.windows.net/q01", err: `account name "kv_events" has '_'`},
		{in: "https://kvevents.queue.core.windows.net/", err: "must name exactly one queue"},
		{in: "https://kvevents.queue.core.windows.net/a/b", err: "must name exactly one queue"},
		{in: "https://kvevents.queue.core.windows.net/Events", err: `queue name "Events": has 'E'`},
		{in: "https://kvevents.queue.core.windows.net/kv--events", err: "two in a row"},
		{in: "https://kvevents.queue.core.windows.net/q", err: "not 3 to 63 characters"},
		{in: "https://user:pw@kvevents.queue.core.windows.net/q01", err: "user name or password"},
	}
	for _, tc := range tests {
		got, err := ParseQueueURL(tc.in)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: error %v, want one containing %q", tc.in, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("%q = %q, %v; want %q", tc.in, got, err, tc.want)
		case err != nil && !strings.Contains(err.Error(), "https://ACCOUNT.queue.core.windows.net/QUEUE") && !strings.Contains(err.Error(), "queue name"):
			t.Errorf("%q: %v does not say what to give", tc.in, err)
		}
	}
}

package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	authenticationv1 "k8s.io/api/authentication/v1"

	"github.com/kvinject/kvinject/pkg/hubapi"
	"github.com/kvinject/kvinject/pkg/mapping"
	"github.com/kvinject/kvinject/pkg/mutate"
)

// restartFixture is a fixture whose hub has a restart controller, with a pod
// whose agent has the restart action ("restarting") and the controller's token
// ("restarter").
func restartFixture(t *testing.T) *fixture {
	t.Helper()
	f := newFixture(t, Options{MaxWait: 2 * time.Second, RestarterServiceAccount: "kvinject-system/kvinject-restarter"})
	hubCfg := mutate.Config{NativeSidecars: true, HubURL: "https://kvinject-hub.kvinject-system.svc", HubCA: "ca", RestartAction: true}
	pod := injectedPod(t, map[string]string{
		mapping.AnnotationVault: fixtureVault, mapping.AnnotationSecrets: "api.txt=API-KEY, db.txt=DB-PASSWORD",
		mapping.AnnotationRotation: "1m", mapping.AnnotationOnChange: "restart",
	}, hubCfg)
	pod.Name, pod.UID = "restarting", "u-restarting"
	if err := f.kube.Tracker().Add(pod); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(10 * time.Minute).Unix()
	for name, user := range map[string]authenticationv1.UserInfo{
		"restarting": podUser(pod.Namespace, pod.Spec.ServiceAccountName, pod.Name, string(pod.UID)),
		"restarter":  podUser("kvinject-system", "kvinject-restarter", "kvinject-restarter-abc", "u-restarter"),
		"other-sa":   podUser("kvinject-system", "kvinject-hub", "kvinject-hub-abc", "u-hub"),
		"other-ns":   podUser("shop", "kvinject-restarter", "fake-restarter", "u-fake"),
	} {
		f.tokens[name] = jwt(fmt.Sprintf(`{"sub":%q,"exp":%d}`, name, exp))
		f.rv.tokens[f.tokens[name]] = authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: []string{hubapi.Audience}, User: user}
	}
	return f
}

func (f *fixture) base() string { return strings.TrimSuffix(f.url, hubapi.WatchPath) }

// report posts a report with the named token.
func (f *fixture) report(t *testing.T, token string, r hubapi.ChangedReport) (int, *hubapi.Refusal) {
	t.Helper()
	body, _ := json.Marshal(r)
	req, _ := http.NewRequest(http.MethodPost, f.base()+hubapi.ChangedPath, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+f.tokens[token])
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNoContent {
		return resp.StatusCode, nil
	}
	return resp.StatusCode, hubapi.ReadRefusal(resp)
}

// feed reads the feed with the named token.
func (f *fixture) feed(t *testing.T, ctx context.Context, token, hub string, after uint64) (int, hubapi.Feed, *hubapi.Refusal) {
	t.Helper()
	u := f.base() + hubapi.FeedPath
	if hub != "" {
		u += fmt.Sprintf("?%s=%s&%s=%d", hubapi.FeedHubParam, hub, hubapi.FeedAfterParam, after)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	req.Header.Set("Authorization", "Bearer "+f.tokens[token])
	resp, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var fd hubapi.Feed
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, fd, hubapi.ReadRefusal(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(&fd); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, fd, nil
}

// TestServeReportsToTheFeed: a restarting pod's report reaches the
// restarter's held feed request at once, as the hub verified it.
func TestServeReportsToTheFeed(t *testing.T) {
	f := restartFixture(t)
	_, first, _ := f.feed(t, context.Background(), "restarter", "", 0)
	if first.Hub == "" || len(first.Changes) != 0 {
		t.Fatalf("first answer: %+v", first)
	}
	type result struct {
		fd   hubapi.Feed
		took time.Duration
	}
	got := make(chan result, 1)
	go func() {
		start := time.Now()
		_, fd, _ := f.feed(t, context.Background(), "restarter", first.Hub, first.Next)
		got <- result{fd, time.Since(start)}
	}()
	time.Sleep(200 * time.Millisecond) // the request is held
	newVersion := f.emu.SetSecret(fixtureVault, "DB-PASSWORD", "rotated")
	if code, ref := f.report(t, "restarting", hubapi.ChangedReport{Vault: vaultURL, Objects: []hubapi.Object{secretAt("DB-PASSWORD", newVersion)}}); code != http.StatusNoContent {
		t.Fatalf("report: %d %+v", code, ref)
	}
	r := <-got
	if len(r.fd.Changes) != 1 || r.took > 1500*time.Millisecond {
		t.Fatalf("feed after %s: %+v", r.took, r.fd)
	}
	c := r.fd.Changes[0]
	if c.Namespace != "shop" || c.Pod != "restarting" || c.PodUID != "u-restarting" || c.Vault != vaultURL ||
		len(c.Objects) != 1 || c.Objects[0] != secretAt("DB-PASSWORD", newVersion) || c.Time.IsZero() {
		t.Fatalf("change: %+v", c)
	}
	// A second report within 10 s is coalesced.
	f.report(t, "restarting", hubapi.ChangedReport{Vault: vaultURL, Objects: []hubapi.Object{secretAt("DB-PASSWORD", newVersion)}})
	if got := testutil.ToFloat64(f.srv.feedMetrics.reports.WithLabelValues(reportCoalesced)); got != 1 {
		t.Errorf("coalesced reports: %v", got)
	}
	// Nothing new: the feed's wait ends empty.
	code, fd, _ := f.feed(t, context.Background(), "restarter", r.fd.Hub, r.fd.Next)
	if code != 200 || len(fd.Changes) != 0 || fd.Next != r.fd.Next {
		t.Fatalf("empty wait: %d %+v", code, fd)
	}
	if n := f.emu.ValueReads(f.hubID); n != 0 {
		t.Errorf("the hub's identity read %d values", n)
	}
}

// TestServeReportAndFeedRefusals: reports only from pods with the restart
// action, for their own objects; the feed only for the restarter.
func TestServeReportAndFeedRefusals(t *testing.T) {
	f := restartFixture(t)
	api := secretAt("API-KEY", f.version["API-KEY"])
	for _, tc := range []struct {
		name, token string
		report      hubapi.ChangedReport
		status      int
		reason, msg string
	}{
		{"a pod without the restart action", "orders", hubapi.ChangedReport{Vault: vaultURL, Objects: []hubapi.Object{api}}, 403, hubapi.ReasonNoRestartAction, "does not run with --on-change=restart"},
		{"an object the pod does not read", "restarting", hubapi.ChangedReport{Vault: vaultURL, Objects: []hubapi.Object{secretAt("OLD", f.version["OLD"])}}, 403, hubapi.ReasonNotPodObject, `"OLD"`},
		{"another vault", "restarting", hubapi.ChangedReport{Vault: "https://othervault.vault.azure.net/", Objects: []hubapi.Object{api}}, 403, hubapi.ReasonNotPodObject, "reads vault"},
		{"no objects", "restarting", hubapi.ChangedReport{Vault: vaultURL}, 400, hubapi.ReasonBadRequest, "0 objects"},
		{"a replaced pod", "replaced", hubapi.ChangedReport{Vault: vaultURL, Objects: []hubapi.Object{api}}, 403, hubapi.ReasonPodMismatch, ""},
	} {
		t.Run("report: "+tc.name, func(t *testing.T) {
			code, ref := f.report(t, tc.token, tc.report)
			if code != tc.status || ref == nil || ref.Reason != tc.reason || !strings.Contains(ref.Message, tc.msg) {
				t.Fatalf("%d %+v, want %d %s with %q", code, ref, tc.status, tc.reason, tc.msg)
			}
		})
	}
	for _, tc := range []struct{ token, msg string }{
		{"other-sa", "not kvinject-system/kvinject-hub"},
		{"other-ns", "not shop/kvinject-restarter"},
		{"orders", "not shop/app"},
	} {
		t.Run("feed: "+tc.token, func(t *testing.T) {
			code, _, ref := f.feed(t, context.Background(), tc.token, "", 0)
			if code != 403 || ref == nil || ref.Reason != hubapi.ReasonNotRestarter || !strings.Contains(ref.Message, tc.msg) {
				t.Fatalf("%d %+v", code, ref)
			}
		})
	}
	if got := testutil.ToFloat64(f.srv.feedMetrics.reports.WithLabelValues(reportKept)); got != 0 {
		t.Errorf("kept reports: %v", got)
	}

	// Wrong methods.
	for _, m := range []struct{ method, path, allow string }{{http.MethodGet, hubapi.ChangedPath, "POST"}, {http.MethodPost, hubapi.FeedPath, "GET"}} {
		req, _ := http.NewRequest(m.method, f.base()+m.path, nil)
		resp, err := f.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		ref := hubapi.ReadRefusal(resp)
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != m.allow || !strings.Contains(ref.Message, m.allow+" "+m.path) {
			t.Errorf("%s %s: %d Allow %q %+v", m.method, m.path, resp.StatusCode, resp.Header.Get("Allow"), ref)
		}
	}

	// A hub without a restarter keeps no reports and serves no feed.
	off := newFixture(t, Options{MaxWait: time.Second})
	off.tokens, off.rv.tokens = f.tokens, f.rv.tokens
	code, ref := off.report(t, "orders", hubapi.ChangedReport{Vault: vaultURL, Objects: []hubapi.Object{api}})
	if code != 403 || ref.Reason != hubapi.ReasonRestartsOff {
		t.Fatalf("report to a hub without a restarter: %d %+v", code, ref)
	}
}

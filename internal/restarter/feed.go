package restarter

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/kvinject/kvinject/pkg/hubapi"
)

// FeedOptions configure Feeds.
type FeedOptions struct {
	// HubURL is the hub's https URL, e.g. https://kvinject-hub.kvinject-system.svc;
	// its host is the name the hub's certificate is checked against.
	HubURL string
	// Peers is "<DNS name>:<port>": the name's addresses are every hub
	// replica (a headless Service, whose port is the pods' own), re-resolved
	// every ResolveInterval; each replica keeps its own feed, so the
	// controller reads each. Empty: only HubURL.
	Peers string
	// RootCAs are the only roots trusted for the hub.
	RootCAs *x509.CertPool
	// TokenFile is the projected ServiceAccount token of audience
	// hubapi.Audience, read again for every request.
	TokenFile string
	// Handle takes each change, in order per replica.
	Handle func(context.Context, hubapi.Change)
	// Resolve looks Peers up; nil means net.DefaultResolver.LookupHost.
	Resolve func(ctx context.Context, host string) ([]string, error)
	// ResolveInterval: 0 means 30 s.
	ResolveInterval time.Duration
	Logger          *slog.Logger
	Metrics         *Metrics
}

// Feeds reads every hub replica's feed until ctx ends.
func Feeds(ctx context.Context, o FeedOptions) error {
	u, err := url.Parse(o.HubURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return fmt.Errorf("hub URL %q: use https://<host>[:<port>], e.g. https://kvinject-hub.kvinject-system.svc", o.HubURL)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics()
	}
	if o.Resolve == nil {
		o.Resolve = net.DefaultResolver.LookupHost
	}
	if o.ResolveInterval == 0 {
		o.ResolveInterval = 30 * time.Second
	}
	var peerHost, peerPort string
	if o.Peers != "" {
		var err error
		if peerHost, peerPort, err = net.SplitHostPort(o.Peers); err != nil || peerHost == "" || peerPort == "" {
			return fmt.Errorf("hub peers %q: use <headless service DNS name>:<the hub pods' port>, e.g. kvinject-hub-peers.kvinject-system.svc:8443", o.Peers)
		}
	}
	tr := &http.Transport{
		Proxy:               nil,
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: o.RootCAs, ServerName: u.Hostname()},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     90 * time.Second,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	var wg sync.WaitGroup
	defer wg.Wait()
	pollers := map[string]context.CancelFunc{}
	defer func() {
		for _, cancel := range pollers {
			cancel()
		}
	}()
	start := func(addr string) {
		pctx, cancel := context.WithCancel(ctx)
		pollers[addr] = cancel
		p := &poller{o: o, client: client, base: "https://" + addr, log: o.Logger.With("hub", addr)}
		wg.Add(1)
		go func() { defer wg.Done(); p.run(pctx) }()
	}
	if o.Peers == "" {
		start(u.Host)
		<-ctx.Done()
		return nil
	}
	for {
		addrs, err := o.Resolve(ctx, peerHost)
		if err != nil {
			o.Logger.Warn("cannot resolve the hub replicas; keeping the ones known", "peers", o.Peers, "error", err)
		} else {
			want := map[string]bool{}
			for _, a := range addrs {
				want[net.JoinHostPort(a, peerPort)] = true
			}
			for addr, cancel := range pollers {
				if !want[addr] {
					cancel()
					delete(pollers, addr)
					o.Logger.Info("a hub replica left", "hub", addr)
				}
			}
			for addr := range want {
				if pollers[addr] == nil {
					o.Logger.Info("reading a hub replica's feed", "hub", addr)
					start(addr)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(o.ResolveInterval):
		}
	}
}

// poller reads one replica's feed.
type poller struct {
	o      FeedOptions
	client *http.Client
	base   string
	log    *slog.Logger

	hub  string
	next uint64
	// maxWait is the replica's announced longest hold.
	maxWait time.Duration
}

func (p *poller) run(ctx context.Context) {
	delay := time.Second
	up := false
	defer func() {
		if up {
			p.o.Metrics.connected.Dec()
		}
	}()
	for ctx.Err() == nil {
		err := p.once(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			p.o.Metrics.feeds.WithLabelValues("ok").Inc()
			if !up {
				up = true
				p.o.Metrics.connected.Inc()
			}
			delay = time.Second
			continue
		}
		p.o.Metrics.feeds.WithLabelValues("error").Inc()
		if up {
			up = false
			p.o.Metrics.connected.Dec()
		}
		p.log.Warn("reading the hub's feed failed; retrying", "error", err, "retryIn", delay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, 30*time.Second)
	}
}

// once makes one long poll and hands its changes over.
func (p *poller) once(ctx context.Context) error {
	token, err := os.ReadFile(p.o.TokenFile)
	if err != nil {
		return fmt.Errorf("reading the hub token %s: %w", p.o.TokenFile, err)
	}
	q := url.Values{}
	if p.hub != "" {
		q.Set(hubapi.FeedHubParam, p.hub)
		q.Set(hubapi.FeedAfterParam, strconv.FormatUint(p.next, 10))
	}
	timeout := 15 * time.Minute
	if p.maxWait > 0 {
		timeout = p.maxWait + 30*time.Second
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, p.base+hubapi.FeedPath+"?"+q.Encode(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if d, err := time.ParseDuration(resp.Header.Get(hubapi.MaxWaitHeader)); err == nil && d > 0 {
		p.maxWait = d
	}
	if resp.StatusCode != http.StatusOK {
		return hubapi.ReadRefusal(resp)
	}
	var f hubapi.Feed
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&f); err != nil {
		return fmt.Errorf("the hub's answer is not a feed: %w", err)
	}
	if f.Hub == "" {
		return errors.New("the hub's answer names no feed")
	}
	if p.hub != "" && f.Hub != p.hub {
		p.log.Info("the hub replica restarted: reading its new feed from the start")
	}
	if f.Lost > 0 {
		p.o.Metrics.lost.Add(float64(f.Lost))
		p.log.Warn("the hub replica no longer held some reports: their pods are not restarted", "lost", f.Lost)
	}
	for _, c := range f.Changes {
		p.o.Handle(ctx, c)
	}
	p.hub, p.next = f.Hub, f.Next
	return nil
}

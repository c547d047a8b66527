package hub

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/kvinject/kvinject/internal/hub/vaults"
	"github.com/kvinject/kvinject/pkg/hubapi"
)

// A held watch costs what its connection and its watch cost, and no
// goroutine: once a watch is set up, the handler takes the HTTP/1.1
// connection from net/http (Hijack) and returns, so that the connection's
// goroutine and buffers go. The watch's end (its batch or its vault's end,
// through vaults.Watch.SetNotify), a timer (the wait) and the server's
// draining each start a short goroutine that decides (settle); the answer is
// written on the connection, which then goes back to the http.Server through
// its listener (reuseListener) for the agent's next request, or is closed.
// Where the connection cannot be taken (HTTP/2, a handler outside Serve), the
// handler's goroutine holds the watch as before.

// parked is one held watch.
type parked struct {
	s           *Server
	watch       *vaults.Watch
	id          *identity
	vault       string
	start       time.Time
	wait        time.Duration // the jittered wait, within the token's life
	untilExpiry time.Duration // negative when unknown
	// For a hijacked connection: conn, whether it may serve another request
	// (reuse) and its maximum age; for a held one, answer receives the answer.
	conn       net.Conn
	reuse      bool
	closeAfter time.Time
	answerc    chan *answerMsg

	mu       sync.Mutex
	timer    *time.Timer
	timedOut bool
	done     bool
}

// answerMsg is a settled watch's answer.
type answerMsg struct {
	status int
	header http.Header
	body   []byte
	result string // of kvinject_hub_watch_requests_total
	// closeConn asks for Connection: close (draining).
	closeConn bool
}

// lot is the server's set of parked watches, for draining.
type lot struct {
	mu sync.Mutex
	m  map[*parked]struct{}
	wg sync.WaitGroup // parked watches not yet answered
}

func (l *lot) add(p *parked) {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[*parked]struct{}{}
	}
	l.m[p] = struct{}{}
	l.wg.Add(1)
	l.mu.Unlock()
}

func (l *lot) remove(p *parked) {
	l.mu.Lock()
	delete(l.m, p)
	l.mu.Unlock()
	l.wg.Done()
}

// all returns the parked watches.
func (l *lot) all() []*parked {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]*parked, 0, len(l.m))
	for p := range l.m {
		out = append(out, p)
	}
	return out
}

// holdWatch holds a set-up watch until it settles: parked on its hijacked
// connection (the handler returns at once), or, where the connection cannot
// be taken, in the handler's goroutine.
func (s *Server) holdWatch(w http.ResponseWriter, r *http.Request, id *identity, vault string, watch *vaults.Watch, wait, untilExpiry time.Duration) {
	p := &parked{
		s: s, watch: watch, id: id, vault: vault, start: time.Now(),
		wait: wait, untilExpiry: untilExpiry,
	}
	s.metrics.held.Inc()
	if s.hijack(w, r, p) {
		p.arm()
		return
	}
	p.answerc = make(chan *answerMsg, 1)
	p.arm()
	select {
	case a := <-p.answerc:
		writeAnswer(w, r, s, a)
	case <-r.Context().Done():
		if p.finish() {
			s.metrics.requests.WithLabelValues(resultClientGone).Inc()
		} else {
			<-p.answerc // settled at the same moment: nobody to answer
		}
	}
}

// hijack takes the connection from net/http when the server's listener can
// take it back, and nothing the client sent after the request is buffered.
func (s *Server) hijack(w http.ResponseWriter, r *http.Request, p *parked) bool {
	rl := s.listener.Load()
	if rl == nil || r.ProtoMajor != 1 {
		return false
	}
	ci, _ := r.Context().Value(connKey{}).(*connInfo)
	if ci == nil {
		return false
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	// The agent sends its next request after the answer; anything already
	// buffered (pipelining) would be lost with net/http's reader: such a
	// connection is closed after the answer.
	p.conn, p.closeAfter = conn, ci.closeAfter
	p.reuse = !r.Close && brw.Reader.Buffered() == 0
	return true
}

// arm registers the watch's wake-ups: its end, its wait, the server's
// draining.
func (p *parked) arm() {
	p.mu.Lock()
	p.timer = time.AfterFunc(p.wait, func() {
		p.mu.Lock()
		p.timedOut = true
		p.mu.Unlock()
		p.settle()
	})
	p.mu.Unlock()
	p.s.lot.add(p)
	p.watch.SetNotify(func() { go p.settle() })
	if p.s.isDraining() {
		go p.settle()
	}
}

// settle answers the watch if it has ended: it has a batch, its vault ended
// it, the server is draining, or its wait is over and no batch is queued for
// it (a queued batch is waited for, so that the agent keeps its place in the
// vault's queue: for at most one more MaxWait, never beyond the token's
// expiry).
func (p *parked) settle() {
	s := p.s
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		return
	}
	var changed []hubapi.Object
	var ended *refusal
	draining := false
	select {
	case changed = <-p.watch.Changed():
	case <-p.watch.Done():
		ended = vaultRefusal(p.watch.Err())
	default:
		switch {
		case s.isDraining():
			draining = true
		case !p.timedOut:
			p.mu.Unlock()
			return // not yet
		case p.watch.Pending():
			limit := p.wait + s.opts.MaxWait
			if p.untilExpiry >= 0 {
				limit = min(limit, p.untilExpiry)
			}
			if left := limit - time.Since(p.start); left > 0 {
				p.timer.Reset(left)
				p.mu.Unlock()
				return
			}
		default:
			// Pending turns false only once Changed has the batch.
			select {
			case changed = <-p.watch.Changed():
			default:
			}
		}
	}
	p.done = true
	p.timer.Stop()
	p.mu.Unlock()
	p.watch.Close()
	s.metrics.held.Dec()
	defer s.lot.remove(p)

	var a *answerMsg
	switch {
	case ended != nil:
		a = s.refusalAnswer(p.id, "", ended, 0)
	case changed == nil && draining:
		a = s.refusalAnswer(p.id, "", s.drainRefusal(), 0)
		a.closeConn = true
	default:
		a = okAnswer(changed, p.watch.Polled())
		if len(changed) > 0 {
			s.log.Debug("watch answered with changes", "pod", p.id.Pod(), "vault", p.vault, "changed", len(changed))
		}
	}
	a.header.Set(hubapi.MaxWaitHeader, s.MaxWaitBound().String())
	if p.conn == nil {
		p.answerc <- a
		return
	}
	p.writeOnConn(a)
}

// finish ends a held watch whose client went away; false if it had settled.
func (p *parked) finish() bool {
	p.mu.Lock()
	if p.done {
		p.mu.Unlock()
		return false
	}
	p.done = true
	p.timer.Stop()
	p.mu.Unlock()
	p.watch.Close()
	p.s.metrics.held.Dec()
	p.s.lot.remove(p)
	return true
}

// okAnswer is a 200 with the changed objects (none when the wait ended) and
// the objects of the request that the hub does not watch (poll).
func okAnswer(changed []hubapi.Object, poll []hubapi.Polled) *answerMsg {
	body, _ := json.Marshal(hubapi.WatchResponse{Changed: changed, Poll: poll})
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	result := resultUnchanged
	if len(changed) > 0 {
		result = resultChanged
	}
	return &answerMsg{status: http.StatusOK, header: h, body: append(body, '\n'), result: result}
}

// writeAnswer writes a settled watch's answer through net/http.
func writeAnswer(w http.ResponseWriter, r *http.Request, s *Server, a *answerMsg) {
	if a.result != resultRefused {
		s.metrics.requests.WithLabelValues(a.result).Inc()
	}
	h := w.Header()
	for k, v := range a.header {
		h[k] = v
	}
	if a.closeConn {
		h.Set("Connection", "close")
	}
	s.recycle(w, r)
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout))
	w.WriteHeader(a.status)
	_, _ = w.Write(a.body)
}

// writeOnConn writes a settled watch's answer on its hijacked connection, then
// hands the connection back to the http.Server for the agent's next request,
// or closes it (too old, draining, pipelined, or the write failed).
func (p *parked) writeOnConn(a *answerMsg) {
	s := p.s
	keep := p.reuse && !a.closeConn && time.Now().Before(p.closeAfter) && !s.isDraining()
	var buf bytes.Buffer
	fmt.Fprintf(&buf, "HTTP/1.1 %03d %s\r\n", a.status, http.StatusText(a.status))
	a.header.Set("Content-Length", strconv.Itoa(len(a.body)))
	a.header.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	if !keep {
		a.header.Set("Connection", "close")
	}
	_ = a.header.Write(&buf)
	buf.WriteString("\r\n")
	buf.Write(a.body)
	// Counted before the write, as net/http's answers are: the agent may read
	// the answer before a count after the write.
	if a.result != resultRefused {
		s.metrics.requests.WithLabelValues(a.result).Inc()
	}
	_ = p.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := p.conn.Write(buf.Bytes()); err != nil {
		// The agent went away while parked: counted under the answer's
		// result too.
		s.metrics.requests.WithLabelValues(resultClientGone).Inc()
		_ = p.conn.Close()
		return
	}
	_ = p.conn.SetWriteDeadline(time.Time{})
	if !keep || !s.reinject(p.conn, p.closeAfter) {
		_ = p.conn.Close()
	}
}

// refusalAnswer counts and logs a refusal (see refused) and returns its
// answer; status overrides the reason's when not 0.
func (s *Server) refusalAnswer(id *identity, client string, ref *refusal, status int) *answerMsg {
	ref = s.countRefusal(id, client, ref)
	rec := &recorder{header: http.Header{}}
	if status != 0 {
		writeRefusalStatus(rec, ref, status)
	} else {
		writeRefusal(rec, ref)
	}
	return &answerMsg{status: rec.status, header: rec.header, body: rec.body.Bytes(), result: resultRefused}
}

// recorder is the http.ResponseWriter that writeRefusal writes an answer of
// a parked watch to.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorder) Header() http.Header { return r.header }
func (r *recorder) WriteHeader(s int)   { r.status = s }
func (r *recorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.body.Write(b)
}

// reuseListener is the watch server's listener: the TLS listener's
// connections, and the hijacked connections handed back after their answer
// (Reinject), each served again by the http.Server as a connection of its
// own.
type reuseListener struct {
	net.Listener
	accepted chan acceptResult
	back     chan net.Conn
	closed   chan struct{}
	once     sync.Once
}

type acceptResult struct {
	c   net.Conn
	err error
}

func newReuseListener(inner net.Listener) *reuseListener {
	l := &reuseListener{Listener: inner, accepted: make(chan acceptResult), back: make(chan net.Conn), closed: make(chan struct{})}
	go l.acceptLoop()
	return l
}

// acceptLoop passes the inner listener's connections and errors to Accept
// (http.Server backs off on temporary errors such as EMFILE, and stops on
// others), until Close.
func (l *reuseListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- acceptResult{c, err}:
		case <-l.closed:
			if c != nil {
				_ = c.Close()
			}
			return
		}
	}
}

// Accept returns the next new or handed-back connection.
func (l *reuseListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.back:
		return c, nil
	case r := <-l.accepted:
		return r.c, r.err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close closes the listener; connections handed back afterwards are closed.
func (l *reuseListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.closed)
		err = l.Listener.Close()
	})
	return err
}

// handBack hands c to the http.Server; false when the listener is closed.
func (l *reuseListener) handBack(ctx context.Context, c net.Conn) bool {
	select {
	case l.back <- c:
		return true
	case <-l.closed:
		return false
	case <-ctx.Done():
		return false
	}
}

// reinject hands a hijacked connection back to the http.Server, keeping its
// maximum age; false when the server no longer serves.
func (s *Server) reinject(c net.Conn, closeAfter time.Time) bool {
	rl := s.listener.Load()
	if rl == nil {
		return false
	}
	s.ages.Store(c, closeAfter)
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	if !rl.handBack(ctx, c) {
		s.ages.Delete(c)
		return false
	}
	return true
}

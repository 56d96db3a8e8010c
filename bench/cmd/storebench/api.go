package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// apiOptions are the flags of the api phase (issue 3, "Performance").
type apiOptions struct {
	conc       int           // concurrent pod creators
	listPods   int           // pods in the namespace that is listed
	lists      int           // LISTs per variant
	getFor     time.Duration // closed-loop GETs per variant
	watchers   int           // concurrent watch streams on one master
	watchRate  int           // pod creates per second while watched
	watchWrite time.Duration // how long the watched writer writes
}

func registerAPIFlags(fs *flag.FlagSet, a *apiOptions) {
	fs.IntVar(&a.conc, "api-concurrency", 64, "api: concurrent pod creators")
	fs.IntVar(&a.listPods, "api-list-pods", 10_000, "api: pods in the listed namespace")
	fs.IntVar(&a.lists, "api-lists", 20, "api: LISTs per variant")
	fs.DurationVar(&a.getFor, "api-get-for", 5*time.Second, "api: closed-loop single-object GETs per variant")
	fs.IntVar(&a.watchers, "api-watchers", 1000, "api: concurrent watch streams on one master")
	fs.IntVar(&a.watchRate, "api-watch-rate", 20, "api: pod creates per second while watched")
	fs.DurationVar(&a.watchWrite, "api-watch-for", 10*time.Second, "api: how long the watched writer writes")
}

const (
	// benchNode exists as a Node object, so pod GC leaves pods bound to it
	// alone; the pods tolerate every NoExecute taint, so the node lifecycle
	// controller (no agent ever heartbeats for it) never evicts them, and
	// with nodeName set the scheduler ignores them: nothing but the
	// benchmark writes these pods.
	benchNode = "storebench-node"
	// sentAnnotation carries "<seq>-<unix nanos just before the write>".
	sentAnnotation = "storebench.flotilla.io/sent"
)

func benchPod(name string, ann map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "storebench"}, Annotations: ann},
		Spec: corev1.PodSpec{
			NodeName:    benchNode,
			Containers:  []corev1.Container{{Name: "app", Image: "registry.k8s.io/pause:3.10"}},
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute}},
		},
	}
}

// kubeTransport is HTTPS/1.1 keep-alive to the masters (tlsConf: see
// clusterCreds; a custom TLS config keeps it off HTTP/2), enough idle
// connections for every worker.
func kubeTransport(conns int, tlsConf *tls.Config) *http.Transport {
	return &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: 5 * time.Second,
		MaxIdleConns:        conns * 4,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
}

// kubeClient is client-go against one master as the admin (bearer token;
// tr verifies the master against the cluster CA): JSON, no client-side rate
// limit (QPS -1), no client timeout (each call has its own context).
func kubeClient(addr, token string, tr http.RoundTripper) (*kubernetes.Clientset, error) {
	return kubernetes.NewForConfig(&rest.Config{
		Host:          "https://" + addr,
		BearerToken:   token,
		UserAgent:     "storebench",
		QPS:           -1,
		ContentConfig: rest.ContentConfig{ContentType: "application/json", AcceptContentTypes: "application/json"},
		Transport:     tr,
	})
}

type apiLatRow struct {
	what      string
	n, errs   int
	lat       []time.Duration // sorted
	extra     string
	loadStart float64
	loadEnd   float64
}

func apiPhase(ctx context.Context, h *harness, o *options, out io.Writer, log *slog.Logger) error {
	a := o.api
	dir, err := h.subdir("api")
	if err != nil {
		return err
	}
	defer h.removeDir(dir)
	log.Info("api: starting 3 servers")
	c, err := startFlotilla(ctx, h, o.flotillaBin, dir, 4)
	if err != nil {
		return err
	}
	defer c.stop()
	leader, err := c.settle(ctx, []byte("x"), "api")
	if err != nil {
		return err
	}
	var follower *flotillaServer
	for _, s := range c.servers {
		if s != leader {
			follower = s
			break
		}
	}
	tr := kubeTransport(max(a.conc, 64)*2, c.creds.tokenTLS())
	defer tr.CloseIdleConnections()
	// Raw GETs present the server certificate instead of the token.
	rawTr := kubeTransport(4, c.creds.certTLS())
	defer rawTr.CloseIdleConnections()
	cs := map[*flotillaServer]*kubernetes.Clientset{}
	for _, s := range c.servers {
		if cs[s], err = kubeClient(s.api(), c.creds.adminToken, tr); err != nil {
			return err
		}
	}
	lc := cs[leader]

	// The node and the namespaces; the API's defaults (a leader service)
	// may still be starting, so retry.
	nss := []string{"bench-create-leader", "bench-create-follower", "bench-list", "bench-watch-leader", "bench-watch-follower"}
	err = waitFor(ctx, 60*time.Second, 200*time.Millisecond, "create node and namespaces", func(ctx context.Context) error {
		if _, err := lc.CoreV1().Nodes().Get(ctx, benchNode, metav1.GetOptions{}); err != nil {
			if _, err := lc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: benchNode}}, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
		for _, ns := range nss {
			if _, err := lc.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
				continue
			}
			if _, err := lc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}

	// 1. Pod creates, to the leader and (forwarded) to a follower.
	var creates []loadResult
	for _, t := range []struct {
		s    *flotillaServer
		role string
		ns   string
	}{{leader, "leader", "bench-create-leader"}, {follower, "follower", "bench-create-follower"}} {
		pods := cs[t.s].CoreV1().Pods(t.ns)
		log.Info("api: creating pods", "to", t.s.name, "role", t.role, "concurrency", a.conc, "for", o.warmup+o.duration)
		r := runLoad(ctx, t.role+" ("+t.s.name+")", a.conc, o.warmup, o.duration, o.opTimeout, func(ctx context.Context, w, seq int) error {
			_, err := pods.Create(ctx, benchPod(fmt.Sprintf("p-w%03d-%07d", w, seq), nil), metav1.CreateOptions{})
			return err
		})
		log.Info("api: creates done", "role", t.role, "creates/s", fmt.Sprintf("%.0f", r.throughput()), "p50", r.p(0.5), "p99", r.p(0.99), "errors", r.Errors)
		creates = append(creates, r)
		if err := ctx.Err(); err != nil {
			return err
		}
	}

	// 2. Fill the listed namespace, then GETs and LISTs.
	log.Info("api: filling", "namespace", "bench-list", "pods", a.listPods)
	fillStart := time.Now()
	if err := fillPods(ctx, lc.CoreV1().Pods("bench-list"), a.listPods, a.conc, o.opTimeout); err != nil {
		return err
	}
	fillTook := time.Since(fillStart)
	var gets []apiLatRow
	for _, s := range []*flotillaServer{leader, follower} {
		role := map[bool]string{true: "leader", false: "follower"}[s == leader]
		for _, rv := range []string{"", "0"} {
			pods := cs[s].CoreV1().Pods("bench-list")
			row := apiLatRow{what: fmt.Sprintf("%s (%s), resourceVersion=%q", role, s.name, rv), loadStart: loadAvg()}
			end := time.Now().Add(a.getFor)
			for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
				name := fmt.Sprintf("p-%07d", (i*7919)%a.listPods)
				gctx, cancel := context.WithTimeout(ctx, o.opTimeout)
				t0 := time.Now()
				_, err := pods.Get(gctx, name, metav1.GetOptions{ResourceVersion: rv})
				d := time.Since(t0)
				cancel()
				if err != nil {
					row.errs++
					continue
				}
				row.lat = append(row.lat, d)
			}
			row.loadEnd = loadAvg()
			row.n = len(row.lat)
			slices.Sort(row.lat)
			log.Info("api: gets", "what", row.what, "n", row.n, "p50", percentile(row.lat, 0.5), "p99", percentile(row.lat, 0.99))
			gets = append(gets, row)
		}
	}
	var lists []apiLatRow
	for _, v := range []struct {
		what string
		rv   string
		raw  bool
	}{
		{"client-go (typed, decoded), resourceVersion=\"\"", "", false},
		{"client-go (typed, decoded), resourceVersion=\"0\"", "0", false},
		{"raw HTTP (body read, not decoded), resourceVersion=\"\"", "", true},
	} {
		row := apiLatRow{what: v.what, loadStart: loadAvg()}
		items, bytesRead := 0, int64(0)
		for range a.lists {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			lctx, cancel := context.WithTimeout(ctx, 60*time.Second)
			t0 := time.Now()
			var err error
			if v.raw {
				bytesRead, err = rawGet(lctx, rawTr, "https://"+leader.api()+"/api/v1/namespaces/bench-list/pods")
			} else {
				var l *corev1.PodList
				l, err = lc.CoreV1().Pods("bench-list").List(lctx, metav1.ListOptions{ResourceVersion: v.rv})
				if err == nil {
					items = len(l.Items)
				}
			}
			d := time.Since(t0)
			cancel()
			if err != nil {
				row.errs++
				log.Warn("api: list", "err", err)
				continue
			}
			row.lat = append(row.lat, d)
		}
		row.loadEnd = loadAvg()
		row.n = len(row.lat)
		slices.Sort(row.lat)
		if v.raw {
			row.extra = fmt.Sprintf("%.1f MiB body", float64(bytesRead)/(1<<20))
		} else {
			row.extra = fmt.Sprintf("%d items", items)
		}
		log.Info("api: lists", "what", row.what, "n", row.n, "p50", percentile(row.lat, 0.5), "p99", percentile(row.lat, 0.99))
		lists = append(lists, row)
	}

	// 3. Watchers on one master, a writer to the leader.
	var watches []watchResult
	for _, t := range []struct {
		s    *flotillaServer
		role string
		ns   string
	}{{leader, "leader", "bench-watch-leader"}, {follower, "follower", "bench-watch-follower"}} {
		r, err := watchRun(ctx, a, t.s, c.creds.certTLS(), t.role, lc.CoreV1().Pods(t.ns), t.ns, o.opTimeout, log)
		if err != nil {
			return err
		}
		watches = append(watches, r)
	}

	// Report.
	fmt.Fprintf(out, "### API (issue 3): 3 masters, client-go over loopback HTTPS (HTTP/1.1, admin token), JSON, QPS -1\n\n")
	fmt.Fprintf(out, "Fresh 3-server cluster (leader %s, follower %s). Pods: one container, `spec.nodeName` = a Node object no agent serves, tolerating every NoExecute taint, so neither the scheduler, pod GC nor evictions touch them.\n\n", leader.name, follower.name)
	fmt.Fprintf(out, "#### Pod creates, concurrency %d, %s warm-up then %s measured\n\n", a.conc, o.warmup, o.duration)
	fmt.Fprintln(out, "| sent to | creates/s | p50 ms | p99 ms | max ms | errors | load avg before → after |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---:|---:|")
	for _, r := range creates {
		fmt.Fprintf(out, "| %s | %.0f | %s | %s | %s | %d | %.2f → %.2f |\n", r.System, r.throughput(), ms(r.p(0.5)), ms(r.p(0.99)), ms(r.p(1)), r.Errors, r.LoadStart, r.LoadEnd)
	}
	for _, r := range creates {
		if r.FirstErr != nil {
			fmt.Fprintf(out, "\n- %s: first error: %v\n", r.System, r.FirstErr)
		}
	}
	for _, r := range creates {
		fmt.Fprintf(out, "\nGoal ≥ 2,000 creates/s with p99 ≤ 50 ms, %s: %.0f/s %s, p99 %s ms %s.\n", r.System,
			r.throughput(), verdict(r.throughput() >= 2000), ms(r.p(0.99)), verdict(r.p(0.99) <= 50*time.Millisecond))
	}
	fmt.Fprintf(out, "\n#### Single-object GET, one client, sequential, %s per row, %d pods in the namespace\n\n", a.getFor, a.listPods)
	fmt.Fprintf(out, "(The %d pods were created by %d concurrent creators to the leader in %s, %.0f/s.)\n\n", a.listPods, a.conc, fillTook.Round(time.Millisecond), float64(a.listPods)/fillTook.Seconds())
	latTable(out, "GET from", gets)
	worstGet := time.Duration(0)
	for _, r := range gets {
		worstGet = max(worstGet, percentile(r.lat, 0.99))
	}
	fmt.Fprintf(out, "\nGoal GET p99 ≤ 5 ms: %s (worst row %s ms).\n", verdict(worstGet <= 5*time.Millisecond), ms(worstGet))
	fmt.Fprintf(out, "\n#### LIST of %d pods from the leader, %d times per row, sequential\n\n", a.listPods, a.lists)
	latTable(out, "LIST", lists)
	fmt.Fprintf(out, "\nGoal LIST p99 ≤ 300 ms: client-go %s (p99 %s ms, linearizable); raw HTTP %s (p99 %s ms).\n",
		verdict(percentile(lists[0].lat, 0.99) <= 300*time.Millisecond), ms(percentile(lists[0].lat, 0.99)),
		verdict(percentile(lists[2].lat, 0.99) <= 300*time.Millisecond), ms(percentile(lists[2].lat, 0.99)))
	fmt.Fprintf(out, "\n#### Watch: %d concurrent watch streams (raw HTTP, `?watch=1`, one connection each) on one master; a writer creates %d pods/s (open loop) for %s through the leader\n\n", a.watchers, a.watchRate, a.watchWrite)
	fmt.Fprintln(out, "Latency per delivered event: *sent → delivered* from a timestamp annotation set just before the create was sent; *ack → delivered* from the create's acknowledgement (an event that arrived before the ack counts 0).")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| watchers on | writes | writes/s | events expected | delivered | missing | sent→delivered p50 / p99 / max ms | ack→delivered p50 / p99 / max ms | write p50 / p99 ms | load avg before → after |")
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, r := range watches {
		fmt.Fprintf(out, "| %s | %d | %.1f | %d | %d | %d | %s / %s / %s | %s / %s / %s | %s / %s | %.2f → %.2f |\n", r.what, r.writes, r.writeRate, r.writes*r.watchers, len(r.sent), r.writes*r.watchers-len(r.sent),
			ms(percentile(r.sent, 0.5)), ms(percentile(r.sent, 0.99)), ms(percentile(r.sent, 1)),
			ms(percentile(r.ack, 0.5)), ms(percentile(r.ack, 0.99)), ms(percentile(r.ack, 1)),
			ms(percentile(r.writeLat, 0.5)), ms(percentile(r.writeLat, 0.99)), r.loadStart, r.loadEnd)
	}
	for _, r := range watches {
		if r.firstErr != nil {
			fmt.Fprintf(out, "\n- %s: %d errors, first: %v\n", r.what, r.errs, r.firstErr)
		}
	}
	for _, r := range watches {
		fmt.Fprintf(out, "\nGoal commit-to-delivery p99 ≤ 50 ms, watchers on the %s: ack→delivered %s ms %s; sent→delivered %s ms %s.\n", r.what,
			ms(percentile(r.ack, 0.99)), verdict(len(r.ack) > 0 && percentile(r.ack, 0.99) <= 50*time.Millisecond),
			ms(percentile(r.sent, 0.99)), verdict(len(r.sent) > 0 && percentile(r.sent, 0.99) <= 50*time.Millisecond))
	}
	fmt.Fprintln(out)
	return nil
}

func latTable(out io.Writer, col string, rows []apiLatRow) {
	fmt.Fprintf(out, "| %s | n | p50 ms | p99 ms | max ms | errors | | load avg before → after |\n", col)
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---:|---|---:|")
	for _, r := range rows {
		fmt.Fprintf(out, "| %s | %d | %s | %s | %s | %d | %s | %.2f → %.2f |\n", r.what, r.n,
			ms(percentile(r.lat, 0.5)), ms(percentile(r.lat, 0.99)), ms(percentile(r.lat, 1)), r.errs, r.extra, r.loadStart, r.loadEnd)
	}
}

type podCreater interface {
	Create(ctx context.Context, pod *corev1.Pod, opts metav1.CreateOptions) (*corev1.Pod, error)
}

// fillPods creates pods p-0000000 … p-(n-1) with conc workers.
func fillPods(ctx context.Context, pods podCreater, n, conc int, timeout time.Duration) error {
	var next atomic.Int64
	errs := make(chan error, conc)
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				cctx, cancel := context.WithTimeout(ctx, timeout)
				_, err := pods.Create(cctx, benchPod(fmt.Sprintf("p-%07d", i), nil), metav1.CreateOptions{})
				cancel()
				if err != nil {
					errs <- fmt.Errorf("create pod %d: %w", i, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	return ctx.Err()
}

// rawGet reads a GET's whole body without decoding it.
func rawGet(ctx context.Context, tr http.RoundTripper, url string) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return n, err
}

type watchResult struct {
	what               string
	watchers, writes   int
	sent, ack          []time.Duration // per delivered event, sorted
	writeLat           []time.Duration // sorted
	writeRate          float64         // creates/s achieved
	errs               int
	firstErr           error
	loadStart, loadEnd float64
}

// watchRun opens a.watchers raw watch streams on s for namespace ns (from
// the namespace's current resourceVersion; HTTPS with tlsConf), then creates a.watchRate pods
// per second through pods (the leader) and records when each stream
// receives each ADDED event.
func watchRun(ctx context.Context, a apiOptions, s *flotillaServer, tlsConf *tls.Config, role string, pods interface {
	podCreater
	List(ctx context.Context, opts metav1.ListOptions) (*corev1.PodList, error)
}, ns string, timeout time.Duration, log *slog.Logger) (watchResult, error) {
	res := watchResult{what: fmt.Sprintf("%s (%s)", role, s.name), watchers: a.watchers}
	l, err := pods.List(ctx, metav1.ListOptions{})
	if err != nil {
		return res, err
	}
	url := fmt.Sprintf("https://%s/api/v1/namespaces/%s/pods?watch=1&resourceVersion=%s", s.api(), ns, l.ResourceVersion)

	wtr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     tlsConf,
		TLSHandshakeTimeout: 5 * time.Second,
		DisableKeepAlives:   true, // one connection per stream, closed with it
		DisableCompression:  true,
	}
	defer wtr.CloseIdleConnections()
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()

	type recv struct {
		seq int32
		at  int64
	}
	got := make([][]recv, a.watchers)
	var received atomic.Int64
	var mu sync.Mutex
	noteErr := func(err error) {
		mu.Lock()
		res.errs++
		if res.firstErr == nil {
			res.firstErr = err
		}
		mu.Unlock()
	}
	log.Info("api: opening watch streams", "on", s.name, "watchers", a.watchers)
	var open, done sync.WaitGroup
	sem := make(chan struct{}, 50)
	for w := range a.watchers {
		open.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			sem <- struct{}{}
			req, err := http.NewRequestWithContext(wctx, http.MethodGet, url, nil)
			if err != nil {
				<-sem
				open.Done()
				noteErr(err)
				return
			}
			req.Header.Set("Accept", "application/json")
			resp, err := wtr.RoundTrip(req)
			<-sem
			open.Done()
			if err != nil {
				noteErr(fmt.Errorf("watch %d: %w", w, err))
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				noteErr(fmt.Errorf("watch %d: %s", w, resp.Status))
				return
			}
			br := bufio.NewReaderSize(resp.Body, 64<<10)
			key := []byte(`"` + sentAnnotation + `":"`)
			for {
				line, err := br.ReadSlice('\n')
				if err == bufio.ErrBufferFull {
					// An event larger than the buffer: keep reading it.
					rest, err2 := br.ReadBytes('\n')
					line, err = append(slices.Clone(line), rest...), err2
				}
				now := time.Now().UnixNano()
				if err != nil {
					if wctx.Err() == nil {
						noteErr(fmt.Errorf("watch %d: stream ended: %w", w, err))
					}
					return
				}
				if !bytes.HasPrefix(line, []byte(`{"type":"ADDED"`)) {
					continue
				}
				i := bytes.Index(line, key)
				if i < 0 {
					continue
				}
				v := line[i+len(key):]
				v = v[:bytes.IndexByte(v, '"')]
				seqStr, _, _ := bytes.Cut(v, []byte("-"))
				seq, err := strconv.Atoi(string(seqStr))
				if err != nil {
					continue
				}
				got[w] = append(got[w], recv{int32(seq), now})
				received.Add(1)
			}
		}()
	}
	open.Wait()
	mu.Lock()
	openErrs, openErr := res.errs, res.firstErr
	mu.Unlock()
	if openErrs > 0 {
		return res, fmt.Errorf("opening watches on %s: %d failed, first: %w", s.name, openErrs, openErr)
	}
	time.Sleep(time.Second) // every stream registered and idle

	log.Info("api: writing under watch", "on", s.name, "rate", a.watchRate, "for", a.watchWrite)
	res.loadStart = loadAvg()
	total := int(a.watchWrite.Seconds() * float64(a.watchRate))
	sentAt := make([]int64, total)
	ackAt := make([]int64, total)
	// Open loop: one create per tick, each in its own goroutine, so a slow
	// create does not lower the rate.
	tick := time.NewTicker(time.Second / time.Duration(a.watchRate))
	writeStart := time.Now()
	writeLat := make([]time.Duration, total)
	var writers sync.WaitGroup
	for seq := 0; seq < total && ctx.Err() == nil; seq++ {
		<-tick.C
		writers.Add(1)
		go func() {
			defer writers.Done()
			t0 := time.Now()
			sentAt[seq] = t0.UnixNano()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			_, err := pods.Create(cctx, benchPod(fmt.Sprintf("w-%06d", seq), map[string]string{sentAnnotation: fmt.Sprintf("%d-%d", seq, sentAt[seq])}), metav1.CreateOptions{})
			cancel()
			t1 := time.Now()
			if err != nil {
				noteErr(fmt.Errorf("create %d: %w", seq, err))
				return
			}
			ackAt[seq] = t1.UnixNano()
			writeLat[seq] = t1.Sub(t0)
		}()
	}
	tick.Stop()
	writers.Wait()
	res.writeRate = float64(total) / time.Since(writeStart).Seconds()
	for seq := range total {
		if ackAt[seq] != 0 {
			res.writeLat = append(res.writeLat, writeLat[seq])
			res.writes++
		}
	}
	// Let the streams drain: every event delivered, or 10 s.
	want := int64(res.writes * a.watchers)
	deadline := time.Now().Add(10 * time.Second)
	for received.Load() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	res.loadEnd = loadAvg()
	stopWatch()
	done.Wait()
	for _, g := range got {
		for _, r := range g {
			if int(r.seq) >= total || ackAt[r.seq] == 0 {
				continue
			}
			res.sent = append(res.sent, time.Duration(r.at-sentAt[r.seq]))
			res.ack = append(res.ack, time.Duration(max(0, r.at-ackAt[r.seq])))
		}
	}
	slices.Sort(res.sent)
	slices.Sort(res.ack)
	slices.Sort(res.writeLat)
	log.Info("api: watch done", "on", s.name, "writes", res.writes, "delivered", len(res.sent), "want", want,
		"sent→delivered p99", percentile(res.sent, 0.99), "ack→delivered p99", percentile(res.ack, 0.99))
	return res, ctx.Err()
}

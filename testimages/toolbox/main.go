package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// exitUnknown is the exit code for an unknown subcommand, the shell's "command not found".
const exitUnknown = 127

const usage = `usage: toolbox COMMAND [ARGS]
  serve [--port 8080] [--udp-port 0] [--ready=true] [--term-delay D]
                                HTTP server (/, /healthz, /readyz, /exit, /env, /file, /log, /bytes?n=N);
                                with --udp-port, also a UDP echo answering "hostname=NAME " + each datagram
  exit N                        print "exiting N" and exit with N
  sleep D|infinity [--term-delay D] [--ignore-term]   print "sleeping D", then sleep
  alloc MiB                     allocate and touch MiB of memory, then sleep
  cat [FILE]  echo ARGS...  env  ls DIR  hostname  write FILE CONTENT
  get URL                       HTTP GET, print the body; exit 1 on failure
  tcp ADDR                      connect, print "connected"
  udp ADDR MSG [--timeout 5s]   send MSG in one datagram, print the reply; exit 1 on timeout
  log N [--interval D]          N numbered lines, alternately to stdout and stderr
  crash-after D                 exit 1 after D
  kube get RESOURCE [-n NS]     in-cluster API client (rest.InClusterConfig): print the names of
                                configmaps, secrets, pods, services or serviceaccounts; exit 1 with the API's error
  kube create configmap NAME [-n NS] [--from-literal k=v]...
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 {
		fmt.Fprint(os.Stderr, usage)
		return exitUnknown
	}
	cmd, args := args[0], args[1:]
	var err error
	switch cmd {
	case "serve":
		err = serve(args)
	case "exit":
		return exit(args)
	case "sleep":
		err = sleep(args)
	case "alloc":
		err = alloc(args)
	case "cat":
		err = cat(args)
	case "echo":
		fmt.Println(strings.Join(args, " "))
	case "env":
		printEnv(os.Stdout)
	case "ls":
		err = ls(args)
	case "hostname":
		var h string
		if h, err = os.Hostname(); err == nil {
			fmt.Println(h)
		}
	case "write":
		if len(args) != 2 {
			err = errors.New("usage: write FILE CONTENT")
		} else {
			err = os.WriteFile(args[0], []byte(args[1]), 0o644)
		}
	case "get":
		err = get(args)
	case "tcp":
		err = tcp(args)
	case "udp":
		err = udpClient(args, os.Stdout)
	case "log":
		err = logLines(args)
	case "crash-after":
		err = crashAfter(args)
	case "kube":
		err = kube(args, os.Stdout)
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "toolbox: unknown command %q\n%s", cmd, usage)
		return exitUnknown
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "toolbox %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

// parse parses flags wherever they are among the arguments (the flag
// package stops at the first positional one, but tests write
// "sleep 1h --term-delay 5s") and returns the positional ones.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// onTerm runs fn when SIGTERM or SIGINT arrives. A process that is PID 1
// in its namespace gets no default action for them, so a handler is what
// makes it stoppable at all.
func onTerm(fn func(os.Signal)) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	go func() { fn(<-ch) }()
}

// exitAfter is the usual handler: say so, wait delay, exit 0.
func exitAfter(delay time.Duration) func(os.Signal) {
	return func(sig os.Signal) {
		fmt.Printf("got %v, exiting in %v\n", sig, delay)
		time.Sleep(delay)
		os.Exit(0)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	port := fs.Int("port", 8080, "port to listen on")
	udpPort := fs.Int("udp-port", 0, "UDP echo port (0: none)")
	readyFlag := fs.Bool("ready", true, "start ready")
	termDelay := fs.Duration("term-delay", 0, "wait this long after SIGTERM before exiting")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var healthy, ready atomic.Bool
	healthy.Store(true)
	ready.Store(*readyFlag)
	hostname, _ := os.Hostname()

	mux := http.NewServeMux()
	mux.HandleFunc("/{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hostname=%s\nremote=%s\n", hostname, r.RemoteAddr)
	})
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if !healthy.Load() {
			http.Error(w, "failing", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "ok")
	})
	mux.HandleFunc("/healthz/fail", func(w http.ResponseWriter, r *http.Request) {
		healthy.Store(false)
		fmt.Fprintln(w, "healthz now fails")
	})
	mux.HandleFunc("/healthz/ok", func(w http.ResponseWriter, r *http.Request) {
		healthy.Store(true)
		fmt.Fprintln(w, "healthz now ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprint(w, "ready")
	})
	mux.HandleFunc("/ready/on", func(w http.ResponseWriter, r *http.Request) {
		ready.Store(true)
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/ready/off", func(w http.ResponseWriter, r *http.Request) {
		ready.Store(false)
		fmt.Fprintln(w, "not ready")
	})
	mux.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
		code, err := strconv.Atoi(r.URL.Query().Get("code"))
		if err != nil {
			http.Error(w, "code must be an integer", http.StatusBadRequest)
			return
		}
		// A known length, so the flushed body is complete without the
		// end the handler would write on return; once flushed it is in
		// the kernel's hands and the exit does not cut it.
		body := fmt.Sprintf("exiting %d\n", code)
		w.Header().Set("Connection", "close")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
		w.(http.Flusher).Flush()
		fmt.Printf("exiting %d\n", code)
		os.Exit(code)
	})
	mux.HandleFunc("/env", func(w http.ResponseWriter, r *http.Request) {
		printEnv(w)
	})
	mux.HandleFunc("/file", func(w http.ResponseWriter, r *http.Request) {
		b, err := os.ReadFile(r.URL.Query().Get("path"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		w.Write(b)
	})
	mux.HandleFunc("/log", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.Atoi(r.URL.Query().Get("n"))
		if err != nil || n < 0 {
			http.Error(w, "n must be a non-negative integer", http.StatusBadRequest)
			return
		}
		for i := range n {
			fmt.Fprintf(os.Stdout, "stdout %d\n", i)
			fmt.Fprintf(os.Stderr, "stderr %d\n", i)
		}
		fmt.Fprintf(w, "logged %d lines to each stream\n", n)
	})
	mux.HandleFunc("/bytes", serveBytes)

	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", *port))
	if err != nil {
		return err
	}
	// Both sockets are open before either is announced, so a test that
	// read "serving on" may use the UDP port too.
	var pc net.PacketConn
	if *udpPort != 0 {
		if pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", *udpPort)); err != nil {
			return err
		}
	}
	onTerm(exitAfter(*termDelay))
	fmt.Printf("serving on %s\n", ln.Addr())
	if pc != nil {
		fmt.Printf("udp echo on %s\n", pc.LocalAddr())
		go udpEcho(pc, hostname)
	}
	return http.Serve(ln, logRequests(mux))
}

// bytesChunk is how much /bytes writes at a time: big writes, so a
// throughput benchmark measures the path, not this server's syscalls.
const bytesChunk = 1 << 20

// serveBytes streams ?n= bytes (zeros) with a Content-Length, for
// throughput measurements.
func serveBytes(w http.ResponseWriter, r *http.Request) {
	n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
	if err != nil || n < 0 {
		http.Error(w, "n must be a non-negative integer", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
	buf := make([]byte, min(n, bytesChunk))
	for n > 0 {
		k, err := w.Write(buf[:min(n, int64(len(buf)))])
		if err != nil {
			return // the client went away
		}
		n -= int64(k)
	}
}

// statusWriter remembers the status a handler wrote, for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// logRequests writes one line per request to stdout: tests read it back
// through `kubectl logs`.
func logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		fmt.Printf("%s %s from %s: %d\n", r.Method, r.URL.RequestURI(), r.RemoteAddr, sw.status)
	})
}

func exit(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "toolbox exit: usage: exit N")
		return 2
	}
	code, err := strconv.Atoi(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "toolbox exit: %q is not a number\n", args[0])
		return 2
	}
	fmt.Printf("exiting %d\n", code)
	return code
}

func sleep(args []string) error {
	fs := flag.NewFlagSet("sleep", flag.ContinueOnError)
	termDelay := fs.Duration("term-delay", 0, "wait this long after SIGTERM before exiting")
	ignoreTerm := fs.Bool("ignore-term", false, "ignore SIGTERM (only SIGKILL stops it)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: sleep D|infinity [--term-delay D] [--ignore-term]")
	}
	if *ignoreTerm {
		signal.Ignore(syscall.SIGTERM, syscall.SIGINT)
	} else {
		onTerm(exitAfter(*termDelay))
	}
	var d time.Duration
	if pos[0] != "infinity" {
		if d, err = time.ParseDuration(pos[0]); err != nil {
			return err
		}
	}
	// Said once the signal handling is in place, so a test knows a
	// SIGTERM from now on is handled as asked.
	fmt.Printf("sleeping %s\n", pos[0])
	if pos[0] == "infinity" {
		forever()
	}
	time.Sleep(d)
	return nil
}

// ballast keeps allocated memory reachable so it is never freed.
var ballast [][]byte

func alloc(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: alloc MiB")
	}
	mib, err := strconv.Atoi(args[0])
	if err != nil || mib < 0 {
		return fmt.Errorf("%q is not a size in MiB", args[0])
	}
	onTerm(exitAfter(0))
	// A MiB at a time, each page written, so the memory is really in use
	// and a cgroup limit is hit part-way rather than on one huge request.
	for i := range mib {
		b := make([]byte, 1<<20)
		for j := 0; j < len(b); j += 4096 {
			b[j] = byte(i)
		}
		ballast = append(ballast, b)
	}
	fmt.Printf("allocated %d MiB\n", mib)
	forever()
	return nil
}

// forever blocks for good. A bare select{} with no other goroutine is a
// deadlock the runtime kills the process for.
func forever() {
	for {
		time.Sleep(time.Hour)
	}
}

func cat(args []string) error {
	var r io.Reader = os.Stdin
	if len(args) > 1 {
		return errors.New("usage: cat [FILE]")
	}
	if len(args) == 1 {
		f, err := os.Open(args[0])
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	_, err := io.Copy(os.Stdout, r)
	return err
}

func printEnv(w io.Writer) {
	env := os.Environ()
	slices.Sort(env)
	for _, e := range env {
		fmt.Fprintln(w, e)
	}
}

func ls(args []string) error {
	dir := "."
	if len(args) > 1 {
		return errors.New("usage: ls [DIR]")
	}
	if len(args) == 1 {
		dir = args[0]
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			fmt.Println(e.Name() + "/")
		} else {
			fmt.Println(e.Name())
		}
	}
	return nil
}

func get(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: get URL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
	if err != nil {
		return err
	}
	resp, err := httpClient().Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(os.Stdout, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s", args[0], resp.Status)
	}
	return nil
}

// saCAFile is where a pod's ServiceAccount volume puts the cluster CA.
const saCAFile = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"

// httpClient trusts the system roots and, in a pod with a ServiceAccount
// volume, the cluster CA: get https://kubernetes.default.svc works as it
// does for in-cluster clients.
func httpClient() *http.Client {
	pem, err := os.ReadFile(saCAFile)
	if err != nil {
		return http.DefaultClient
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	pool.AppendCertsFromPEM(pem)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

func tcp(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: tcp ADDR")
	}
	c, err := net.DialTimeout("tcp", args[0], 5*time.Second)
	if err != nil {
		return err
	}
	c.Close()
	fmt.Println("connected")
	return nil
}

func logLines(args []string) error {
	fs := flag.NewFlagSet("log", flag.ContinueOnError)
	interval := fs.Duration("interval", 0, "pause between lines")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return errors.New("usage: log N [--interval D]")
	}
	n, err := strconv.Atoi(pos[0])
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a count", pos[0])
	}
	for i := range n {
		if i > 0 && *interval > 0 {
			time.Sleep(*interval)
		}
		if i%2 == 0 {
			fmt.Fprintf(os.Stdout, "line %d\n", i)
		} else {
			fmt.Fprintf(os.Stderr, "line %d\n", i)
		}
	}
	return nil
}

func crashAfter(args []string) error {
	if len(args) != 1 {
		return errors.New("usage: crash-after D")
	}
	d, err := time.ParseDuration(args[0])
	if err != nil {
		return err
	}
	time.Sleep(d)
	fmt.Println("crashing")
	os.Exit(1)
	return nil
}

// Command storebench measures the replicated store of issue 2 against etcd:
// write throughput and latency of a 3-server cluster, leader failover time,
// and the memory of a server holding many keys. Every server is a real
// process on loopback (127.0.0.1, .2, .3) with production timings; every
// process it starts is killed and its temp dir removed when it ends, also on
// failure or SIGINT. It prints Markdown tables to stdout, progress to stderr.
//
//	go run ./cmd/storebench -flotilla ../bin/flotilla
package main

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

type options struct {
	flotillaBin string
	etcdBin     string
	tmpDir      string
	keep        bool
	phases      map[string]bool
	systems     map[string]bool

	// write
	conc      []int
	warmup    time.Duration
	duration  time.Duration
	valueSize int
	op        string
	etcdConns int
	opTimeout time.Duration

	// failover
	kills int

	// memory
	memKeys      int
	memValueSize int
	memBatch     int
	memConc      int
	memSettle    time.Duration

	api apiOptions
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "storebench:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	h, err := newHarness(o.tmpDir, o.keep, log)
	if err != nil {
		fmt.Fprintln(stderr, "storebench:", err)
		return 1
	}
	defer h.cleanup()

	if err := bench(ctx, h, o, stdout, log); err != nil {
		fmt.Fprintln(stderr, "storebench:", err)
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet("storebench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := &options{}
	var phases, systems, conc string
	fs.StringVar(&o.flotillaBin, "flotilla", "../bin/flotilla", "flotilla binary (make build)")
	fs.StringVar(&o.etcdBin, "etcd", "", "etcd binary (default: etcd on PATH; Debian's etcd-server is installed when missing)")
	fs.StringVar(&o.tmpDir, "tmpdir", os.TempDir(), "where the data dirs of both systems go (same disk for both)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temp dir (data dirs and server logs) for debugging")
	fs.StringVar(&phases, "phases", "write,failover,memory", "phases to run: write, failover, memory, api")
	fs.StringVar(&systems, "systems", "flotilla,etcd", "systems for the write phase: flotilla, etcd")
	fs.StringVar(&conc, "concurrency", "1,16,256", "concurrent writers, one run per value")
	fs.DurationVar(&o.warmup, "warmup", 3*time.Second, "warm-up before each measured window")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "measured window of each write run")
	fs.IntVar(&o.valueSize, "value-size", 1024, "value size of the write phase, bytes")
	fs.StringVar(&o.op, "op", "put", "write: put (no compare) or create (put guarded by key-absent, as the API creates)")
	fs.IntVar(&o.etcdConns, "etcd-conns", 8, "gRPC connections the etcd client spreads its writers over (capped by concurrency)")
	fs.DurationVar(&o.opTimeout, "op-timeout", 10*time.Second, "timeout of one write")
	fs.IntVar(&o.kills, "kills", 20, "failover: leader kills")
	fs.IntVar(&o.memKeys, "mem-keys", 150_000, "memory: keys written")
	fs.IntVar(&o.memValueSize, "mem-value-size", 2048, "memory: value size, bytes")
	fs.IntVar(&o.memBatch, "mem-batch", 50, "memory: puts per transaction")
	fs.IntVar(&o.memConc, "mem-concurrency", 8, "memory: concurrent writers")
	fs.DurationVar(&o.memSettle, "mem-settle", 15*time.Second, "memory: wait after the last write before reading RSS")
	registerAPIFlags(fs, &o.api)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	var err error
	if o.phases, err = set(phases, "write", "failover", "memory", "api"); err != nil {
		return nil, fmt.Errorf("-phases: %w", err)
	}
	if o.systems, err = set(systems, "flotilla", "etcd"); err != nil {
		return nil, fmt.Errorf("-systems: %w", err)
	}
	for _, f := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-concurrency %q: want positive integers separated by commas", conc)
		}
		o.conc = append(o.conc, n)
	}
	if o.op != "put" && o.op != "create" {
		return nil, fmt.Errorf("-op %q: want put or create", o.op)
	}
	if o.memBatch < 1 || o.memConc < 1 || o.etcdConns < 1 || o.kills < 0 {
		return nil, errors.New("-mem-batch, -mem-concurrency and -etcd-conns must be positive")
	}
	if o.flotillaBin, err = filepath.Abs(o.flotillaBin); err != nil {
		return nil, err
	}
	return o, nil
}

func set(list string, allowed ...string) (map[string]bool, error) {
	m := map[string]bool{}
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || a == f
		}
		if !ok {
			return nil, fmt.Errorf("unknown %q (want some of %s)", f, strings.Join(allowed, ", "))
		}
		m[f] = true
	}
	return m, nil
}

func bench(ctx context.Context, h *harness, o *options, out io.Writer, log *slog.Logger) error {
	needFlotilla := o.phases["failover"] || o.phases["memory"] || o.phases["api"] || (o.phases["write"] && o.systems["flotilla"])
	if needFlotilla {
		if _, err := os.Stat(o.flotillaBin); err != nil {
			return fmt.Errorf("flotilla binary: %w (run make build, or pass -flotilla)", err)
		}
	}
	etcdBin := ""
	if o.phases["write"] && o.systems["etcd"] {
		var err error
		etcdBin = o.etcdBin
		if etcdBin == "" {
			etcdBin, err = ensureEtcd(log)
		}
		if err != nil {
			log.Warn("skipping the etcd side", "reason", err)
			fmt.Fprintf(out, "> etcd side skipped: %v\n\n", err)
			etcdBin = ""
		}
	}

	fmt.Fprintf(out, "## storebench %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(out, "- command: `storebench %s`\n", strings.Join(os.Args[1:], " "))
	fmt.Fprintf(out, "- machine: %s\n", machine())
	fmt.Fprintf(out, "- flotilla: %s\n", gitRev(filepath.Dir(filepath.Dir(o.flotillaBin))))
	if etcdBin != "" {
		fmt.Fprintf(out, "- etcd: %s (%s), client go.etcd.io/etcd/client/v3\n", etcdVersion(etcdBin), etcdBin)
	}
	fmt.Fprintf(out, "- data dirs under %s; 1-minute load average at start %.2f (the load generator and all servers share this machine's cores; anything else running skews the numbers)\n\n", h.dir, loadAvg())

	if o.phases["write"] {
		if err := writePhase(ctx, h, o, etcdBin, out, log); err != nil {
			return err
		}
	}
	if o.phases["failover"] {
		if err := failoverPhase(ctx, h, o, out, log); err != nil {
			return err
		}
	}
	if o.phases["memory"] {
		if err := memoryPhase(ctx, h, o, out, log); err != nil {
			return err
		}
	}
	if o.phases["api"] {
		if err := apiPhase(ctx, h, o, out, log); err != nil {
			return err
		}
	}
	return nil
}

func machine() string {
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		if _, err := fmt.Sscanf(string(b), "MemTotal: %d kB", &kb); err == nil {
			mem = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
		}
	}
	osName := "linux"
	if b, err := os.ReadFile("/etc/os-release"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "PRETTY_NAME="); ok {
				osName = strings.Trim(v, `"`)
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%d cores, %s, %s (kernel %s), %s", runtime.NumCPU(), mem, osName,
		strings.TrimSpace(string(kernel)), runtime.Version())
}

func gitRev(dir string) string {
	out, err := exec.Command("git", "-C", dir, "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown revision"
	}
	return "git " + strings.TrimSpace(string(out))
}

func randomValue(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	// Printable, so a value is the same bytes in both systems' encodings.
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return b
}

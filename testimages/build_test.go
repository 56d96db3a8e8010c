package testimages

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"flotilla/agent/containerdproc"
)

// built is one Build shared by the tests of this package: compiling is
// the slow part.
var built struct {
	once sync.Once
	dir  string
	path string
	err  error
}

func toolboxTar(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		built.dir, built.err = os.MkdirTemp("", "testimages")
		if built.err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		built.path, built.err = Build(ctx, built.dir)
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	return built.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if built.dir != "" {
		os.RemoveAll(built.dir)
	}
	os.Exit(code)
}

// readTar returns a tar's regular files by name, and its entries' headers.
func readTar(t *testing.T, r io.Reader) (map[string][]byte, map[string]*tar.Header) {
	t.Helper()
	files := map[string][]byte{}
	headers := map[string]*tar.Header{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files, headers
		}
		if err != nil {
			t.Fatal(err)
		}
		headers[h.Name] = h
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[h.Name] = b
		}
	}
}

func unmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
}

// blobOf returns the blob a descriptor points at, checking its digest and size.
func blobOf(t *testing.T, files map[string][]byte, d ocispec.Descriptor) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+d.Digest.Encoded()]
	if !ok {
		t.Fatalf("no blob for %s", d.Digest)
	}
	if digest.FromBytes(b) != d.Digest || int64(len(b)) != d.Size {
		t.Fatalf("blob %s: digest or size (%d, want %d) do not match", d.Digest, len(b), d.Size)
	}
	return b
}

func TestBuildArchive(t *testing.T) {
	data, err := os.ReadFile(toolboxTar(t))
	if err != nil {
		t.Fatal(err)
	}
	files, _ := readTar(t, bytes.NewReader(data))

	var layout ocispec.ImageLayout
	unmarshal(t, files["oci-layout"], &layout)
	if layout.Version != ocispec.ImageLayoutVersion {
		t.Fatalf("oci-layout %+v", layout)
	}
	var index ocispec.Index
	unmarshal(t, files["index.json"], &index)
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests", len(index.Manifests))
	}
	md := index.Manifests[0]
	if md.Annotations["io.containerd.image.name"] != ToolboxRef || md.Annotations[ocispec.AnnotationRefName] != "v1" {
		t.Fatalf("index annotations %v", md.Annotations)
	}
	if md.Platform == nil || md.Platform.OS != "linux" || md.Platform.Architecture != runtime.GOARCH {
		t.Fatalf("index platform %+v", md.Platform)
	}
	var manifest ocispec.Manifest
	unmarshal(t, blobOf(t, files, md), &manifest)
	if manifest.MediaType != ocispec.MediaTypeImageManifest || len(manifest.Layers) != 1 {
		t.Fatalf("manifest %+v", manifest)
	}
	var config ocispec.Image
	unmarshal(t, blobOf(t, files, manifest.Config), &config)
	c := config.Config
	if fmt.Sprintln(c.Entrypoint, c.Cmd, c.Env, c.WorkingDir) != "[/toolbox] [serve] [PATH=/] /\n" {
		t.Fatalf("image config %+v", c)
	}
	if _, ok := c.ExposedPorts["8080/tcp"]; !ok || config.OS != "linux" || config.Architecture != runtime.GOARCH {
		t.Fatalf("image config %+v", config)
	}

	layer := blobOf(t, files, manifest.Layers[0])
	zr, err := gzip.NewReader(bytes.NewReader(layer))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if len(config.RootFS.DiffIDs) != 1 || config.RootFS.DiffIDs[0] != digest.FromBytes(raw) {
		t.Fatalf("diff IDs %v do not match the layer", config.RootFS.DiffIDs)
	}
	lfiles, lheaders := readTar(t, bytes.NewReader(raw))
	modes := map[string]int64{
		"toolbox": 0o755, "tmp/": 0o1777, "etc/": 0o755, "proc/": 0o555, "sys/": 0o555,
		"dev/": 0o755, "data/": 0o755, "etc/passwd": 0o644, "etc/group": 0o644,
	}
	for name, mode := range modes {
		h, ok := lheaders[name]
		if !ok {
			t.Errorf("layer lacks %s", name)
			continue
		}
		if h.Mode != mode || h.Uid != 0 || h.Gid != 0 {
			t.Errorf("layer %s: mode %o uid %d gid %d, want %o root", name, h.Mode, h.Uid, h.Gid, mode)
		}
	}
	for _, who := range []string{"root:x:0:0:", "nobody:x:65534:65534:"} {
		if !bytes.Contains(lfiles["etc/passwd"], []byte(who)) {
			t.Errorf("/etc/passwd lacks %q", who)
		}
	}
	if !bytes.HasPrefix(lfiles["toolbox"], []byte("\x7fELF")) {
		t.Error("/toolbox is not an ELF binary")
	}

	var docker []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	unmarshal(t, files["manifest.json"], &docker)
	if len(docker) != 1 || fmt.Sprint(docker[0].RepoTags) != "["+ToolboxRef+"]" ||
		files[docker[0].Config] == nil || len(docker[0].Layers) != 1 || files[docker[0].Layers[0]] == nil {
		t.Fatalf("manifest.json %+v", docker)
	}

	// Rebuilding gives the same image: the compile is cached and the
	// archive has no varying timestamps.
	start := time.Now()
	again, err := Build(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("second Build took %v", time.Since(start))
	data2, err := os.ReadFile(again)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, data2) {
		t.Error("a second Build gave a different archive")
	}
}

func TestBuildBadDir(t *testing.T) {
	_, err := Build(context.Background(), filepath.Join(t.TempDir(), "missing"))
	if !errors.Is(err, ErrBuild) {
		t.Fatalf("error %v, want ErrBuild", err)
	}
}

// toolboxBinary extracts /toolbox from the image, to run it on the host.
func toolboxBinary(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(toolboxTar(t))
	if err != nil {
		t.Fatal(err)
	}
	files, _ := readTar(t, bytes.NewReader(data))
	var index ocispec.Index
	unmarshal(t, files["index.json"], &index)
	var manifest ocispec.Manifest
	unmarshal(t, blobOf(t, files, index.Manifests[0]), &manifest)
	zr, err := gzip.NewReader(bytes.NewReader(blobOf(t, files, manifest.Layers[0])))
	if err != nil {
		t.Fatal(err)
	}
	lfiles, _ := readTar(t, zr)
	path := filepath.Join(t.TempDir(), "toolbox")
	if err := os.WriteFile(path, lfiles["toolbox"], 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestToolboxCommands(t *testing.T) {
	bin := toolboxBinary(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "f.txt")
	tests := []struct {
		args   []string
		stdin  string
		code   int
		stdout string // exact, unless contains is set
		stderr string // substring
	}{
		{args: []string{"exit", "3"}, code: 3, stdout: "exiting 3\n"},
		{args: []string{"exit", "0"}, code: 0, stdout: "exiting 0\n"},
		{args: []string{"echo", "a", "b"}, stdout: "a b\n"},
		{args: []string{"write", file, "content"}, stdout: ""},
		{args: []string{"cat", file}, stdout: "content"},
		{args: []string{"cat"}, stdin: "from stdin", stdout: "from stdin"},
		{args: []string{"cat", filepath.Join(dir, "none")}, code: 1, stderr: "no such file"},
		{args: []string{"ls", dir}, stdout: "f.txt\n"},
		{args: []string{"log", "4"}, stdout: "line 0\nline 2\n", stderr: "line 1\nline 3\n"},
		{args: []string{"log", "2", "--interval", "1ms"}, stdout: "line 0\n", stderr: "line 1\n"},
		{args: []string{"sleep", "1ms"}, stdout: "sleeping 1ms\n"},
		{args: []string{"sleep", "soon"}, code: 1, stderr: "invalid duration"},
		{args: []string{"crash-after", "1ms"}, code: 1, stdout: "crashing\n"},
		{args: []string{"tcp", "127.0.0.1:1"}, code: 1, stderr: "refused"},
		{args: []string{"get", "http://127.0.0.1:1/"}, code: 1, stderr: "refused"},
		{args: []string{"frobnicate"}, code: 127, stderr: `unknown command "frobnicate"`},
		{args: nil, code: 127, stderr: "usage"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			cmd := exec.Command(bin, tt.args...)
			cmd.Stdin = strings.NewReader(tt.stdin)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var exitErr *exec.ExitError
			if err != nil && !errors.As(err, &exitErr) {
				t.Fatal(err)
			}
			if code := cmd.ProcessState.ExitCode(); code != tt.code {
				t.Fatalf("exit code %d, want %d (stderr %q)", code, tt.code, stderr.String())
			}
			if stdout.String() != tt.stdout {
				t.Errorf("stdout %q, want %q", stdout.String(), tt.stdout)
			}
			if !strings.Contains(stderr.String(), tt.stderr) {
				t.Errorf("stderr %q, want it to contain %q", stderr.String(), tt.stderr)
			}
		})
	}
	t.Run("env", func(t *testing.T) {
		cmd := exec.Command(bin, "env")
		cmd.Env = []string{"B=2", "A=1"}
		out, err := cmd.Output()
		if err != nil || string(out) != "A=1\nB=2\n" {
			t.Fatalf("env: %q, %v", out, err)
		}
	})
}

// startToolbox runs a command that keeps running and fails the test if it
// is still there at the end.
func startToolbox(t *testing.T, bin string, args ...string) (*exec.Cmd, *bufio.Reader, chan error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	// A pipe of our own rather than StdoutPipe: Wait runs at once below
	// and would close StdoutPipe's read end under the reader.
	stdout, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stdout.Close() })
	cmd.Stdout = w
	err = cmd.Start()
	w.Close()
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	return cmd, bufio.NewReader(stdout), exited
}

func waitExit(t *testing.T, exited chan error, timeout time.Duration) int {
	t.Helper()
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		var exitErr *exec.ExitError
		if err != nil && !errors.As(err, &exitErr) {
			t.Fatal(err)
		}
		if exitErr != nil {
			return exitErr.ExitCode()
		}
		return 0
	case <-time.After(timeout):
		t.Fatalf("did not exit within %v", timeout)
		return -1
	}
}

func TestToolboxServe(t *testing.T) {
	bin := toolboxBinary(t)
	// Port 0: the kernel picks one and the first line tells which.
	_, stdout, exited := startToolbox(t, bin, "serve", "--port", "0", "--ready=false")
	first, err := stdout.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	_, port, ok := strings.Cut(strings.TrimSpace(first), "]:")
	if !ok {
		t.Fatalf("first line %q does not say the port", first)
	}
	// The access log keeps coming; drain it so the server never blocks.
	var logMu sync.Mutex
	var accessLog strings.Builder
	go func() {
		for {
			line, err := stdout.ReadString('\n')
			logMu.Lock()
			accessLog.WriteString(line)
			logMu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	base := "http://127.0.0.1:" + port
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return resp.StatusCode, string(b)
	}
	host, _ := os.Hostname()
	steps := []struct {
		path string
		code int
		body string // substring
	}{
		{"/", 200, "hostname=" + host + "\nremote=127.0.0.1:"},
		{"/healthz", 200, "ok"},
		{"/healthz/fail", 200, ""},
		{"/healthz", 500, ""},
		{"/healthz/ok", 200, ""},
		{"/healthz", 200, "ok"},
		{"/readyz", 503, ""},
		{"/ready/on", 200, ""},
		{"/readyz", 200, ""},
		{"/ready/off", 200, ""},
		{"/readyz", 503, ""},
		{"/env", 200, "PATH="},
		{"/file?path=/etc/hostname", 200, ""},
		{"/file?path=/no/such/file", 404, "no such file"},
		{"/log?n=2", 200, "logged 2"},
		{"/exit?code=x", 400, ""},
		{"/nothing", 404, ""},
	}
	for _, s := range steps {
		code, body := get(s.path)
		if code != s.code || !strings.Contains(body, s.body) {
			t.Fatalf("GET %s = %d %q, want %d with %q", s.path, code, body, s.code, s.body)
		}
	}
	waitFor(t, 5*time.Second, "the access log", func() bool {
		logMu.Lock()
		defer logMu.Unlock()
		return strings.Contains(accessLog.String(), "GET /healthz from 127.0.0.1:") &&
			strings.Contains(accessLog.String(), "stdout 1\n")
	})
	code, body := get("/exit?code=7")
	if code != 200 || body != "exiting 7\n" {
		t.Fatalf("/exit answered %d %q", code, body)
	}
	if got := waitExit(t, exited, 5*time.Second); got != 7 {
		t.Fatalf("exit code %d, want 7", got)
	}
}

func TestToolboxSignals(t *testing.T) {
	bin := toolboxBinary(t)
	tests := []struct {
		name     string
		args     []string
		wantCode int  // after SIGTERM
		ignores  bool // SIGTERM does nothing; SIGKILL ends it
		minDelay time.Duration
	}{
		{name: "sleep exits on term", args: []string{"sleep", "infinity"}},
		{name: "sleep term delay", args: []string{"sleep", "1h", "--term-delay", "300ms"}, minDelay: 300 * time.Millisecond},
		{name: "sleep ignore term", args: []string{"sleep", "infinity", "--ignore-term"}, ignores: true},
		{name: "serve exits on term", args: []string{"serve", "--port", "0"}},
		{name: "alloc exits on term", args: []string{"alloc", "4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd, stdout, exited := startToolbox(t, bin, tt.args...)
			// Each prints a line once its handler is in place.
			if _, err := stdout.ReadString('\n'); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			cmd.Process.Signal(syscall.SIGTERM)
			if tt.ignores {
				select {
				case err := <-exited:
					exited <- err
					t.Fatalf("exited on SIGTERM while told to ignore it: %v", err)
				case <-time.After(300 * time.Millisecond):
				}
				cmd.Process.Kill()
				waitExit(t, exited, 5*time.Second)
				return
			}
			if got := waitExit(t, exited, 5*time.Second); got != tt.wantCode {
				t.Fatalf("exit code %d, want %d", got, tt.wantCode)
			}
			if d := time.Since(start); d < tt.minDelay {
				t.Fatalf("exited after %v, before its term delay %v", d, tt.minDelay)
			}
		})
	}
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestToolboxImageInContainerd imports the archive into a real containerd
// with ctr, as an operator would, and runs the image.
func TestToolboxImageInContainerd(t *testing.T) {
	archive := toolboxTar(t)
	c := ctrOn{containerdproc.StartForTest(t)}
	c.Ctr(t, "-n", "testimages-test", "images", "import", archive)
	if out := c.Ctr(t, "-n", "testimages-test", "images", "ls", "-q"); !strings.Contains(out, ToolboxRef) {
		t.Fatalf("images ls after import:\n%s", out)
	}

	// overlayfs is containerd's default; some hosts (overlay on overlay)
	// can only use native.
	var snapshotter string
	var lastOut string
	for _, sn := range []string{"overlayfs", "native"} {
		out, err := c.Run("-n", "testimages-test", "run", "--rm", "--snapshotter", sn, ToolboxRef, "exit3-"+sn, "/toolbox", "exit", "3")
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) && exitErr.ExitCode() == 3 && strings.Contains(out, "exiting 3") {
			snapshotter = sn
			break
		}
		t.Logf("ctr run with %s: %v\n%s", sn, err, out)
		lastOut = out
	}
	if snapshotter == "" {
		t.Fatalf("the image did not run with any snapshotter:\n%s", lastOut)
	}
	t.Logf("runs with the %s snapshotter", snapshotter)
	out := c.Ctr(t, "-n", "testimages-test", "run", "--rm", "--snapshotter", snapshotter, ToolboxRef, "ls", "/toolbox", "ls", "/")
	for _, want := range []string{"toolbox\n", "tmp/\n", "etc/\n", "data/\n", "proc/\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("ls / in the container lacks %q:\n%s", want, out)
		}
	}
	// The image's environment reaches the process.
	out = c.Ctr(t, "-n", "testimages-test", "run", "--rm", "--snapshotter", snapshotter, ToolboxRef, "env", "/toolbox", "env")
	if !strings.Contains(out, "PATH=/\n") {
		t.Errorf("env in the container:\n%s", out)
	}
}

// ctrOn runs ctr, containerd's own CLI, against a test containerd.
type ctrOn struct{ p *containerdproc.Process }

func (c ctrOn) Run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.p.Address()}, args...)...).CombinedOutput()
	return string(out), err
}

func (c ctrOn) Ctr(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.Run(args...)
	if err != nil {
		t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

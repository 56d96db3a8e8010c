package pods

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"flotilla/agent/runtime"
)

func TestExpandVars(t *testing.T) {
	vars := map[string]string{"A": "a", "B": "b", "EMPTY": ""}
	lookup := func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"$(A)", "a"},
		{"x$(A)y$(B)z", "xaybz"},
		{"$(EMPTY)|", "|"},
		{"$(MISSING)", "$(MISSING)"},
		{"$$(A)", "$(A)"},
		{"$$$(A)", "$a"},
		{"$$", "$"},
		{"$A", "$A"},
		{"$", "$"},
		{"a$", "a$"},
		{"$(", "$("},
		{"$(A", "$(A"},
		{"$()", "$()"},
		{"$(A)$(", "a$("},
		{"100$", "100$"},
	} {
		if got := expandVars(tc.in, lookup); got != tc.want {
			t.Errorf("expandVars(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	b := newBackoff(10*time.Second, 40*time.Second)
	now := time.Unix(1000, 0)
	if left, _ := b.wait("k", now, now); left != 0 {
		t.Fatalf("first restart waits %v", left)
	}
	b.next("k", now) // first restart: immediate, then 10s
	exit := now.Add(time.Second)
	if left, d := b.wait("k", exit, exit.Add(4*time.Second)); left != 6*time.Second || d != 10*time.Second {
		t.Fatalf("wait = %v (delay %v), want 6s of 10s", left, d)
	}
	for i, want := range []time.Duration{20, 40, 40} {
		at := now.Add(time.Duration(10*(i+1)) * time.Second)
		b.next("k", at)
		if _, d := b.wait("k", at, at); d != want*time.Second {
			t.Fatalf("after %d restarts delay %v, want %vs", i+2, d, want)
		}
	}
	// Unused for twice the max: forgotten.
	later := now.Add(10 * time.Minute)
	if left, _ := b.wait("k", later, later); left != 0 {
		t.Fatalf("stale entry still waits %v", left)
	}
	b.next("k", later)
	if _, d := b.wait("k", later, later); d != 10*time.Second {
		t.Fatalf("after expiry delay %v, want the initial 10s", d)
	}
	b.forgetPrefix("k")
	if left, _ := b.wait("k", later, later); left != 0 {
		t.Fatalf("forgotten key waits %v", left)
	}
}

func terminated(code int32) corev1.ContainerStatus {
	return corev1.ContainerStatus{State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code}}}
}

func TestPodPhase(t *testing.T) {
	running := corev1.ContainerStatus{State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
	waiting := corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}}
	backoff := corev1.ContainerStatus{
		State:                corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
		LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1}},
	}
	for _, tc := range []struct {
		name        string
		policy      corev1.RestartPolicy
		init, app   []corev1.ContainerStatus
		initialized bool
		want        corev1.PodPhase
	}{
		{"creating", corev1.RestartPolicyAlways, nil, []corev1.ContainerStatus{waiting}, true, corev1.PodPending},
		{"running", corev1.RestartPolicyAlways, nil, []corev1.ContainerStatus{running}, true, corev1.PodRunning},
		{"crashloop", corev1.RestartPolicyAlways, nil, []corev1.ContainerStatus{backoff}, true, corev1.PodRunning},
		{"always exited 0", corev1.RestartPolicyAlways, nil, []corev1.ContainerStatus{terminated(0)}, true, corev1.PodRunning},
		{"never ok", corev1.RestartPolicyNever, nil, []corev1.ContainerStatus{terminated(0), terminated(0)}, true, corev1.PodSucceeded},
		{"never failed", corev1.RestartPolicyNever, nil, []corev1.ContainerStatus{terminated(0), terminated(3)}, true, corev1.PodFailed},
		{"never one running", corev1.RestartPolicyNever, nil, []corev1.ContainerStatus{terminated(3), running}, true, corev1.PodRunning},
		{"onfailure failed", corev1.RestartPolicyOnFailure, nil, []corev1.ContainerStatus{terminated(1)}, true, corev1.PodRunning},
		{"onfailure ok", corev1.RestartPolicyOnFailure, nil, []corev1.ContainerStatus{terminated(0)}, true, corev1.PodSucceeded},
		{"init running", corev1.RestartPolicyAlways, []corev1.ContainerStatus{running}, []corev1.ContainerStatus{waiting}, false, corev1.PodPending},
		{"init failed never", corev1.RestartPolicyNever, []corev1.ContainerStatus{terminated(1)}, []corev1.ContainerStatus{waiting}, false, corev1.PodFailed},
		{"init failed always", corev1.RestartPolicyAlways, []corev1.ContainerStatus{backoff}, []corev1.ContainerStatus{waiting}, false, corev1.PodPending},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{Spec: corev1.PodSpec{RestartPolicy: tc.policy}}
			s := &corev1.PodStatus{InitContainerStatuses: tc.init, ContainerStatuses: tc.app}
			if got := podPhase(pod, s, tc.initialized); got != tc.want {
				t.Errorf("phase %s, want %s", got, tc.want)
			}
		})
	}
}

func TestWritePayload(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	read := func(name string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		return string(b)
	}
	if err := writePayload(dir, map[string]file{"a": {data: []byte("1"), mode: 0o644}, "sub/b": {data: []byte("2"), mode: 0o600}}); err != nil {
		t.Fatal(err)
	}
	if read("a") != "1" || read("sub/b") != "2" {
		t.Fatalf("content wrong")
	}
	if fi, err := os.Stat(filepath.Join(dir, "sub/b")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v %v", fi.Mode(), err)
	}
	first, _ := os.Readlink(filepath.Join(dir, dataLink))
	// Unchanged: nothing is rewritten.
	if err := writePayload(dir, map[string]file{"a": {data: []byte("1"), mode: 0o644}, "sub/b": {data: []byte("2"), mode: 0o600}}); err != nil {
		t.Fatal(err)
	}
	if again, _ := os.Readlink(filepath.Join(dir, dataLink)); again != first {
		t.Fatalf("unchanged payload rewritten: %s → %s", first, again)
	}
	// Changed: a removed key goes, a new one appears, old data is gone.
	if err := writePayload(dir, map[string]file{"a": {data: []byte("one"), mode: 0o644}, "c": {data: nil, mode: 0o644}}); err != nil {
		t.Fatal(err)
	}
	if read("a") != "one" || read("c") != "" {
		t.Fatalf("update wrong")
	}
	if _, err := os.Lstat(filepath.Join(dir, "sub")); !os.IsNotExist(err) {
		t.Fatalf("removed key still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, first)); !os.IsNotExist(err) {
		t.Fatalf("old payload directory kept: %v", err)
	}
	for _, bad := range []string{"../x", "/abs", "a/../../x", "..data"} {
		if err := writePayload(dir, map[string]file{bad: {}}); err == nil {
			t.Errorf("path %q accepted", bad)
		}
	}
}

func TestSubPath(t *testing.T) {
	root := t.TempDir()
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "escape")); err != nil {
		t.Fatal(err)
	}
	if got, err := subPath(root, "made/here", true); err != nil || got != filepath.Join(root, "made/here") {
		t.Errorf("subPath made = %q, %v", got, err)
	}
	for _, bad := range []string{"escape", "escape/x", "../x", "/etc", "a/../../x"} {
		if _, err := subPath(root, bad, true); err == nil {
			t.Errorf("subPath %q accepted", bad)
		}
	}
	if _, err := subPath(root, "absent", false); err == nil {
		t.Errorf("missing subPath accepted where it may not be made")
	}
}

func TestCheckHostPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "s")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ty := func(t corev1.HostPathType) *corev1.HostPathType { return &t }
	for _, tc := range []struct {
		path string
		t    *corev1.HostPathType
		ok   bool
	}{
		{dir, nil, true},
		{filepath.Join(dir, "nope"), nil, true},
		{dir, ty(corev1.HostPathDirectory), true},
		{file, ty(corev1.HostPathDirectory), false},
		{filepath.Join(dir, "new/dir"), ty(corev1.HostPathDirectoryOrCreate), true},
		{file, ty(corev1.HostPathFile), true},
		{dir, ty(corev1.HostPathFile), false},
		{filepath.Join(dir, "newfile"), ty(corev1.HostPathFileOrCreate), true},
		{filepath.Join(dir, "no/parent/file"), ty(corev1.HostPathFileOrCreate), false},
		{sock, ty(corev1.HostPathSocket), true},
		{file, ty(corev1.HostPathSocket), false},
		{"/dev/null", ty(corev1.HostPathCharDev), true},
		{file, ty(corev1.HostPathBlockDev), false},
		{dir, ty("Bogus"), false},
	} {
		err := checkHostPath(&corev1.HostPathVolumeSource{Path: tc.path, Type: tc.t})
		if (err == nil) != tc.ok {
			typ := "<unset>"
			if tc.t != nil {
				typ = string(*tc.t)
			}
			t.Errorf("%s as %s: err %v, want ok=%v", tc.path, typ, err, tc.ok)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "new/dir")); err != nil || !fi.IsDir() {
		t.Errorf("DirectoryOrCreate made nothing")
	}
}

func TestUnsupported(t *testing.T) {
	ok := &corev1.Pod{Spec: corev1.PodSpec{
		Volumes:    []corev1.Volume{{Name: "a", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
		Containers: []corev1.Container{{Name: "c"}},
	}}
	if msg := unsupported(ok); msg != "" {
		t.Errorf("supported pod refused: %s", msg)
	}
	always := corev1.ContainerRestartPolicyAlways
	for name, mutate := range map[string]func(*corev1.Pod){
		"nfs volume": func(p *corev1.Pod) {
			p.Spec.Volumes[0].VolumeSource = corev1.VolumeSource{NFS: &corev1.NFSVolumeSource{Server: "x", Path: "/"}}
		},
		"grpc probe": func(p *corev1.Pod) {
			p.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 1}}}
		},
		"sidecar": func(p *corev1.Pod) {
			p.Spec.InitContainers = []corev1.Container{{Name: "s", RestartPolicy: &always}}
		},
	} {
		p := ok.DeepCopy()
		mutate(p)
		if msg := unsupported(p); msg == "" {
			t.Errorf("%s accepted", name)
		} else if !strings.Contains(msg, "not supported") {
			t.Errorf("%s: message %q", name, msg)
		}
	}
}

func TestResolvConfAndHosts(t *testing.T) {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"},
		Spec: corev1.PodSpec{
			DNSPolicy: corev1.DNSNone,
			DNSConfig: &corev1.PodDNSConfig{
				Nameservers: []string{"10.0.0.10"},
				Searches:    []string{"ns.svc.cluster.local"},
				Options:     []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr("5")}, {Name: "edns0"}},
			},
			Hostname:    "web-0",
			Subdomain:   "web",
			HostAliases: []corev1.HostAlias{{IP: "10.1.1.1", Hostnames: []string{"foo", "bar"}}},
		},
	}
	want := "search ns.svc.cluster.local\nnameserver 10.0.0.10\noptions ndots:5 edns0\n"
	if got := string(resolvConf(pod)); got != want {
		t.Errorf("resolv.conf:\n%s\nwant:\n%s", got, want)
	}
	hosts := string(hostsFile(pod, "10.88.0.7"))
	for _, line := range []string{"127.0.0.1\tlocalhost\n", "10.88.0.7\tweb-0.web.ns.svc.cluster.local\tweb-0\n", "10.1.1.1\tfoo\tbar\n"} {
		if !strings.Contains(hosts, line) {
			t.Errorf("hosts file lacks %q:\n%s", line, hosts)
		}
	}
}

func TestTailCRILog(t *testing.T) {
	path := filepath.Join(t.TempDir(), "0.log")
	var b strings.Builder
	for i := range 100 {
		b.WriteString("2024-01-01T00:00:00.000000000Z stdout F line " + string(rune('0'+i%10)) + "\n")
	}
	b.WriteString("2024-01-01T00:00:00.000000000Z stderr P part-\n")
	b.WriteString("2024-01-01T00:00:00.000000000Z stderr F end\n")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	got := tailCRILog(path, 3, 2048)
	if got != "line 8\nline 9\npart-end" {
		t.Errorf("tail = %q", got)
	}
	if got := tailCRILog(path, 80, 10); len(got) != 10 || !strings.HasSuffix(got, "part-end") {
		t.Errorf("byte-capped tail = %q", got)
	}
}

func TestNewChecksConfig(t *testing.T) {
	// stubRuntime is never called: New only checks that there is one.
	type stubRuntime struct{ runtime.Runtime }
	good := Config{NodeName: "n", Client: fake.NewClientset(), Runtime: stubRuntime{}, DataDir: t.TempDir()}
	if _, err := New(good); err != nil {
		t.Fatalf("good config refused: %v", err)
	}
	for name, mutate := range map[string]func(*Config){
		"no node":    func(c *Config) { c.NodeName = "" },
		"no client":  func(c *Config) { c.Client = nil },
		"no runtime": func(c *Config) { c.Runtime = nil },
		"no dir":     func(c *Config) { c.DataDir = "" },
		"bad backoff": func(c *Config) {
			c.BackoffInitial, c.BackoffMax = time.Minute, time.Second
		},
		"negative": func(c *Config) { c.Workers = -1 },
	} {
		cfg := good
		mutate(&cfg)
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if LogDir("/d", "ns", "p", "u") != "/d/logs/ns_p_u" {
		t.Errorf("LogDir = %s", LogDir("/d", "ns", "p", "u"))
	}
}

func TestMilliCPUToShares(t *testing.T) {
	for milli, want := range map[int64]uint64{0: 2, 1: 2, 100: 102, 1000: 1024, 250: 256} {
		if got := milliCPUToShares(milli); got != want {
			t.Errorf("milliCPUToShares(%d) = %d, want %d", milli, got, want)
		}
	}
}

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// kubectl runs the embedded kubectl (`flotilla kubectl`) against one master,
// through the admin kubeconfig that master wrote into its data dir.
type kubectl struct {
	master     *server
	kubeconfig string
	cacheDir   string // discovery and OpenAPI cache, private to the test
}

// newKubectl waits for s to have written its kubeconfig and returns a kubectl
// that uses it.
func newKubectl(t *testing.T, s *server, cacheDir string) *kubectl {
	t.Helper()
	kc := filepath.Join(s.dataDir, "kubeconfig")
	waitFor(t, 10*time.Second, s.name+"'s kubeconfig", func() (bool, string) {
		return fileExists(kc), kc + " not written yet"
	})
	return &kubectl{master: s, kubeconfig: kc, cacheDir: cacheDir}
}

// command builds `flotilla kubectl --kubeconfig ... args...`; env is added to
// the test's environment.
func (k *kubectl) command(ctx context.Context, env []string, args ...string) *exec.Cmd {
	full := append([]string{"kubectl", "--kubeconfig", k.kubeconfig, "--cache-dir", k.cacheDir}, args...)
	cmd := exec.CommandContext(ctx, flotillaBin, full...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

// run runs one kubectl command to completion and returns its stdout and
// stderr apart: warnings and errors go to stderr.
func (k *kubectl) run(t *testing.T, env []string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := k.command(ctx, env, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// ok runs a command that must succeed and returns its stdout.
func (k *kubectl) ok(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := k.run(t, nil, args...)
	if err != nil {
		t.Fatalf("kubectl %s (on %s): %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), k.master.name, err, out, errOut)
	}
	return out
}

// fails runs a command that must exit non-zero and returns its stderr.
func (k *kubectl) fails(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := k.run(t, nil, args...)
	if err == nil {
		t.Fatalf("kubectl %s (on %s) should fail; stdout:\n%s\nstderr:\n%s", strings.Join(args, " "), k.master.name, out, errOut)
	}
	return errOut
}

// manifest writes a YAML manifest into the test's temp dir.
func manifest(t *testing.T, name, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// mustContain fails unless out holds every one of wants.
func mustContain(t *testing.T, what, out string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(out, w) {
			t.Fatalf("%s should contain %q:\n%s", what, w, out)
		}
	}
}

// tableRows splits kubectl's table output into rows of fields, header first.
func tableRows(out string) [][]string {
	var rows [][]string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line != "" {
			rows = append(rows, strings.Fields(line))
		}
	}
	return rows
}

// column returns the named column of a kubectl table, one value per row.
func column(t *testing.T, out, name string) []string {
	t.Helper()
	rows := tableRows(out)
	if len(rows) == 0 {
		t.Fatalf("no table in output:\n%s", out)
	}
	idx := -1
	for i, h := range rows[0] {
		if h == name {
			idx = i
		}
	}
	if idx < 0 {
		t.Fatalf("no column %s in header %v:\n%s", name, rows[0], out)
	}
	var vals []string
	for _, r := range rows[1:] {
		if idx < len(r) {
			vals = append(vals, r[idx])
		}
	}
	return vals
}

func podManifest(name, ns string, labels string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: %s
  labels: {%s}
spec:
  containers:
  - name: app
    image: nginx:1.25
    ports:
    - containerPort: 80
  - name: sidecar
    image: busybox:1.36
    command: ["sleep", "3600"]
`, name, ns, labels)
}

// TestKubectl runs the embedded kubectl, unmodified and with client-side
// validation left on, against one three-master cluster; writes and reads go
// to the leader and to followers alike, since every master serves the API.
func TestKubectl(t *testing.T) {
	start := time.Now()
	servers := startThree(t, 3)
	leaderServer, followerServers := splitRoles(t, servers)
	cache := t.TempDir()
	leader := newKubectl(t, leaderServer, cache)
	f1, f2 := newKubectl(t, followerServers[0], cache), newKubectl(t, followerServers[1], cache)
	t.Logf("cluster up in %s; leader %s", time.Since(start).Round(time.Millisecond), leaderServer.name)
	// A follower serves reads once gossip has told it the leader's API
	// address (linearizable reads ask the leader for its commit index).
	for _, k := range []*kubectl{leader, f1, f2} {
		waitFor(t, 20*time.Second, k.master.name+" to serve kubectl", func() (bool, string) {
			out, errOut, err := k.run(t, nil, "get", "namespace", "default", "-o", "name")
			return err == nil && strings.TrimSpace(out) == "namespace/default", fmt.Sprintf("%v: %s%s", err, out, errOut)
		})
	}

	t.Run("api-resources", func(t *testing.T) {
		out := f1.ok(t, "api-resources")
		want := map[string][]string{
			"pods":        {"pods", "po", "v1", "true", "Pod"},
			"nodes":       {"nodes", "no", "v1", "false", "Node"},
			"services":    {"services", "svc", "v1", "true", "Service"},
			"namespaces":  {"namespaces", "ns", "v1", "false", "Namespace"},
			"configmaps":  {"configmaps", "cm", "v1", "true", "ConfigMap"},
			"deployments": {"deployments", "deploy", "apps/v1", "true", "Deployment"},
			"replicasets": {"replicasets", "rs", "apps/v1", "true", "ReplicaSet"},
		}
		got := map[string][]string{}
		for _, r := range tableRows(out)[1:] {
			got[r[0]] = r
		}
		for name, w := range want {
			if fmt.Sprint(got[name]) != fmt.Sprint(w) {
				t.Errorf("api-resources row %s = %v, want %v", name, got[name], w)
			}
		}
		// Verbs come from discovery too: only resources that list.
		names := leader.ok(t, "api-resources", "--verbs=list,watch", "--api-group=apps", "-o", "name")
		if strings.Fields(names)[0] != "deployments.apps" || !strings.Contains(names, "replicasets.apps") {
			t.Errorf("api-resources --api-group=apps -o name:\n%s", names)
		}
	})

	t.Run("explain", func(t *testing.T) {
		out := f2.ok(t, "explain", "pods.spec.containers")
		mustContain(t, "explain pods.spec.containers", out,
			"KIND:       Pod", "VERSION:    v1", "FIELD: containers <[]Container>",
			"image\t<string>", "name\t<string> -required-", "ports\t<[]ContainerPort>")
		out = leader.ok(t, "explain", "deployment.spec.replicas")
		mustContain(t, "explain deployment.spec.replicas", out, "GROUP:      apps", "FIELD: replicas <integer>")
	})

	t.Run("create and get", func(t *testing.T) {
		leader.ok(t, "create", "-f", manifest(t, "pod.yaml", podManifest("get-a", "default", "app: web, tier: fe")))
		out := leader.ok(t, "create", "-f", manifest(t, "pod.yaml", podManifest("get-b", "default", "app: db")))
		if strings.TrimSpace(out) != "pod/get-b created" {
			t.Fatalf("create -f: %q", out)
		}
		// Reads through a follower see the leader's writes (reads with no
		// resourceVersion are linearizable).
		wide := f1.ok(t, "get", "pods", "get-a", "get-b", "-o", "wide")
		if h := tableRows(wide)[0]; strings.Join(h, " ") != "NAME READY STATUS RESTARTS AGE IP NODE NOMINATED NODE READINESS GATES" {
			t.Fatalf("get -o wide header: %v\n%s", h, wide)
		}
		if got := column(t, wide, "READY"); fmt.Sprint(got) != "[0/2 0/2]" {
			t.Errorf("READY column %v:\n%s", got, wide)
		}
		if got := column(t, wide, "STATUS"); fmt.Sprint(got) != "[Pending Pending]" {
			t.Errorf("STATUS column %v:\n%s", got, wide)
		}

		var pod corev1.Pod
		if err := json.Unmarshal([]byte(f2.ok(t, "get", "pod", "get-a", "-o", "json")), &pod); err != nil {
			t.Fatal(err)
		}
		// Defaults kube-apiserver would set.
		if pod.UID == "" || pod.ResourceVersion == "" || pod.Spec.RestartPolicy != corev1.RestartPolicyAlways ||
			pod.Spec.DNSPolicy != corev1.DNSClusterFirst || pod.Spec.Containers[0].ImagePullPolicy != corev1.PullIfNotPresent ||
			pod.Spec.TerminationGracePeriodSeconds == nil || *pod.Spec.TerminationGracePeriodSeconds != 30 ||
			pod.Spec.Containers[1].Command[1] != "3600" || pod.Labels["tier"] != "fe" {
			t.Errorf("get -o json: unexpected pod %+v", pod)
		}
		var fromYAML corev1.Pod
		if err := yaml.Unmarshal([]byte(leader.ok(t, "get", "pod", "get-a", "-o", "yaml")), &fromYAML); err != nil {
			t.Fatal(err)
		}
		if fromYAML.UID != pod.UID || fromYAML.Spec.Containers[0].Ports[0].ContainerPort != 80 ||
			fromYAML.Spec.Containers[0].Ports[0].Protocol != corev1.ProtocolTCP {
			t.Errorf("get -o yaml disagrees with -o json: %+v", fromYAML)
		}

		cases := []struct {
			name string
			args []string
			want string
		}{
			{"label equality", []string{"-l", "app=web"}, "get-a"},
			{"label set-based", []string{"-l", "app in (db,cache),!tier"}, "get-b"},
			{"label two terms", []string{"-l", "app=web,tier=fe"}, "get-a"},
			{"field name", []string{"--field-selector", "metadata.name=get-b"}, "get-b"},
			{"field phase and label", []string{"--field-selector", "status.phase=Pending", "-l", "app"}, "get-a get-b"},
			{"field unscheduled", []string{"--field-selector", "spec.nodeName=,metadata.name!=get-a", "-l", "app"}, "get-b"},
		}
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				out := f1.ok(t, append([]string{"get", "pods", "-o", "name"}, tc.args...)...)
				got := strings.Join(strings.Fields(strings.ReplaceAll(out, "pod/", "")), " ")
				if got != tc.want {
					t.Errorf("get pods %v = %q, want %q", tc.args, got, tc.want)
				}
			})
		}
		errOut := f2.fails(t, "get", "pods", "--field-selector", "spec.bogus=x")
		mustContain(t, "unsupported field selector", errOut, "(BadRequest)", `field label not supported: spec.bogus`)
		errOut = f2.fails(t, "get", "pod", "no-such-pod")
		mustContain(t, "get missing pod", errOut, `Error from server (NotFound): pods "no-such-pod" not found`)
	})

	t.Run("get -A", func(t *testing.T) {
		leader.ok(t, "create", "namespace", "team-a")
		f1.ok(t, "create", "-f", manifest(t, "pod.yaml", podManifest("all-ns", "team-a", "app: allns")))
		f2.ok(t, "create", "-f", manifest(t, "pod.yaml", podManifest("all-ns", "default", "app: allns")))
		out := f2.ok(t, "get", "pods", "-A", "-l", "app=allns")
		if got := column(t, out, "NAMESPACE"); fmt.Sprint(got) != "[default team-a]" {
			t.Errorf("get pods -A NAMESPACE column %v:\n%s", got, out)
		}
		out = leader.ok(t, "get", "pods", "--all-namespaces", "--field-selector", "metadata.namespace=team-a", "-o", "name")
		if strings.TrimSpace(out) != "pod/all-ns" {
			t.Errorf("get pods -A --field-selector metadata.namespace=team-a:\n%s", out)
		}
		out = f1.ok(t, "-n", "team-a", "get", "pods", "-o", "name")
		if strings.TrimSpace(out) != "pod/all-ns" {
			t.Errorf("get -n team-a:\n%s", out)
		}
	})

	t.Run("describe", func(t *testing.T) {
		leader.ok(t, "create", "-f", manifest(t, "pod.yaml", podManifest("described", "default", "app: described")))
		f1.ok(t, "annotate", "pod", "described", "owner=team-a")
		out := f2.ok(t, "describe", "pod", "described")
		// Column widths follow the longest label in each section (the
		// ServiceAccount volume's are long), so compare with runs of
		// blanks collapsed.
		mustContain(t, "describe pod", collapseBlanks(out),
			"Name: described", "Namespace: default", "app=described", "owner: team-a",
			"Status: Pending", " app:\n", "Image: nginx:1.25", "80/TCP", " sidecar:\n",
			"QoS Class: BestEffort", "/var/run/secrets/kubernetes.io/serviceaccount from kube-api-access-")
		out = f1.ok(t, "describe", "namespace", "team-a")
		mustContain(t, "describe namespace", out, "Name:         team-a", "Status:       Active")
		out = leader.ok(t, "describe", "service", "kubernetes")
		mustContain(t, "describe service kubernetes", out, "Type:                     ClusterIP", "10.96.0.1")
	})

	t.Run("label and annotate", func(t *testing.T) {
		f1.ok(t, "create", "configmap", "tagged", "--from-literal=k=v")
		if out := leader.ok(t, "label", "configmap", "tagged", "env=prod", "team=a"); strings.TrimSpace(out) != "configmap/tagged labeled" {
			t.Fatalf("label: %q", out)
		}
		errOut := f2.fails(t, "label", "configmap", "tagged", "env=dev")
		mustContain(t, "relabel without --overwrite", errOut, "'env' already has a value (prod), and --overwrite is false")
		f2.ok(t, "label", "configmap", "tagged", "env=dev", "--overwrite")
		f1.ok(t, "label", "configmap", "tagged", "team-")
		f1.ok(t, "annotate", "configmap", "tagged", "note=hello world")
		out := f2.ok(t, "get", "configmap", "tagged", "-o", "jsonpath={.metadata.labels} {.metadata.annotations.note}")
		if out != `{"env":"dev"} hello world` {
			t.Errorf("labels/annotations after label/annotate: %q", out)
		}
		// Label keys and values are validated by the server, as
		// kube-apiserver does: 422 naming the field.
		errOut = f1.fails(t, "label", "configmap", "tagged", "bad key!=x")
		mustContain(t, "invalid label key", errOut, `The ConfigMap "tagged" is invalid: metadata.labels: Invalid value: "bad key!"`)
		errOut = f1.fails(t, "patch", "configmap", "tagged", "--type", "merge", "-p", `{"metadata":{"labels":{"env":"-bad-"}}}`)
		mustContain(t, "invalid label value", errOut, `The ConfigMap "tagged" is invalid: metadata.labels: Invalid value: "-bad-"`)
	})

	t.Run("patch", func(t *testing.T) {
		leader.ok(t, "create", "-f", manifest(t, "pod.yaml", podManifest("patched", "default", "app: patched, tier: fe")))
		cases := []struct {
			name, typ, patch string
			jsonpath, want   string
		}{
			{"merge", "merge", `{"metadata":{"labels":{"tier":null,"track":"stable"}}}`,
				"{.metadata.labels}", `{"app":"patched","track":"stable"}`},
			{"json", "json", `[{"op":"test","path":"/metadata/labels/track","value":"stable"},{"op":"replace","path":"/metadata/labels/track","value":"canary"},{"op":"add","path":"/metadata/annotations","value":{"a":"b"}}]`,
				"{.metadata.labels.track} {.metadata.annotations}", `canary {"a":"b"}`},
			// Strategic merge keys containers by name: the sidecar keeps its
			// image, where a merge patch would have replaced the list.
			{"strategic", "strategic", `{"spec":{"containers":[{"name":"app","image":"nginx:1.27"}]}}`,
				"{.spec.containers[*].name} {.spec.containers[*].image}", "app sidecar nginx:1.27 busybox:1.36"},
		}
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				k := []*kubectl{leader, f1, f2}[i%3]
				out := k.ok(t, "patch", "pod", "patched", "--type", tc.typ, "-p", tc.patch)
				if strings.TrimSpace(out) != "pod/patched patched" {
					t.Errorf("patch: %q", out)
				}
				got := f1.ok(t, "get", "pod", "patched", "-o", "jsonpath="+tc.jsonpath)
				if got != tc.want {
					t.Errorf("after %s patch %s = %q, want %q", tc.typ, tc.jsonpath, got, tc.want)
				}
			})
		}
		// A failed JSON patch test and an immutable field are refused; the
		// first with kube-apiserver's generic 422.
		errOut := f2.fails(t, "patch", "pod", "patched", "--type", "json", "-p", `[{"op":"test","path":"/metadata/labels/track","value":"stable"}]`)
		mustContain(t, "failed json patch test", errOut, "The request is invalid")
		errOut = f2.fails(t, "patch", "pod", "patched", "-p", `{"spec":{"containers":[{"name":"app","imagePullPolicy":"Always"}]}}`)
		mustContain(t, "patch immutable pod field", errOut, `The Pod "patched" is invalid: spec: Forbidden: pod updates may not change fields other than`)
		// A no-op patch says so.
		out := leader.ok(t, "patch", "pod", "patched", "--type", "merge", "-p", `{"metadata":{"labels":{"track":"canary"}}}`)
		if strings.TrimSpace(out) != "pod/patched patched (no change)" {
			t.Errorf("no-op patch: %q", out)
		}
	})

	t.Run("edit", func(t *testing.T) {
		f2.ok(t, "create", "configmap", "edited", "--from-literal=color=blue", "--from-literal=size=m")
		editor := manifest(t, "editor.sh", "#!/bin/sh\nsed -i 's/^  color: blue$/  color: green/' \"$1\"\n")
		if err := os.Chmod(editor, 0o755); err != nil {
			t.Fatal(err)
		}
		out, errOut, err := f1.run(t, []string{"KUBE_EDITOR=" + editor}, "edit", "configmap", "edited")
		if err != nil || strings.TrimSpace(out) != "configmap/edited edited" {
			t.Fatalf("edit: %v\n%s%s", err, out, errOut)
		}
		got := leader.ok(t, "get", "configmap", "edited", "-o", "jsonpath={.data.color} {.data.size}")
		if got != "green m" {
			t.Errorf("after edit: %q", got)
		}
		// An editor that changes nothing: kubectl says so and writes nothing.
		rv := leader.ok(t, "get", "configmap", "edited", "-o", "jsonpath={.metadata.resourceVersion}")
		_, errOut, err = leader.run(t, []string{"KUBE_EDITOR=true"}, "edit", "configmap", "edited")
		if err != nil || !strings.Contains(errOut, "Edit cancelled, no changes made.") {
			t.Errorf("edit with no change: %v: %s", err, errOut)
		}
		if now := f2.ok(t, "get", "configmap", "edited", "-o", "jsonpath={.metadata.resourceVersion}"); now != rv {
			t.Errorf("edit with no change wrote: resourceVersion %s -> %s", rv, now)
		}
	})

	t.Run("get -w", func(t *testing.T) {
		leader.ok(t, "create", "configmap", "watched", "--from-literal=k=v")
		leader.ok(t, "label", "configmap", "watched", "watched=yes")
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		// The watch is served by a follower; the writes go through the
		// leader and the other follower.
		cmd := f1.command(ctx, nil, "get", "configmaps", "-l", "watched=yes", "-w", "--output-watch-events")
		var buf bytes.Buffer
		w := &lockedWriter{w: &buf}
		cmd.Stdout, cmd.Stderr = w, w
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		defer func() {
			_ = cmd.Process.Kill()
			<-done
		}()
		output := func() string {
			w.mu.Lock()
			defer w.mu.Unlock()
			return buf.String()
		}
		expect := func(event string) {
			t.Helper()
			waitFor(t, 10*time.Second, event+" line from get -w", func() (bool, string) {
				for _, r := range tableRows(output()) {
					if len(r) >= 2 && r[0] == event && r[1] == "watched" {
						return true, ""
					}
				}
				return false, output()
			})
		}
		// The initial list comes as ADDED; the changes after it are the
		// watch's.
		expect("ADDED")
		f2.ok(t, "annotate", "configmap", "watched", "seen=yes")
		expect("MODIFIED")
		leader.ok(t, "delete", "configmap", "watched")
		expect("DELETED")
		select {
		case err := <-done:
			t.Fatalf("kubectl get -w exited by itself: %v\n%s", err, output())
		default:
		}
		if h := tableRows(output())[0]; strings.Join(h, " ") != "EVENT NAME DATA AGE" {
			t.Errorf("get -w header %v", h)
		}
	})

	t.Run("apply", func(t *testing.T) {
		deploy := func(replicas int, image string) string {
			return manifest(t, "deploy.yaml", fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: applied
  labels: {app: applied}
spec:
  replicas: %d
  selector:
    matchLabels: {app: applied}
  template:
    metadata:
      labels: {app: applied}
    spec:
      containers:
      - name: app
        image: %s
`, replicas, image))
		}
		steps := []struct {
			k        *kubectl
			replicas int
			image    string
			want     string
		}{
			{f1, 2, "nginx:1.25", "deployment.apps/applied created"},
			{leader, 2, "nginx:1.25", "deployment.apps/applied unchanged"},
			{f2, 3, "nginx:1.26", "deployment.apps/applied configured"},
			{f1, 3, "nginx:1.26", "deployment.apps/applied unchanged"},
		}
		for i, st := range steps {
			out := st.k.ok(t, "apply", "-f", deploy(st.replicas, st.image))
			if strings.TrimSpace(out) != st.want {
				t.Fatalf("apply step %d on %s: %q, want %q", i, st.k.master.name, out, st.want)
			}
		}
		var d appsv1.Deployment
		if err := json.Unmarshal([]byte(leader.ok(t, "get", "deployment", "applied", "-o", "json")), &d); err != nil {
			t.Fatal(err)
		}
		if *d.Spec.Replicas != 3 || d.Spec.Template.Spec.Containers[0].Image != "nginx:1.26" || d.Generation != 2 ||
			d.Annotations["kubectl.kubernetes.io/last-applied-configuration"] == "" ||
			d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
			t.Errorf("after apply: generation %d spec %+v annotations %v", d.Generation, d.Spec, d.Annotations)
		}
		// A field changed out of band survives the next apply of an
		// unchanged manifest: the three-way merge leaves it alone.
		f2.ok(t, "label", "deployment", "applied", "extra=kept")
		f1.ok(t, "apply", "-f", deploy(3, "nginx:1.26"))
		if got := leader.ok(t, "get", "deployment", "applied", "-o", "jsonpath={.metadata.labels.extra}"); got != "kept" {
			t.Errorf("out-of-band label after apply: %q", got)
		}
		// Several objects in one file, one of them new.
		out := leader.ok(t, "apply", "-f", manifest(t, "two.yaml", `apiVersion: v1
kind: ConfigMap
metadata: {name: applied-a}
data: {k: v}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: applied-b}
data: {k: v}
`))
		mustContain(t, "apply of two objects", out, "configmap/applied-a created", "configmap/applied-b created")
	})

	t.Run("scale", func(t *testing.T) {
		leader.ok(t, "create", "deployment", "scaled", "--image=nginx:1.25", "--replicas=1")
		if out := f1.ok(t, "scale", "deployment", "scaled", "--replicas=4"); strings.TrimSpace(out) != "deployment.apps/scaled scaled" {
			t.Fatalf("scale: %q", out)
		}
		got := f2.ok(t, "get", "deployment", "scaled", "-o", "jsonpath={.spec.replicas} {.metadata.generation}")
		if got != "4 2" {
			t.Errorf("after scale: replicas and generation %q, want \"4 2\"", got)
		}
		// --current-replicas is a precondition checked against the scale
		// subresource.
		errOut := leader.fails(t, "scale", "deployment", "scaled", "--current-replicas=3", "--replicas=5")
		mustContain(t, "scale with a wrong precondition", errOut, "Expected replicas to be 3, was 4")
		f2.ok(t, "scale", "deployment", "scaled", "--current-replicas=4", "--replicas=0")
		if got := leader.ok(t, "get", "deploy", "scaled", "-o", "jsonpath={.spec.replicas}"); got != "0" {
			t.Errorf("after scale to 0: %q", got)
		}
	})

	t.Run("services", func(t *testing.T) {
		out := f1.ok(t, "apply", "-f", manifest(t, "svc.yaml", `apiVersion: v1
kind: Service
metadata: {name: svc-a}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: svc-np}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80}, {name: https, port: 443}]
`))
		mustContain(t, "apply services", out, "service/svc-a created", "service/svc-np created")
		_, serviceNet, _ := net.ParseCIDR("10.96.0.0/12")
		seen := map[string]bool{}
		for _, name := range []string{"kubernetes", "svc-a", "svc-np"} {
			ip := leader.ok(t, "get", "service", name, "-o", "jsonpath={.spec.clusterIP}")
			if p := net.ParseIP(ip); p == nil || !serviceNet.Contains(p) || seen[ip] {
				t.Errorf("service %s clusterIP %q: want a distinct address in %s", name, ip, serviceNet)
			}
			seen[ip] = true
		}
		ports := strings.Fields(f2.ok(t, "get", "service", "svc-np", "-o", "jsonpath={.spec.ports[*].nodePort}"))
		if len(ports) != 2 || ports[0] == ports[1] {
			t.Fatalf("NodePort service: nodePorts %v, want two distinct", ports)
		}
		for _, p := range ports {
			if n, err := strconv.Atoi(p); err != nil || n < 30000 || n > 32767 {
				t.Errorf("nodePort %q outside 30000-32767", p)
			}
		}
		wide := f2.ok(t, "get", "services", "-o", "wide")
		mustContain(t, "get services -o wide", wide, "80:"+ports[0]+"/TCP,443:"+ports[1]+"/TCP", "app=web")
		// A port already allocated is refused, whichever master is asked.
		errOut := f1.fails(t, "create", "service", "nodeport", "svc-dup", "--tcp=80", "--node-port="+ports[0])
		mustContain(t, "duplicate nodePort", errOut, "provided port is already allocated")
		// Deleting frees it for the next service.
		leader.ok(t, "delete", "service", "svc-np")
		f2.ok(t, "create", "service", "nodeport", "svc-reuse", "--tcp=80", "--node-port="+ports[0])
	})

	t.Run("field validation", func(t *testing.T) {
		bad := manifest(t, "bad.yaml", `apiVersion: v1
kind: ConfigMap
metadata: {name: strict}
data: {k: v}
bogusField: 1
`)
		// kubectl leaves validation to the server (the OpenAPI v3 document
		// declares fieldValidation), which rejects unknown fields.
		for _, k := range []*kubectl{leader, f1} {
			errOut := k.fails(t, "apply", "-f", bad)
			mustContain(t, "apply with an unknown field", errOut, "Error from server (BadRequest)", `strict decoding error: unknown field "bogusField"`)
			errOut = k.fails(t, "create", "-f", bad)
			mustContain(t, "create with an unknown field", errOut, `strict decoding error: unknown field "bogusField"`)
		}
		leader.fails(t, "get", "configmap", "strict")
		out, errOut, err := f2.run(t, nil, "apply", "--validate=warn", "-f", bad)
		if err != nil || strings.TrimSpace(out) != "configmap/strict created" || !strings.Contains(errOut, `Warning: unknown field "bogusField"`) {
			t.Errorf("apply --validate=warn: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
		}
		leader.ok(t, "delete", "configmap", "strict")
		out, errOut, err = f1.run(t, nil, "create", "--validate=ignore", "-f", bad)
		if err != nil || strings.TrimSpace(out) != "configmap/strict created" || errOut != "" {
			t.Errorf("create --validate=ignore: %v\nstdout:\n%s\nstderr:\n%s", err, out, errOut)
		}
		// Semantic validation is the server's: 422 naming the field.
		errOut = f2.fails(t, "create", "-f", manifest(t, "invalid.yaml", podManifest("Bad_Name", "default", "app: x")))
		mustContain(t, "create with an invalid name", errOut, `The Pod "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name"`)
	})

	t.Run("cordon and uncordon", func(t *testing.T) {
		// No agents exist yet, so the node is made by hand.
		leader.ok(t, "create", "-f", manifest(t, "node.yaml", `apiVersion: v1
kind: Node
metadata:
  name: node-1
  labels: {kubernetes.io/hostname: node-1}
`))
		if out := f1.ok(t, "cordon", "node-1"); strings.TrimSpace(out) != "node/node-1 cordoned" {
			t.Fatalf("cordon: %q", out)
		}
		if got := f2.ok(t, "get", "node", "node-1", "-o", "jsonpath={.spec.unschedulable}"); got != "true" {
			t.Errorf("after cordon spec.unschedulable = %q", got)
		}
		if st := column(t, leader.ok(t, "get", "nodes", "node-1"), "STATUS"); len(st) != 1 || !strings.Contains(st[0], "SchedulingDisabled") {
			t.Errorf("cordoned node STATUS %v", st)
		}
		if out := leader.ok(t, "cordon", "node-1"); strings.TrimSpace(out) != "node/node-1 already cordoned" {
			t.Errorf("second cordon: %q", out)
		}
		if out := f2.ok(t, "uncordon", "node-1"); strings.TrimSpace(out) != "node/node-1 uncordoned" {
			t.Fatalf("uncordon: %q", out)
		}
		if got := f1.ok(t, "get", "node", "node-1", "-o", "jsonpath={.spec.unschedulable}"); got != "" && got != "false" {
			t.Errorf("after uncordon spec.unschedulable = %q", got)
		}
		out := f1.ok(t, "describe", "node", "node-1")
		mustContain(t, "describe node", out, "Name:               node-1", "Unschedulable:      false", "kubernetes.io/hostname=node-1")
	})

	t.Run("delete", func(t *testing.T) {
		file := manifest(t, "del.yaml", podManifest("del-file", "default", "app: del")+"---\n"+`apiVersion: v1
kind: ConfigMap
metadata: {name: del-file}
`)
		leader.ok(t, "create", "-f", file)
		for i := 1; i <= 3; i++ {
			f1.ok(t, "create", "configmap", fmt.Sprintf("del-l%d", i), "--from-literal=k=v")
		}
		f2.ok(t, "label", "configmap", "del-l1", "del-l2", "group=gone")
		f1.ok(t, "create", "configmap", "del-name")

		out := f2.ok(t, "delete", "-f", file)
		mustContain(t, "delete -f", out, `pod "del-file" deleted`, `configmap "del-file" deleted`)
		out = leader.ok(t, "delete", "configmap", "-l", "group=gone")
		mustContain(t, "delete -l", out, `configmap "del-l1" deleted`, `configmap "del-l2" deleted`)
		out = f1.ok(t, "delete", "configmap", "del-name")
		mustContain(t, "delete by name", out, `configmap "del-name" deleted`)

		left := leader.ok(t, "get", "configmaps,pods", "-o", "name")
		for _, gone := range []string{"pod/del-file", "configmap/del-file", "configmap/del-l1", "configmap/del-l2", "configmap/del-name"} {
			if strings.Contains(left+"\n", gone+"\n") {
				t.Errorf("%s still there after delete:\n%s", gone, left)
			}
		}
		if !strings.Contains(left, "configmap/del-l3\n") {
			t.Errorf("delete -l removed an unlabelled object:\n%s", left)
		}
		errOut := f2.fails(t, "delete", "configmap", "del-name")
		mustContain(t, "delete a missing object", errOut, `Error from server (NotFound): configmaps "del-name" not found`)
		out = f2.ok(t, "delete", "configmap", "del-name", "--ignore-not-found")
		if out != "" {
			t.Errorf("delete --ignore-not-found: %q", out)
		}
	})
	t.Logf("kubectl suite took %s", time.Since(start).Round(time.Millisecond))
}

// collapseBlanks turns every run of spaces and tabs into one space.
func collapseBlanks(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == '\t' }), " ")
}

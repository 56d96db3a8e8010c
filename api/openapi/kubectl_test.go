package openapi

// End-to-end checks with kubectl's and client-go's own code against the
// documents served over HTTP: what `kubectl apply --validate=strict`,
// `kubectl apply` (patch computation) and `kubectl explain` do with them.

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	cliresource "k8s.io/cli-runtime/pkg/resource"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/disk"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/openapi"
	"k8s.io/client-go/openapi/cached"
	"k8s.io/client-go/openapi3"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/kube-openapi/pkg/validation/spec"
	"k8s.io/kubectl/pkg/cmd/explain"
	cmdutil "k8s.io/kubectl/pkg/cmd/util"
	kubectlopenapi "k8s.io/kubectl/pkg/util/openapi"
	"sigs.k8s.io/yaml"
)

// newFactory is kubectl's command factory pointed at a server that serves
// only the OpenAPI documents, with kubectl's disk-cached discovery (so the
// ETag/hash caching path runs too). The REST mapper is built from
// testResources because the server has no discovery endpoints.
func newFactory(t *testing.T) cmdutil.Factory {
	t.Helper()
	cfg := newTestServer(t)
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test", Namespace: "default"}
	kc.CurrentContext = "test"
	dir := t.TempDir()
	dc, err := disk.NewCachedDiscoveryClientForConfig(cfg, dir+"/discovery", dir+"/http", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	mapper := meta.NewDefaultRESTMapper(nil)
	for _, r := range testResources {
		scope := meta.RESTScopeRoot
		if r.Namespaced {
			scope = meta.RESTScopeNamespace
		}
		gv := schema.GroupVersion{Group: r.Group, Version: r.Version}
		mapper.AddSpecific(gv.WithKind(r.Kind), gv.WithResource(r.Plural), gv.WithResource(strings.ToLower(r.Kind)), scope)
	}
	flags := genericclioptions.NewTestConfigFlags().
		WithClientConfig(clientcmd.NewDefaultClientConfig(*kc, &clientcmd.ConfigOverrides{})).
		WithDiscoveryClient(dc).
		WithRESTMapper(mapper)
	return cmdutil.NewFactory(flags)
}

// TestFieldValidationSupported is what decides whether kubectl validates on
// the client: cli-runtime's QueryParamVerifierV3 must find fieldValidation
// on every served kind's PATCH, and must not claim it for a kind we do not
// serve.
func TestFieldValidationSupported(t *testing.T) {
	cfg := newTestServer(t)
	dc := discovery.NewDiscoveryClientForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)
	v := cliresource.NewQueryParamVerifierV3(dyn, cached.NewClient(dc.OpenAPIV3()), cliresource.QueryParamFieldValidation)
	for _, r := range testResources {
		gvk := r.GroupVersionKind()
		if err := v.HasSupport(gvk); err != nil {
			t.Errorf("%s: %v", gvk, err)
		}
	}
	job := schema.GroupVersionKind{Group: "batch", Version: "v1", Kind: "Job"}
	if err := v.HasSupport(job); !cliresource.IsParamUnsupportedError(err) {
		t.Errorf("%s: want unsupported, got %v", job, err)
	}
}

// TestKubectlValidator runs the validator `kubectl apply --validate=strict`
// builds. Single objects go to the server (fieldValidation); a `kind: List`
// is validated on the client against the protobuf /openapi/v2.
func TestKubectlValidator(t *testing.T) {
	v, err := newFactory(t).Validator(metav1.FieldValidationStrict)
	if err != nil {
		t.Fatal(err)
	}
	const pod = `
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: web
    image: nginx
    ports: [{containerPort: 80, name: http}]
    resources: {limits: {cpu: 500m, memory: 1Gi}}
    readinessProbe: {httpGet: {path: /, port: http}, periodSeconds: 5}
    livenessProbe: {tcpSocket: {port: 80}}
  volumes:
  - name: data
    emptyDir: {sizeLimit: 1Gi}
`
	const deployment = `
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  strategy: {rollingUpdate: {maxSurge: 25%, maxUnavailable: 1}}
  template:
    metadata: {labels: {app: web}, creationTimestamp: null}
    spec:
      containers: [{name: web, image: nginx}]
`
	list := func(items ...string) string {
		var b strings.Builder
		b.WriteString("apiVersion: v1\nkind: List\nitems:\n")
		for _, it := range items {
			var obj map[string]any
			if err := yaml.Unmarshal([]byte(it), &obj); err != nil {
				t.Fatal(err)
			}
			j, _ := json.Marshal(obj)
			b.WriteString("- " + string(j) + "\n")
		}
		return b.String()
	}
	for _, tc := range []struct {
		name, doc, wantErr string
	}{
		{"pod", pod, ""},
		{"deployment", deployment, ""},
		// The server validates single objects, so kubectl does not.
		{"pod with unknown field", strings.Replace(pod, "image: nginx", "image: nginx\n    imagePullPolcy: Always", 1), ""},
		{"list", list(pod, deployment), ""},
		{"list with a server-written object", list(serverPod(t)), ""},
		// kube marks Event.reportingComponent +optional; v2 must not require it.
		{"list with event", list(`{apiVersion: v1, kind: Event, metadata: {name: e}, involvedObject: {kind: Pod, name: web}, reason: R}`), ""},
		{"list with unknown field", list(strings.Replace(deployment, "replicas: 2", "replicas: 2\n  replica: 3", 1)), `unknown field "replica"`},
		{"list with wrong type", list(strings.Replace(pod, "containerPort: 80", "containerPort: [80]", 1)), "containerPort"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// kubectl's resource builder hands the validator JSON.
			doc, err := yaml.YAMLToJSON([]byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			err = v.ValidateBytes(doc)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("rejected: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("want error containing %q, got %v", tc.wantErr, err)
			}
		})
	}
}

// serverPod is a Pod as the server returns it: status, nulls and all.
func serverPod(t *testing.T) string {
	p := corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: "u", ResourceVersion: "7"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx"}}},
		Status: corev1.PodStatus{
			Phase:             corev1.PodRunning,
			Conditions:        []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "web", Ready: true, Image: "nginx"}},
		},
	}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestExplain runs `kubectl explain` (plaintext reads /openapi/v3;
// plaintext-openapiv2 reads the protobuf /openapi/v2).
func TestExplain(t *testing.T) {
	f := newFactory(t)
	for _, tc := range []struct {
		args   []string
		output string
		want   []string
	}{
		{[]string{"pods.spec.containers"}, "", []string{"KIND:       Pod", "VERSION:    v1", "FIELD: containers <[]Container>", "image\t<string>", "name\t<string> -required-", "List of containers belonging to the pod."}},
		{[]string{"pods"}, "", []string{"KIND:       Pod", "Pod is a collection of containers", "metadata\t<ObjectMeta>", "spec\t<PodSpec>"}},
		{[]string{"deployments.spec.template.spec.containers.ports"}, "", []string{"GROUP:      apps", "KIND:       Deployment", "FIELD: ports <[]ContainerPort>", "containerPort\t<integer> -required-"}},
		{[]string{"deployments.spec.strategy.rollingUpdate.maxSurge"}, "", []string{"FIELD: maxSurge <IntOrString>"}},
		{[]string{"services.spec.ports"}, "", []string{"targetPort\t<IntOrString>", "port\t<integer> -required-"}},
		{[]string{"nodes.status.capacity"}, "", []string{"KIND:       Node", "FIELD: capacity <map[string]Quantity>"}},
		{[]string{"secrets.data"}, "", []string{"FIELD: data <map[string]string>"}},
		{[]string{"pods.metadata.creationTimestamp"}, "", []string{"FIELD: creationTimestamp <string>"}},
		{[]string{"replicasets", "--recursive"}, "", []string{"KIND:       ReplicaSet", "matchExpressions\t<[]LabelSelectorRequirement>"}},
		{[]string{"pods.spec.containers"}, "plaintext-openapiv2", []string{"KIND:     Pod", "RESOURCE: containers <[]Object>", "image\t<string>"}},
	} {
		t.Run(strings.Join(append(tc.args, tc.output), " "), func(t *testing.T) {
			var out bytes.Buffer
			streams := genericiooptions.IOStreams{Out: &out, ErrOut: &out}
			flags := explain.NewExplainFlags(streams)
			var args []string
			for _, a := range tc.args {
				if a == "--recursive" {
					flags.Recursive = true
					continue
				}
				args = append(args, a)
			}
			if tc.output != "" {
				flags.OutputFormat = tc.output
			}
			o, err := flags.ToOptions(f, "kubectl", args)
			if err != nil {
				t.Fatal(err)
			}
			if err := o.Validate(); err != nil {
				t.Fatal(err)
			}
			if err := o.Run(); err != nil {
				t.Fatalf("explain: %v\n%s", err, out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// TestStrategicMergePatch computes `kubectl apply`'s three-way patch from
// the served schemas, as kubectl does (v3 first, v2 as fallback), and wants
// exactly the patch the Go struct tags give: the server applies patches by
// the struct tags, so any difference would change what apply does.
func TestStrategicMergePatch(t *testing.T) {
	f := newFactory(t)
	oc, err := f.OpenAPIV3Client()
	if err != nil {
		t.Fatal(err)
	}
	root := openapi3.NewRoot(oc)
	v2, err := f.OpenAPISchema()
	if err != nil {
		t.Fatal(err)
	}

	dep := func(mutate func(*appsv1.Deployment)) []byte {
		d := appsv1.Deployment{
			TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
			ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
			Spec: appsv1.DeploymentSpec{
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Template: corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
					Spec: corev1.PodSpec{
						Containers: []corev1.Container{{
							Name: "web", Image: "nginx:1",
							Ports: []corev1.ContainerPort{{ContainerPort: 80}},
							Env:   []corev1.EnvVar{{Name: "A", Value: "1"}},
						}},
						Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
					},
				},
			},
		}
		mutate(&d)
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	svc := func(mutate func(*corev1.Service)) []byte {
		s := corev1.Service{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
		}
		mutate(&s)
		b, _ := json.Marshal(s)
		return b
	}
	for _, tc := range []struct {
		name                        string
		gvk                         schema.GroupVersionKind
		obj                         any
		original, modified, current []byte
	}{
		{
			name: "deployment", gvk: appsv1.SchemeGroupVersion.WithKind("Deployment"), obj: appsv1.Deployment{},
			original: dep(func(*appsv1.Deployment) {}),
			modified: dep(func(d *appsv1.Deployment) {
				c := &d.Spec.Template.Spec.Containers[0]
				c.Image = "nginx:2"
				c.Env = []corev1.EnvVar{{Name: "B", Value: "2"}}
				c.Ports = append(c.Ports, corev1.ContainerPort{ContainerPort: 443})
				d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, corev1.Container{Name: "sidecar", Image: "busybox"})
				d.Spec.Template.Spec.Volumes[0].VolumeSource = corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/data"}}
				d.Labels["tier"] = "front"
			}),
			current: dep(func(d *appsv1.Deployment) {
				d.Spec.Template.Spec.Containers[0].TerminationMessagePath = "/dev/termination-log"
				d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, corev1.Container{Name: "injected", Image: "proxy"})
				d.Status.Replicas = 1
			}),
		},
		{
			name: "service", gvk: corev1.SchemeGroupVersion.WithKind("Service"), obj: corev1.Service{},
			original: svc(func(*corev1.Service) {}),
			modified: svc(func(s *corev1.Service) {
				s.Spec.Ports = []corev1.ServicePort{{Name: "https", Port: 443}}
			}),
			current: svc(func(s *corev1.Service) { s.Spec.ClusterIP = "10.96.0.10" }),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			structMeta, err := strategicpatch.NewPatchMetaFromStruct(tc.obj)
			if err != nil {
				t.Fatal(err)
			}
			want, err := strategicpatch.CreateThreeWayMergePatch(tc.original, tc.modified, tc.current, structMeta, false)
			if err != nil {
				t.Fatal(err)
			}

			gvSpec, err := root.GVSpec(tc.gvk.GroupVersion())
			if err != nil {
				t.Fatal(err)
			}
			var v3Meta strategicpatch.LookupPatchMeta
			for _, s := range gvSpec.Components.Schemas {
				if hasGVK(s.Extensions, tc.gvk) {
					v3Meta = strategicpatch.PatchMetaFromOpenAPIV3{Schema: s, SchemaList: gvSpec.Components.Schemas}
				}
			}
			if v3Meta == nil {
				t.Fatalf("no v3 schema has %s", tc.gvk)
			}
			got3, err := strategicpatch.CreateThreeWayMergePatch(tc.original, tc.modified, tc.current, v3Meta, false)
			if err != nil {
				t.Fatalf("v3: %v", err)
			}
			if !bytes.Equal(got3, want) {
				t.Errorf("v3 patch\n got %s\nwant %s", got3, want)
			}

			s2 := v2.LookupResource(tc.gvk)
			if s2 == nil {
				t.Fatalf("v2 has no %s", tc.gvk)
			}
			got2, err := strategicpatch.CreateThreeWayMergePatch(tc.original, tc.modified, tc.current, strategicpatch.PatchMetaFromOpenAPI{Schema: s2}, false)
			if err != nil {
				t.Fatalf("v2: %v", err)
			}
			if !bytes.Equal(got2, want) {
				t.Errorf("v2 patch\n got %s\nwant %s", got2, want)
			}
			if c := v2.GetConsumes(tc.gvk, "PATCH"); !strings.Contains(strings.Join(c, ","), "application/strategic-merge-patch+json") {
				t.Errorf("v2 PATCH of %s consumes %v", tc.gvk, c)
			}
		})
	}
}

// hasGVK is kubectl apply's gvkMatchesArray.
func hasGVK(ext spec.Extensions, gvk schema.GroupVersionKind) bool {
	var list []map[string]string
	if err := ext.GetObject(extGVK, &list); err != nil {
		return false
	}
	for _, m := range list {
		if m["group"] == gvk.Group && m["version"] == gvk.Version && m["kind"] == gvk.Kind {
			return true
		}
	}
	return false
}

// TestV2Models parses the protobuf /openapi/v2 as kubectl does and finds
// every served kind in it.
func TestV2Models(t *testing.T) {
	cfg := newTestServer(t)
	doc, err := discovery.NewDiscoveryClientForConfigOrDie(cfg).OpenAPISchema()
	if err != nil {
		t.Fatal(err)
	}
	res, err := kubectlopenapi.NewOpenAPIData(doc)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range testResources {
		for _, kind := range []string{r.Kind, r.Kind + "List"} {
			gvk := schema.GroupVersionKind{Group: r.Group, Version: r.Version, Kind: kind}
			if res.LookupResource(gvk) == nil {
				t.Errorf("v2 has no model for %s", gvk)
			}
		}
	}
}

// TestTypeConverter builds client-go's structured-merge-diff type converter
// from the v3 documents (what server-side apply and applyconfigurations
// use) and converts objects with it.
func TestTypeConverter(t *testing.T) {
	cfg := newTestServer(t)
	tc, err := openapi.NewTypeConverter(discovery.NewDiscoveryClientForConfigOrDie(cfg).OpenAPIV3(), false)
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range []runtime.Object{
		&appsv1.Deployment{
			TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
			Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				Containers: []corev1.Container{{Name: "a", Image: "b", Ports: []corev1.ContainerPort{{ContainerPort: 1}}}},
			}}},
		},
		&corev1.Service{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}},
	} {
		if _, err := tc.ObjectToTyped(obj); err != nil {
			t.Errorf("%T: %v", obj, err)
		}
	}
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/rest"
)

// namespaceFile is where a pod's own namespace is projected (next to the
// token and ca.crt that rest.InClusterConfig reads).
const namespaceFile = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// kubeUsage is the kube subcommand's usage.
const kubeUsage = `usage: toolbox kube get RESOURCE [-n NS]     print the names (configmaps, secrets, pods, services, serviceaccounts)
       toolbox kube create configmap NAME [-n NS] [--from-literal k=v]...`

// kubeResources are the core/v1 lists `kube get` knows, by the names
// kubectl accepts.
var kubeResources = map[string]string{
	"configmaps": "configmaps", "configmap": "configmaps", "cm": "configmaps",
	"secrets": "secrets", "secret": "secrets",
	"pods": "pods", "pod": "pods", "po": "pods",
	"services": "services", "service": "services", "svc": "services",
	"serviceaccounts": "serviceaccounts", "serviceaccount": "serviceaccounts", "sa": "serviceaccounts",
}

// kube talks to the API the way an in-cluster program does: the address
// from KUBERNETES_SERVICE_HOST/PORT, the ServiceAccount token and CA from
// the projected volume (rest.InClusterConfig). It uses client-go's REST
// client over core/v1 alone rather than the full clientset, whose scheme of
// every API group would quadruple the image; the transport, the token
// handling and the errors (the API's Status message) are the same.
func kube(args []string, out io.Writer) error {
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return err
	}
	ns := "default"
	if b, err := os.ReadFile(namespaceFile); err == nil && strings.TrimSpace(string(b)) != "" {
		ns = strings.TrimSpace(string(b))
	}
	return kubeWith(cfg, ns, args, out)
}

// kubeWith runs a kube subcommand against cfg; ns is the default namespace.
func kubeWith(cfg *rest.Config, ns string, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("kube", flag.ContinueOnError)
	fs.StringVar(&ns, "n", ns, "namespace")
	fs.StringVar(&ns, "namespace", ns, "namespace")
	var literals literalFlags
	fs.Var(&literals, "from-literal", "key=value (create configmap; repeatable)")
	pos, err := parse(fs, args)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, kubeUsage)
	}
	rc, err := coreClient(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	switch {
	case len(pos) == 2 && pos[0] == "get":
		plural, ok := kubeResources[pos[1]]
		if !ok {
			return fmt.Errorf("unknown resource %q\n%s", pos[1], kubeUsage)
		}
		var list metav1.PartialObjectMetadataList
		res := rc.Get().Namespace(ns).Resource(plural).Do(ctx)
		if err := res.Error(); err != nil { // the API's Status, decoded
			return err
		}
		body, _ := res.Raw()
		// Only the names are printed; the items' metadata is all we decode.
		if err := json.Unmarshal(body, &list); err != nil {
			return fmt.Errorf("decode %s list: %w", plural, err)
		}
		for _, it := range list.Items {
			fmt.Fprintln(out, it.Name)
		}
		return nil
	case len(pos) == 3 && pos[0] == "create" && (pos[1] == "configmap" || pos[1] == "cm"):
		cm := &corev1.ConfigMap{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
			ObjectMeta: metav1.ObjectMeta{Name: pos[2], Namespace: ns},
			Data:       literals.m,
		}
		created := &corev1.ConfigMap{}
		if err := rc.Post().Namespace(ns).Resource("configmaps").Body(cm).Do(ctx).Into(created); err != nil {
			return err
		}
		fmt.Fprintf(out, "configmap/%s created\n", created.Name)
		return nil
	}
	return errors.New(kubeUsage)
}

// coreClient is a client-go REST client for /api/v1 speaking JSON.
func coreClient(cfg *rest.Config) (*rest.RESTClient, error) {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		return nil, err
	}
	c := rest.CopyConfig(cfg)
	c.APIPath = "/api"
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.ContentType = runtime.ContentTypeJSON
	c.AcceptContentTypes = runtime.ContentTypeJSON
	c.NegotiatedSerializer = serializer.NewCodecFactory(s).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = "flotilla-toolbox"
	}
	return rest.RESTClientFor(c)
}

// literalFlags collects --from-literal key=value pairs.
type literalFlags struct{ m map[string]string }

func (l *literalFlags) String() string { return "" }

func (l *literalFlags) Set(v string) error {
	k, val, ok := strings.Cut(v, "=")
	if !ok || k == "" {
		return fmt.Errorf("--from-literal %q: want key=value", v)
	}
	if l.m == nil {
		l.m = map[string]string{}
	}
	l.m[k] = val
	return nil
}

package pods

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	goruntime "runtime"
	"sort"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

// envList is an ordered environment: later sets of a name replace the value
// in place, as a map would, but the order stays stable.
type envList struct {
	names []string
	vals  map[string]string
}

func newEnvList() *envList { return &envList{vals: map[string]string{}} }

func (e *envList) set(k, v string) {
	if _, ok := e.vals[k]; !ok {
		e.names = append(e.names, k)
	}
	e.vals[k] = v
}

func (e *envList) has(k string) bool { _, ok := e.vals[k]; return ok }

func (e *envList) pairs() []string {
	out := make([]string, 0, len(e.names))
	for _, k := range e.names {
		out = append(out, k+"="+e.vals[k])
	}
	return out
}

func (e *envList) lookup() func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := e.vals[k]; return v, ok }
}

// objectCache reads each ConfigMap and Secret once per container start.
type objectCache struct {
	m          *Manager
	ns         string
	configMaps map[string]*corev1.ConfigMap
	secrets    map[string]*corev1.Secret
	// cached reads the API server's local copy (resourceVersion "0").
	cached bool
}

func (o *objectCache) getOptions() metav1.GetOptions {
	if o.cached {
		return metav1.GetOptions{ResourceVersion: "0"}
	}
	return metav1.GetOptions{}
}

func (m *Manager) newObjectCache(ns string) *objectCache {
	return &objectCache{m: m, ns: ns, configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
}

// configMap returns the named ConfigMap; nil, nil if it does not exist.
func (o *objectCache) configMap(ctx context.Context, name string) (*corev1.ConfigMap, error) {
	if cm, ok := o.configMaps[name]; ok {
		return cm, nil
	}
	cm, err := o.m.cfg.Client.CoreV1().ConfigMaps(o.ns).Get(ctx, name, o.getOptions())
	if apierrors.IsNotFound(err) {
		cm, err = nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get configmap %s/%s: %w", o.ns, name, err)
	}
	o.configMaps[name] = cm
	return cm, nil
}

// secret returns the named Secret; nil, nil if it does not exist.
func (o *objectCache) secret(ctx context.Context, name string) (*corev1.Secret, error) {
	if s, ok := o.secrets[name]; ok {
		return s, nil
	}
	s, err := o.m.cfg.Client.CoreV1().Secrets(o.ns).Get(ctx, name, o.getOptions())
	if apierrors.IsNotFound(err) {
		s, err = nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("get secret %s/%s: %w", o.ns, name, err)
	}
	o.secrets[name] = s
	return s, nil
}

// containerEnv resolves a container's environment as the kubelet does:
// envFrom sources first, then env in order (each value may refer to the
// ones before it with $(VAR)), then the service variables not already set.
func (m *Manager) containerEnv(ctx context.Context, pod *corev1.Pod, st *podState, c *corev1.Container) (*envList, error) {
	svc, err := m.serviceEnv(ctx, pod)
	if err != nil {
		return nil, err
	}
	objs := m.newObjectCache(pod.Namespace)
	env := newEnvList()
	for _, from := range c.EnvFrom {
		var data map[string]string
		var what string
		switch {
		case from.ConfigMapRef != nil:
			ref := from.ConfigMapRef
			what = "configMap " + pod.Namespace + "/" + ref.Name
			cm, err := objs.configMap(ctx, ref.Name)
			if err != nil {
				return nil, err
			}
			if cm == nil {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("configmap %q not found", ref.Name)
			}
			data = cm.Data
		case from.SecretRef != nil:
			ref := from.SecretRef
			what = "secret " + pod.Namespace + "/" + ref.Name
			s, err := objs.secret(ctx, ref.Name)
			if err != nil {
				return nil, err
			}
			if s == nil {
				if ref.Optional != nil && *ref.Optional {
					continue
				}
				return nil, fmt.Errorf("secret %q not found", ref.Name)
			}
			data = make(map[string]string, len(s.Data))
			for k, v := range s.Data {
				data[k] = string(v)
			}
		default:
			continue
		}
		var invalid []string
		for _, k := range sortedKeys(data) {
			name := from.Prefix + k
			if len(validation.IsEnvVarName(name)) > 0 {
				invalid = append(invalid, name)
				continue
			}
			env.set(name, data[k])
		}
		if len(invalid) > 0 {
			m.eventf(pod, c.Name, corev1.EventTypeWarning, "InvalidEnvironmentVariableNames",
				"Keys [%s] from the EnvFrom %s were skipped since they are considered invalid environment variable names.", strings.Join(invalid, ", "), what)
		}
	}
	mapping := func(k string) (string, bool) {
		if v, ok := env.vals[k]; ok {
			return v, true
		}
		v, ok := svc.vals[k]
		return v, ok
	}
	for _, ev := range c.Env {
		if ev.ValueFrom == nil {
			env.set(ev.Name, expandVars(ev.Value, mapping))
			continue
		}
		v, ok, err := m.envValueFrom(ctx, pod, st, c, objs, ev.ValueFrom)
		if err != nil {
			return nil, err
		}
		if ok {
			env.set(ev.Name, v)
		}
	}
	for _, k := range svc.names {
		if !env.has(k) {
			env.set(k, svc.vals[k])
		}
	}
	return env, nil
}

// envValueFrom resolves one valueFrom; false means an optional source is
// missing and the variable is left out.
func (m *Manager) envValueFrom(ctx context.Context, pod *corev1.Pod, st *podState, c *corev1.Container, objs *objectCache, from *corev1.EnvVarSource) (string, bool, error) {
	switch {
	case from.FieldRef != nil:
		v, err := podFieldValue(pod, st, m.cfg.NodeIP(), from.FieldRef.FieldPath)
		return v, err == nil, err
	case from.ResourceFieldRef != nil:
		v, err := resourceFieldValue(pod, c, from.ResourceFieldRef)
		return v, err == nil, err
	case from.ConfigMapKeyRef != nil:
		ref := from.ConfigMapKeyRef
		optional := ref.Optional != nil && *ref.Optional
		cm, err := objs.configMap(ctx, ref.Name)
		if err != nil {
			return "", false, err
		}
		if cm == nil {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configmap %q not found", ref.Name)
		}
		if v, ok := cm.Data[ref.Key]; ok {
			return v, true, nil
		}
		if v, ok := cm.BinaryData[ref.Key]; ok {
			return string(v), true, nil
		}
		if optional {
			return "", false, nil
		}
		return "", false, fmt.Errorf("couldn't find key %s in ConfigMap %s/%s", ref.Key, pod.Namespace, ref.Name)
	case from.SecretKeyRef != nil:
		ref := from.SecretKeyRef
		optional := ref.Optional != nil && *ref.Optional
		s, err := objs.secret(ctx, ref.Name)
		if err != nil {
			return "", false, err
		}
		if s == nil {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secret %q not found", ref.Name)
		}
		if v, ok := s.Data[ref.Key]; ok {
			return string(v), true, nil
		}
		if optional {
			return "", false, nil
		}
		return "", false, fmt.Errorf("couldn't find key %s in Secret %s/%s", ref.Key, pod.Namespace, ref.Name)
	case from.FileKeyRef != nil:
		return "", false, errors.New("env from fileKeyRef is not supported by Flotilla")
	}
	return "", false, errors.New("env valueFrom names no source")
}

// podFieldValue is the downward API: one field of the pod by its path.
func podFieldValue(pod *corev1.Pod, st *podState, hostIP, path string) (string, error) {
	if k, ok := subscript(path, "metadata.labels"); ok {
		return pod.Labels[k], nil
	}
	if k, ok := subscript(path, "metadata.annotations"); ok {
		return pod.Annotations[k], nil
	}
	switch path {
	case "metadata.name":
		return pod.Name, nil
	case "metadata.namespace":
		return pod.Namespace, nil
	case "metadata.uid":
		return string(pod.UID), nil
	case "metadata.labels":
		return formatMap(pod.Labels), nil
	case "metadata.annotations":
		return formatMap(pod.Annotations), nil
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP", "status.hostIPs":
		return hostIP, nil
	case "status.podIP", "status.podIPs":
		return st.podIP, nil
	}
	return "", fmt.Errorf("unsupported fieldRef path %q", path)
}

// subscript parses `prefix['key']`.
func subscript(path, prefix string) (string, bool) {
	rest, ok := strings.CutPrefix(path, prefix+"['")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "']")
}

// formatMap is the downward API's rendering of labels and annotations:
// key="value" lines, sorted.
func formatMap(m map[string]string) string {
	lines := make([]string, 0, len(m))
	for _, k := range sortedKeys(m) {
		lines = append(lines, k+"="+strconv.Quote(m[k]))
	}
	return strings.Join(lines, "\n")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// resourceFieldValue is a container's request or limit in units of the
// divisor, rounded up; a limit that is not set is the node's capacity.
func resourceFieldValue(pod *corev1.Pod, self *corev1.Container, ref *corev1.ResourceFieldSelector) (string, error) {
	c := self
	if ref.ContainerName != "" {
		c = nil
		for i := range pod.Spec.Containers {
			if pod.Spec.Containers[i].Name == ref.ContainerName {
				c = &pod.Spec.Containers[i]
			}
		}
		for i := range pod.Spec.InitContainers {
			if pod.Spec.InitContainers[i].Name == ref.ContainerName {
				c = &pod.Spec.InitContainers[i]
			}
		}
	}
	if c == nil {
		return "", fmt.Errorf("resourceFieldRef names no container %q", ref.ContainerName)
	}
	divisor := ref.Divisor
	if divisor.IsZero() {
		divisor = resource.MustParse("1")
	}
	kind, res, ok := strings.Cut(ref.Resource, ".")
	if !ok || (kind != "limits" && kind != "requests") {
		return "", fmt.Errorf("unsupported resourceFieldRef %q", ref.Resource)
	}
	list := c.Resources.Requests
	if kind == "limits" {
		list = c.Resources.Limits
	}
	q, set := list[corev1.ResourceName(res)]
	if !set && kind == "limits" {
		q, set = nodeCapacity(corev1.ResourceName(res))
	}
	switch corev1.ResourceName(res) {
	case corev1.ResourceCPU:
		if !set {
			return "0", nil
		}
		return strconv.FormatInt(int64(math.Ceil(float64(q.MilliValue())/float64(divisor.MilliValue()))), 10), nil
	case corev1.ResourceMemory, corev1.ResourceEphemeralStorage:
		if !set {
			return "0", nil
		}
		return strconv.FormatInt(int64(math.Ceil(float64(q.Value())/float64(divisor.Value()))), 10), nil
	}
	return "", fmt.Errorf("unsupported resourceFieldRef %q", ref.Resource)
}

var (
	capacityOnce sync.Once
	capacityMem  int64
)

// nodeCapacity is the machine's cpu count and memory, what a container
// without a limit may use.
func nodeCapacity(name corev1.ResourceName) (resource.Quantity, bool) {
	capacityOnce.Do(func() {
		f, err := os.Open("/proc/meminfo")
		if err != nil {
			return
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) >= 2 && fields[0] == "MemTotal:" {
				kb, _ := strconv.ParseInt(fields[1], 10, 64)
				capacityMem = kb * 1024
			}
		}
	})
	switch name {
	case corev1.ResourceCPU:
		return *resource.NewQuantity(int64(goruntime.NumCPU()), resource.DecimalSI), true
	case corev1.ResourceMemory:
		if capacityMem > 0 {
			return *resource.NewQuantity(capacityMem, resource.BinarySI), true
		}
	}
	return resource.Quantity{}, false
}

// serviceEnv is the Docker-links style variables of the services a pod
// sees: those of its namespace when enableServiceLinks, and always the API's
// own service "kubernetes" in the default namespace, as the kubelet does.
func (m *Manager) serviceEnv(ctx context.Context, pod *corev1.Pod) (*envList, error) {
	var svcs []corev1.Service
	if pod.Spec.EnableServiceLinks == nil || *pod.Spec.EnableServiceLinks {
		list, err := m.cfg.Client.CoreV1().Services(pod.Namespace).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
		if err != nil {
			return nil, fmt.Errorf("list services of %s: %w", pod.Namespace, err)
		}
		svcs = list.Items
	}
	if pod.Namespace != metav1.NamespaceDefault || len(svcs) == 0 {
		s, err := m.cfg.Client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{ResourceVersion: "0"})
		switch {
		case err == nil:
			seen := false
			for _, x := range svcs {
				seen = seen || x.Name == "kubernetes"
			}
			if !seen {
				svcs = append(svcs, *s)
			}
		case !apierrors.IsNotFound(err):
			return nil, fmt.Errorf("get service default/kubernetes: %w", err)
		}
	}
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].Name < svcs[j].Name })
	env := newEnvList()
	for _, s := range svcs {
		ip := s.Spec.ClusterIP
		if ip == "" || ip == corev1.ClusterIPNone || len(s.Spec.Ports) == 0 {
			continue
		}
		prefix := strings.ToUpper(strings.ReplaceAll(s.Name, "-", "_"))
		env.set(prefix+"_SERVICE_HOST", ip)
		env.set(prefix+"_SERVICE_PORT", strconv.Itoa(int(s.Spec.Ports[0].Port)))
		for _, p := range s.Spec.Ports {
			if p.Name != "" {
				env.set(prefix+"_SERVICE_PORT_"+strings.ToUpper(strings.ReplaceAll(p.Name, "-", "_")), strconv.Itoa(int(p.Port)))
			}
		}
		for i, p := range s.Spec.Ports {
			proto := string(p.Protocol)
			if proto == "" {
				proto = string(corev1.ProtocolTCP)
			}
			url := fmt.Sprintf("%s://%s:%d", strings.ToLower(proto), ip, p.Port)
			if i == 0 {
				env.set(prefix+"_PORT", url)
			}
			pp := fmt.Sprintf("%s_PORT_%d_%s", prefix, p.Port, strings.ToUpper(proto))
			env.set(pp, url)
			env.set(pp+"_PROTO", strings.ToLower(proto))
			env.set(pp+"_PORT", strconv.Itoa(int(p.Port)))
			env.set(pp+"_ADDR", ip)
		}
	}
	return env, nil
}

// expandVars expands $(VAR) references in s as Kubernetes does for env
// values, command and args: a defined name is replaced by its value, an
// undefined one is left as written, "$$" is a literal "$" (so "$$(X)" stays
// "$(X)"), and any other "$" is kept.
func expandVars(s string, lookup func(string) (string, bool)) string {
	if !strings.Contains(s, "$") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch next := s[i+1]; next {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(s[i+2:], ')')
			if end < 0 {
				// Unterminated: keep "$(" and go on after it.
				b.WriteString("$(")
				i++
				continue
			}
			name := s[i+2 : i+2+end]
			if v, ok := lookup(name); ok {
				b.WriteString(v)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			b.WriteByte('$')
			b.WriteByte(next)
			i++
		}
	}
	return b.String()
}

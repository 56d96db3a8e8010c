package api

import (
	"fmt"
	"reflect"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apivalidation "k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

// Validation as kube-apiserver does it for the fields Flotilla serves.
// Metadata (names, labels, annotations, finalizers, owner references) is
// validated generically with k8s.io/apimachinery's ObjectMeta validation;
// these functions check the rest. A field Flotilla cannot honour is
// rejected with a Forbidden error that says so, never silently ignored.

const notSupported = "not supported by Flotilla"

func unsupported(path *field.Path, what string) *field.Error {
	return field.Forbidden(path, what+" is "+notSupported)
}

// maxConfigSize bounds the data of a ConfigMap or Secret (kube's 1 MiB).
const maxConfigSize = 1 << 20

var (
	supportedProtocols  = sets.New(string(corev1.ProtocolTCP), string(corev1.ProtocolUDP), string(corev1.ProtocolSCTP))
	restartPolicies     = sets.New(string(corev1.RestartPolicyAlways), string(corev1.RestartPolicyOnFailure), string(corev1.RestartPolicyNever))
	dnsPolicies         = sets.New(string(corev1.DNSClusterFirst), string(corev1.DNSClusterFirstWithHostNet), string(corev1.DNSDefault), string(corev1.DNSNone))
	pullPolicies        = sets.New(string(corev1.PullAlways), string(corev1.PullIfNotPresent), string(corev1.PullNever))
	terminationPolicies = sets.New(string(corev1.TerminationMessageReadFile), string(corev1.TerminationMessageFallbackToLogsOnError))
	taintEffects        = sets.New(string(corev1.TaintEffectNoSchedule), string(corev1.TaintEffectPreferNoSchedule), string(corev1.TaintEffectNoExecute))
	serviceTypes        = sets.New(string(corev1.ServiceTypeClusterIP), string(corev1.ServiceTypeNodePort), string(corev1.ServiceTypeLoadBalancer), string(corev1.ServiceTypeExternalName))
	// supportedVolumes are the volume sources the agent can provide.
	supportedVolumes = sets.New("emptyDir", "configMap", "secret", "hostPath", "projected", "downwardAPI")
	// supportedProjections are the projected sources the agent can provide
	// (serviceAccountToken through TokenRequest, api/tokenrequest.go).
	supportedProjections = sets.New("configMap", "secret", "downwardAPI", "serviceAccountToken")
)

func validateNamespace(o object) field.ErrorList {
	ns := o.(*corev1.Namespace)
	var errs field.ErrorList
	for i, f := range ns.Spec.Finalizers {
		errs = append(errs, apivalidation.ValidateFinalizerName(string(f), field.NewPath("spec", "finalizers").Index(i))...)
	}
	return errs
}

func validateNamespaceUpdate(o, old object) field.ErrorList { return nil }

func validateNode(o object) field.ErrorList {
	n := o.(*corev1.Node)
	var errs field.ErrorList
	spec := field.NewPath("spec")
	if n.Spec.PodCIDR != "" {
		errs = append(errs, validation.IsValidCIDR(spec.Child("podCIDR"), n.Spec.PodCIDR)...)
	}
	for i, c := range n.Spec.PodCIDRs {
		errs = append(errs, validation.IsValidCIDR(spec.Child("podCIDRs").Index(i), c)...)
	}
	if len(n.Spec.PodCIDRs) > 0 && n.Spec.PodCIDR != "" && n.Spec.PodCIDRs[0] != n.Spec.PodCIDR {
		errs = append(errs, field.Invalid(spec.Child("podCIDRs"), n.Spec.PodCIDRs, "the first entry must match spec.podCIDR"))
	}
	errs = append(errs, validateTaints(n.Spec.Taints, spec.Child("taints"))...)
	return errs
}

func validateNodeUpdate(o, old object) field.ErrorList {
	n, on := o.(*corev1.Node), old.(*corev1.Node)
	var errs field.ErrorList
	if on.Spec.PodCIDR != "" && n.Spec.PodCIDR != on.Spec.PodCIDR {
		errs = append(errs, field.Forbidden(field.NewPath("spec", "podCIDR"), "node updates may not change podCIDR except from \"\" to valid"))
	}
	return errs
}

func validateTaints(taints []corev1.Taint, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	seen := map[string]bool{}
	for i, t := range taints {
		p := path.Index(i)
		errs = append(errs, metav1validation.ValidateLabelName(t.Key, p.Child("key"))...)
		if t.Value != "" {
			for _, msg := range validation.IsValidLabelValue(t.Value) {
				errs = append(errs, field.Invalid(p.Child("value"), t.Value, msg))
			}
		}
		if !taintEffects.Has(string(t.Effect)) {
			errs = append(errs, field.NotSupported(p.Child("effect"), t.Effect, sets.List(taintEffects)))
		}
		k := t.Key + "/" + string(t.Effect)
		if seen[k] {
			errs = append(errs, field.Duplicate(p, t.Key))
		}
		seen[k] = true
	}
	return errs
}

func validatePod(o object) field.ErrorList {
	p := o.(*corev1.Pod)
	return validatePodSpec(&p.Spec, field.NewPath("spec"))
}

// validatePodSpec checks a pod spec (of a pod or a template).
func validatePodSpec(s *corev1.PodSpec, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	volumes, verrs := validateVolumes(s.Volumes, path.Child("volumes"))
	errs = append(errs, verrs...)
	if len(s.Containers) == 0 {
		errs = append(errs, field.Required(path.Child("containers"), ""))
	}
	names := sets.New[string]()
	for i := range s.InitContainers {
		errs = append(errs, validateContainer(&s.InitContainers[i], path.Child("initContainers").Index(i), names, volumes)...)
	}
	for i := range s.Containers {
		errs = append(errs, validateContainer(&s.Containers[i], path.Child("containers").Index(i), names, volumes)...)
	}
	if len(s.EphemeralContainers) > 0 {
		errs = append(errs, unsupported(path.Child("ephemeralContainers"), "ephemeral containers"))
	}
	if len(s.ResourceClaims) > 0 {
		errs = append(errs, unsupported(path.Child("resourceClaims"), "dynamic resource allocation"))
	}
	errs = append(errs, validatePodRuntime(s, path)...)
	if !restartPolicies.Has(string(s.RestartPolicy)) {
		errs = append(errs, field.NotSupported(path.Child("restartPolicy"), s.RestartPolicy, sets.List(restartPolicies)))
	}
	if !dnsPolicies.Has(string(s.DNSPolicy)) {
		errs = append(errs, field.NotSupported(path.Child("dnsPolicy"), s.DNSPolicy, sets.List(dnsPolicies)))
	}
	if s.DNSPolicy == corev1.DNSNone && (s.DNSConfig == nil || len(s.DNSConfig.Nameservers) == 0) {
		errs = append(errs, field.Required(path.Child("dnsConfig", "nameservers"), "must provide at least one DNS nameserver when DNSPolicy is set to None"))
	}
	if s.TerminationGracePeriodSeconds != nil && *s.TerminationGracePeriodSeconds < 0 {
		errs = append(errs, field.Invalid(path.Child("terminationGracePeriodSeconds"), *s.TerminationGracePeriodSeconds, "must be greater than or equal to 0"))
	}
	if s.ActiveDeadlineSeconds != nil && *s.ActiveDeadlineSeconds <= 0 {
		errs = append(errs, field.Invalid(path.Child("activeDeadlineSeconds"), *s.ActiveDeadlineSeconds, "must be between 1 and 2147483647, inclusive"))
	}
	if s.Hostname != "" {
		for _, msg := range validation.IsDNS1123Label(s.Hostname) {
			errs = append(errs, field.Invalid(path.Child("hostname"), s.Hostname, msg))
		}
	}
	if s.Subdomain != "" {
		for _, msg := range validation.IsDNS1123Label(s.Subdomain) {
			errs = append(errs, field.Invalid(path.Child("subdomain"), s.Subdomain, msg))
		}
	}
	if s.NodeName != "" {
		for _, msg := range validation.IsDNS1123Subdomain(s.NodeName) {
			errs = append(errs, field.Invalid(path.Child("nodeName"), s.NodeName, msg))
		}
	}
	if s.ServiceAccountName != "" {
		for _, msg := range validation.IsDNS1123Subdomain(s.ServiceAccountName) {
			errs = append(errs, field.Invalid(path.Child("serviceAccountName"), s.ServiceAccountName, msg))
		}
	}
	errs = append(errs, metav1validation.ValidateLabels(s.NodeSelector, path.Child("nodeSelector"))...)
	for i, t := range s.Tolerations {
		p := path.Child("tolerations").Index(i)
		if t.Key != "" {
			errs = append(errs, metav1validation.ValidateLabelName(t.Key, p.Child("key"))...)
		}
		switch t.Operator {
		case corev1.TolerationOpEqual, "":
		case corev1.TolerationOpExists:
			if t.Value != "" {
				errs = append(errs, field.Invalid(p.Child("operator"), t.Value, "value must be empty when `operator` is 'Exists'"))
			}
		default:
			errs = append(errs, field.NotSupported(p.Child("operator"), t.Operator, []string{"Equal", "Exists"}))
		}
		if t.Key == "" && t.Operator != corev1.TolerationOpExists {
			errs = append(errs, field.Invalid(p.Child("operator"), t.Operator, "operator must be Exists when `key` is empty, which means \"match all values and all keys\""))
		}
		if t.Effect != "" && !taintEffects.Has(string(t.Effect)) {
			errs = append(errs, field.NotSupported(p.Child("effect"), t.Effect, sets.List(taintEffects)))
		}
	}
	return errs
}

// volumeSourceNames lists the json names of the sources a volume sets.
func volumeSourceNames(src any) []string {
	var out []string
	v := reflect.ValueOf(src)
	t := v.Type()
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		if f.Kind() == reflect.Pointer && !f.IsNil() {
			name := strings.Split(t.Field(i).Tag.Get("json"), ",")[0]
			out = append(out, name)
		}
	}
	return out
}

// uniqueLabel checks a name that must be a DNS label and unique among its
// siblings (volumes, containers, ports), and records it in seen.
func uniqueLabel(name string, p *field.Path, seen sets.Set[string]) field.ErrorList {
	var errs field.ErrorList
	for _, msg := range validation.IsDNS1123Label(name) {
		errs = append(errs, field.Invalid(p, name, msg))
	}
	if seen.Has(name) {
		errs = append(errs, field.Duplicate(p, name))
	}
	seen.Insert(name)
	return errs
}

func validateVolumes(vols []corev1.Volume, path *field.Path) (sets.Set[string], field.ErrorList) {
	var errs field.ErrorList
	names := sets.New[string]()
	for i, v := range vols {
		p := path.Index(i)
		if v.Name == "" {
			errs = append(errs, field.Required(p.Child("name"), ""))
		} else {
			errs = append(errs, uniqueLabel(v.Name, p.Child("name"), names)...)
		}
		srcs := volumeSourceNames(v.VolumeSource)
		switch {
		case len(srcs) == 0:
			errs = append(errs, field.Required(p, "must specify a volume type"))
		case len(srcs) > 1:
			errs = append(errs, field.Forbidden(p.Child(srcs[1]), "may not specify more than 1 volume type"))
		case !supportedVolumes.Has(srcs[0]):
			errs = append(errs, unsupported(p.Child(srcs[0]), "volume type "+srcs[0]))
		}
		switch {
		case v.ConfigMap != nil && v.ConfigMap.Name == "":
			errs = append(errs, field.Required(p.Child("configMap", "name"), ""))
		case v.Secret != nil && v.Secret.SecretName == "":
			errs = append(errs, field.Required(p.Child("secret", "secretName"), ""))
		case v.HostPath != nil && v.HostPath.Path == "":
			errs = append(errs, field.Required(p.Child("hostPath", "path"), ""))
		case v.EmptyDir != nil && v.EmptyDir.Medium != "" && v.EmptyDir.Medium != corev1.StorageMediumMemory:
			errs = append(errs, unsupported(p.Child("emptyDir", "medium"), "medium "+string(v.EmptyDir.Medium)))
		}
		if v.Projected != nil {
			for j, s := range v.Projected.Sources {
				pp := p.Child("projected", "sources").Index(j)
				ss := volumeSourceNames(s)
				if len(ss) != 1 {
					errs = append(errs, field.Forbidden(pp, "may not specify more or less than 1 projection type"))
					continue
				}
				if !supportedProjections.Has(ss[0]) {
					errs = append(errs, unsupported(pp.Child(ss[0]), "projection "+ss[0]))
				}
				if t := s.ServiceAccountToken; t != nil {
					if t.Path == "" {
						errs = append(errs, field.Required(pp.Child("serviceAccountToken", "path"), ""))
					}
					if t.ExpirationSeconds != nil && *t.ExpirationSeconds < 600 {
						errs = append(errs, field.Invalid(pp.Child("serviceAccountToken", "expirationSeconds"), *t.ExpirationSeconds, "may not specify a duration less than 10 minutes"))
					}
					if t.ExpirationSeconds != nil && *t.ExpirationSeconds > 1<<32 {
						errs = append(errs, field.Invalid(pp.Child("serviceAccountToken", "expirationSeconds"), *t.ExpirationSeconds, "may not specify a duration larger than 2^32 seconds"))
					}
				}
			}
		}
	}
	return names, errs
}

func validateContainer(c *corev1.Container, p *field.Path, names sets.Set[string], volumes sets.Set[string]) field.ErrorList {
	var errs field.ErrorList
	if c.Name == "" {
		errs = append(errs, field.Required(p.Child("name"), ""))
	} else {
		errs = append(errs, uniqueLabel(c.Name, p.Child("name"), names)...)
	}
	if strings.TrimSpace(c.Image) == "" {
		errs = append(errs, field.Required(p.Child("image"), ""))
	} else if c.Image != strings.TrimSpace(c.Image) {
		errs = append(errs, field.Invalid(p.Child("image"), c.Image, "must not have leading or trailing whitespace"))
	}
	if !pullPolicies.Has(string(c.ImagePullPolicy)) {
		errs = append(errs, field.NotSupported(p.Child("imagePullPolicy"), c.ImagePullPolicy, sets.List(pullPolicies)))
	}
	if !terminationPolicies.Has(string(c.TerminationMessagePolicy)) {
		errs = append(errs, field.NotSupported(p.Child("terminationMessagePolicy"), c.TerminationMessagePolicy, sets.List(terminationPolicies)))
	}
	portNames := sets.New[string]()
	for i, port := range c.Ports {
		pp := p.Child("ports").Index(i)
		for _, msg := range validation.IsValidPortNum(int(port.ContainerPort)) {
			errs = append(errs, field.Invalid(pp.Child("containerPort"), port.ContainerPort, msg))
		}
		if port.HostPort != 0 {
			for _, msg := range validation.IsValidPortNum(int(port.HostPort)) {
				errs = append(errs, field.Invalid(pp.Child("hostPort"), port.HostPort, msg))
			}
		}
		if !supportedProtocols.Has(string(port.Protocol)) {
			errs = append(errs, field.NotSupported(pp.Child("protocol"), port.Protocol, sets.List(supportedProtocols)))
		}
		if port.Name != "" {
			for _, msg := range validation.IsValidPortName(port.Name) {
				errs = append(errs, field.Invalid(pp.Child("name"), port.Name, msg))
			}
			if portNames.Has(port.Name) {
				errs = append(errs, field.Duplicate(pp.Child("name"), port.Name))
			}
			portNames.Insert(port.Name)
		}
	}
	for i, e := range c.Env {
		ep := p.Child("env").Index(i)
		if e.Name == "" {
			errs = append(errs, field.Required(ep.Child("name"), ""))
		} else {
			for _, msg := range validation.IsRelaxedEnvVarName(e.Name) {
				errs = append(errs, field.Invalid(ep.Child("name"), e.Name, msg))
			}
		}
		if e.ValueFrom != nil {
			n := len(volumeSourceNames(*e.ValueFrom))
			if n != 1 {
				errs = append(errs, field.Invalid(ep.Child("valueFrom"), "", "may not have more than one field specified at a time"))
			}
			if e.Value != "" {
				errs = append(errs, field.Invalid(ep.Child("valueFrom"), "", "may not be specified when `value` is not empty"))
			}
		}
	}
	mounts := sets.New[string]()
	for i, m := range c.VolumeMounts {
		mp := p.Child("volumeMounts").Index(i)
		if m.Name == "" {
			errs = append(errs, field.Required(mp.Child("name"), ""))
		} else if !volumes.Has(m.Name) {
			errs = append(errs, field.NotFound(mp.Child("name"), m.Name))
		}
		if m.MountPath == "" {
			errs = append(errs, field.Required(mp.Child("mountPath"), ""))
		} else if mounts.Has(m.MountPath) {
			errs = append(errs, field.Invalid(mp.Child("mountPath"), m.MountPath, "must be unique"))
		}
		mounts.Insert(m.MountPath)
	}
	if len(c.VolumeDevices) > 0 {
		errs = append(errs, unsupported(p.Child("volumeDevices"), "block volume devices"))
	}
	errs = append(errs, validateResources(&c.Resources, p.Child("resources"))...)
	for name, pr := range map[string]*corev1.Probe{"livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe, "startupProbe": c.StartupProbe} {
		if pr == nil {
			continue
		}
		if n := len(volumeSourceNames(pr.ProbeHandler)); n != 1 {
			errs = append(errs, field.Required(p.Child(name), "must specify exactly one handler type"))
		}
		if pr.GRPC != nil {
			errs = append(errs, unsupported(p.Child(name, "grpc"), "a gRPC probe"))
		}
	}
	errs = append(errs, validateLifecycle(c.Lifecycle, p.Child("lifecycle"))...)
	if sc := c.SecurityContext; sc != nil && sc.WindowsOptions != nil {
		errs = append(errs, unsupported(p.Child("securityContext", "windowsOptions"), "windowsOptions (Flotilla runs Linux containers)"))
	}
	for i, m := range c.VolumeMounts {
		if m.MountPropagation != nil && *m.MountPropagation != corev1.MountPropagationNone {
			errs = append(errs, unsupported(p.Child("volumeMounts").Index(i).Child("mountPropagation"), "mount propagation "+string(*m.MountPropagation)))
		}
	}
	return errs
}

// validateLifecycle: the agent runs exec hooks only. An httpGet, tcpSocket
// or sleep hook, or a stop signal other than the image's, would be
// skipped, so it is refused.
func validateLifecycle(l *corev1.Lifecycle, p *field.Path) field.ErrorList {
	if l == nil {
		return nil
	}
	var errs field.ErrorList
	for name, h := range map[string]*corev1.LifecycleHandler{"postStart": l.PostStart, "preStop": l.PreStop} {
		if h == nil {
			continue
		}
		hp := p.Child(name)
		kinds := volumeSourceNames(*h)
		if len(kinds) != 1 {
			errs = append(errs, field.Required(hp, "must specify exactly one handler type"))
		}
		for _, k := range kinds {
			if k != "exec" {
				errs = append(errs, unsupported(hp.Child(k), "a "+k+" lifecycle hook (only exec hooks are run)"))
			}
		}
		if h.Exec != nil && len(h.Exec.Command) == 0 {
			errs = append(errs, field.Required(hp.Child("exec", "command"), ""))
		}
	}
	if l.StopSignal != nil {
		errs = append(errs, unsupported(p.Child("stopSignal"), "a stop signal (the image's is used)"))
	}
	return errs
}

// validatePodRuntime refuses pod-level features the agent's runtime does
// not provide, rather than running the pod without them.
func validatePodRuntime(s *corev1.PodSpec, path *field.Path) field.ErrorList {
	var errs field.ErrorList
	if s.OS != nil && s.OS.Name != corev1.Linux {
		errs = append(errs, unsupported(path.Child("os", "name"), "OS "+string(s.OS.Name)+" (Flotilla runs Linux containers)"))
	}
	if s.HostPID {
		errs = append(errs, unsupported(path.Child("hostPID"), "sharing the node's PID namespace"))
	}
	if s.HostIPC {
		errs = append(errs, unsupported(path.Child("hostIPC"), "sharing the node's IPC namespace"))
	}
	if s.ShareProcessNamespace != nil && *s.ShareProcessNamespace {
		errs = append(errs, unsupported(path.Child("shareProcessNamespace"), "a shared process namespace"))
	}
	if s.HostUsers != nil && !*s.HostUsers {
		errs = append(errs, unsupported(path.Child("hostUsers"), "user namespaces"))
	}
	if sc := s.SecurityContext; sc != nil {
		if sc.WindowsOptions != nil {
			errs = append(errs, unsupported(path.Child("securityContext", "windowsOptions"), "windowsOptions (Flotilla runs Linux containers)"))
		}
		if len(sc.Sysctls) > 0 {
			errs = append(errs, unsupported(path.Child("securityContext", "sysctls"), "setting sysctls"))
		}
	}
	return errs
}

func validateResources(r *corev1.ResourceRequirements, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	check := func(list corev1.ResourceList, lp *field.Path) {
		for name, q := range list {
			if q.Sign() < 0 {
				errs = append(errs, field.Invalid(lp.Key(string(name)), q.String(), "must be greater than or equal to 0"))
			}
		}
	}
	check(r.Limits, p.Child("limits"))
	check(r.Requests, p.Child("requests"))
	for name, req := range r.Requests {
		if lim, ok := r.Limits[name]; ok && req.Cmp(lim) > 0 {
			errs = append(errs, field.Invalid(p.Child("requests").Key(string(name)), req.String(), fmt.Sprintf("must be less than or equal to %s limit of %s", name, lim.String())))
		}
	}
	if len(r.Claims) > 0 {
		errs = append(errs, unsupported(p.Child("claims"), "resource claims"))
	}
	return errs
}

// validatePodUpdate: a pod's spec is immutable except container images,
// activeDeadlineSeconds (set, or lowered) and added tolerations.
func validatePodUpdate(o, old object) field.ErrorList {
	p, op := o.(*corev1.Pod), old.(*corev1.Pod)
	path := field.NewPath("spec")
	var errs field.ErrorList
	if len(p.Spec.Containers) != len(op.Spec.Containers) || len(p.Spec.InitContainers) != len(op.Spec.InitContainers) {
		return field.ErrorList{field.Forbidden(path, "pod updates may not add or remove containers")}
	}
	m := p.Spec.DeepCopy()
	for i := range m.Containers {
		m.Containers[i].Image = op.Spec.Containers[i].Image
	}
	for i := range m.InitContainers {
		m.InitContainers[i].Image = op.Spec.InitContainers[i].Image
	}
	if a, b := p.Spec.ActiveDeadlineSeconds, op.Spec.ActiveDeadlineSeconds; a != nil && (b == nil || *a <= *b) {
		m.ActiveDeadlineSeconds = b
	} else if a == nil && b != nil {
		errs = append(errs, field.Invalid(path.Child("activeDeadlineSeconds"), nil, "must not update from a positive integer to nil value"))
	}
	if tolerationsAdded(p.Spec.Tolerations, op.Spec.Tolerations) {
		m.Tolerations = op.Spec.Tolerations
	}
	if !equality.Semantic.DeepEqual(*m, op.Spec) {
		errs = append(errs, field.Forbidden(path, "pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds` or `spec.tolerations` (only additions to existing tolerations)"))
	}
	return errs
}

// tolerationsAdded: next keeps every toleration of old (and may add more).
func tolerationsAdded(next, old []corev1.Toleration) bool {
	for _, o := range old {
		found := false
		for _, n := range next {
			if equality.Semantic.DeepEqual(n, o) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func validateService(o object) field.ErrorList {
	s := o.(*corev1.Service)
	spec := field.NewPath("spec")
	var errs field.ErrorList
	if !serviceTypes.Has(string(s.Spec.Type)) {
		errs = append(errs, field.NotSupported(spec.Child("type"), s.Spec.Type, sets.List(serviceTypes)))
	}
	if s.Spec.Type == corev1.ServiceTypeExternalName {
		if s.Spec.ExternalName == "" {
			errs = append(errs, field.Required(spec.Child("externalName"), ""))
		} else {
			for _, msg := range validation.IsDNS1123Subdomain(strings.TrimSuffix(s.Spec.ExternalName, ".")) {
				errs = append(errs, field.Invalid(spec.Child("externalName"), s.Spec.ExternalName, msg))
			}
		}
		if s.Spec.ClusterIP != "" {
			errs = append(errs, field.Forbidden(spec.Child("clusterIP"), "may not be set for ExternalName services"))
		}
	}
	headless := s.Spec.ClusterIP == corev1.ClusterIPNone
	if s.Spec.ClusterIP != "" && !headless {
		if len(validation.IsValidIP(spec.Child("clusterIP"), s.Spec.ClusterIP)) > 0 {
			errs = append(errs, field.Invalid(spec.Child("clusterIPs").Index(0), s.Spec.ClusterIP, "must be empty, 'None', or a valid IP address"))
		}
	}
	if len(s.Spec.ClusterIPs) > 1 {
		errs = append(errs, unsupported(spec.Child("clusterIPs"), "dual-stack (more than one cluster IP)"))
	}
	if len(s.Spec.ClusterIPs) > 0 && s.Spec.ClusterIPs[0] != s.Spec.ClusterIP {
		errs = append(errs, field.Invalid(spec.Child("clusterIPs").Index(0), s.Spec.ClusterIPs[0], "must match `clusterIP` when it is set"))
	}
	for i, f := range s.Spec.IPFamilies {
		if f != corev1.IPv4Protocol {
			errs = append(errs, unsupported(spec.Child("ipFamilies").Index(i), "IP family "+string(f)))
		}
	}
	if p := s.Spec.IPFamilyPolicy; p != nil && *p == corev1.IPFamilyPolicyRequireDualStack {
		errs = append(errs, unsupported(spec.Child("ipFamilyPolicy"), "RequireDualStack"))
	}
	if len(s.Spec.Ports) == 0 && !headless && s.Spec.Type != corev1.ServiceTypeExternalName {
		errs = append(errs, field.Required(spec.Child("ports"), ""))
	}
	names := sets.New[string]()
	seen := sets.New[string]()
	for i, p := range s.Spec.Ports {
		pp := spec.Child("ports").Index(i)
		if len(s.Spec.Ports) > 1 && p.Name == "" {
			errs = append(errs, field.Required(pp.Child("name"), ""))
		}
		if p.Name != "" {
			errs = append(errs, uniqueLabel(p.Name, pp.Child("name"), names)...)
		}
		for _, msg := range validation.IsValidPortNum(int(p.Port)) {
			errs = append(errs, field.Invalid(pp.Child("port"), p.Port, msg))
		}
		if !supportedProtocols.Has(string(p.Protocol)) {
			errs = append(errs, field.NotSupported(pp.Child("protocol"), p.Protocol, sets.List(supportedProtocols)))
		}
		key := fmt.Sprintf("%s/%d", p.Protocol, p.Port)
		if seen.Has(key) {
			errs = append(errs, field.Duplicate(pp, key))
		}
		seen.Insert(key)
		errs = append(errs, validateTargetPort(p.TargetPort, pp.Child("targetPort"))...)
		if p.NodePort != 0 && s.Spec.Type != corev1.ServiceTypeNodePort && s.Spec.Type != corev1.ServiceTypeLoadBalancer {
			errs = append(errs, field.Forbidden(pp.Child("nodePort"), fmt.Sprintf("may not be used when `type` is '%s'", s.Spec.Type)))
		}
	}
	errs = append(errs, metav1validation.ValidateLabels(s.Spec.Selector, spec.Child("selector"))...)
	switch s.Spec.SessionAffinity {
	case corev1.ServiceAffinityNone, corev1.ServiceAffinityClientIP:
	default:
		errs = append(errs, field.NotSupported(spec.Child("sessionAffinity"), s.Spec.SessionAffinity, []string{"ClientIP", "None"}))
	}
	switch s.Spec.ExternalTrafficPolicy {
	case "", corev1.ServiceExternalTrafficPolicyCluster, corev1.ServiceExternalTrafficPolicyLocal:
	default:
		errs = append(errs, field.NotSupported(spec.Child("externalTrafficPolicy"), s.Spec.ExternalTrafficPolicy, []string{"Cluster", "Local"}))
	}
	if p := s.Spec.InternalTrafficPolicy; p != nil && *p != corev1.ServiceInternalTrafficPolicyCluster && *p != corev1.ServiceInternalTrafficPolicyLocal {
		errs = append(errs, field.NotSupported(spec.Child("internalTrafficPolicy"), *p, []string{"Cluster", "Local"}))
	}
	for i, ip := range s.Spec.ExternalIPs {
		errs = append(errs, validation.IsValidIP(spec.Child("externalIPs").Index(i), ip)...)
	}
	return errs
}

func validateTargetPort(tp intstr.IntOrString, p *field.Path) field.ErrorList {
	var errs field.ErrorList
	if tp.Type == intstr.String {
		for _, msg := range validation.IsValidPortName(tp.StrVal) {
			errs = append(errs, field.Invalid(p, tp.StrVal, msg))
		}
		return errs
	}
	for _, msg := range validation.IsValidPortNum(int(tp.IntVal)) {
		errs = append(errs, field.Invalid(p, tp.IntVal, msg))
	}
	return errs
}

// validateServiceUpdate: the ClusterIP may not change once set (moving to
// or from ExternalName excepted).
func validateServiceUpdate(o, old object) field.ErrorList {
	s, os := o.(*corev1.Service), old.(*corev1.Service)
	if s.Spec.Type == corev1.ServiceTypeExternalName || os.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	if s.Spec.ClusterIP != os.Spec.ClusterIP {
		return field.ErrorList{field.Invalid(field.NewPath("spec", "clusterIPs").Index(0), s.Spec.ClusterIPs, "may not change once set")}
	}
	return nil
}

func validateEndpoints(o object) field.ErrorList {
	e := o.(*corev1.Endpoints)
	var errs field.ErrorList
	for i, ss := range e.Subsets {
		sp := field.NewPath("subsets").Index(i)
		for j, a := range append(append([]corev1.EndpointAddress{}, ss.Addresses...), ss.NotReadyAddresses...) {
			errs = append(errs, validation.IsValidIP(sp.Child("addresses").Index(j).Child("ip"), a.IP)...)
		}
		for j, p := range ss.Ports {
			pp := sp.Child("ports").Index(j)
			if len(ss.Ports) > 1 && p.Name == "" {
				errs = append(errs, field.Required(pp.Child("name"), ""))
			}
			if p.Name != "" {
				for _, msg := range validation.IsDNS1123Label(p.Name) {
					errs = append(errs, field.Invalid(pp.Child("name"), p.Name, msg))
				}
			}
			for _, msg := range validation.IsValidPortNum(int(p.Port)) {
				errs = append(errs, field.Invalid(pp.Child("port"), p.Port, msg))
			}
			if !supportedProtocols.Has(string(p.Protocol)) {
				errs = append(errs, field.NotSupported(pp.Child("protocol"), p.Protocol, sets.List(supportedProtocols)))
			}
		}
	}
	return errs
}

func validateConfigData(data map[string]string, binary map[string][]byte) field.ErrorList {
	var errs field.ErrorList
	size := 0
	for k, v := range data {
		for _, msg := range validation.IsConfigMapKey(k) {
			errs = append(errs, field.Invalid(field.NewPath("data").Key(k), k, msg))
		}
		size += len(k) + len(v)
	}
	for k, v := range binary {
		for _, msg := range validation.IsConfigMapKey(k) {
			errs = append(errs, field.Invalid(field.NewPath("binaryData").Key(k), k, msg))
		}
		if _, dup := data[k]; dup {
			errs = append(errs, field.Invalid(field.NewPath("binaryData").Key(k), k, "duplicate of key present in data"))
		}
		size += len(k) + len(v)
	}
	if size > maxConfigSize {
		errs = append(errs, field.TooLong(field.NewPath(""), "", maxConfigSize))
	}
	return errs
}

func validateConfigMap(o object) field.ErrorList {
	c := o.(*corev1.ConfigMap)
	return validateConfigData(c.Data, c.BinaryData)
}

func validateConfigMapUpdate(o, old object) field.ErrorList {
	c, oc := o.(*corev1.ConfigMap), old.(*corev1.ConfigMap)
	if oc.Immutable != nil && *oc.Immutable {
		var errs field.ErrorList
		if c.Immutable == nil || !*c.Immutable {
			errs = append(errs, field.Forbidden(field.NewPath("immutable"), "field is immutable when `immutable` is set"))
		}
		if !equality.Semantic.DeepEqual(c.Data, oc.Data) || !equality.Semantic.DeepEqual(c.BinaryData, oc.BinaryData) {
			errs = append(errs, field.Forbidden(field.NewPath("data"), "field is immutable when `immutable` is set"))
		}
		return errs
	}
	return nil
}

func validateSecret(o object) field.ErrorList {
	s := o.(*corev1.Secret)
	var errs field.ErrorList
	size := 0
	for k, v := range s.Data {
		for _, msg := range validation.IsConfigMapKey(k) {
			errs = append(errs, field.Invalid(field.NewPath("data").Key(k), k, msg))
		}
		size += len(v)
	}
	if size > maxConfigSize {
		errs = append(errs, field.TooLong(field.NewPath("data"), "", maxConfigSize))
	}
	need := func(key string) {
		if _, ok := s.Data[key]; !ok {
			errs = append(errs, field.Required(field.NewPath("data").Key(key), ""))
		}
	}
	switch s.Type {
	case corev1.SecretTypeTLS:
		need(corev1.TLSCertKey)
		need(corev1.TLSPrivateKeyKey)
	case corev1.SecretTypeDockerConfigJson:
		need(corev1.DockerConfigJsonKey)
	case corev1.SecretTypeDockercfg:
		need(corev1.DockerConfigKey)
	case corev1.SecretTypeServiceAccountToken:
		if s.Annotations[corev1.ServiceAccountNameKey] == "" {
			errs = append(errs, field.Required(field.NewPath("metadata", "annotations").Key(corev1.ServiceAccountNameKey), ""))
		}
	case corev1.SecretTypeBasicAuth, corev1.SecretTypeSSHAuth, corev1.SecretTypeBootstrapToken, corev1.SecretTypeOpaque:
	default:
		for _, msg := range validation.IsQualifiedName(string(s.Type)) {
			errs = append(errs, field.Invalid(field.NewPath("type"), s.Type, msg))
		}
	}
	return errs
}

func validateSecretUpdate(o, old object) field.ErrorList {
	s, os := o.(*corev1.Secret), old.(*corev1.Secret)
	var errs field.ErrorList
	errs = append(errs, apivalidation.ValidateImmutableField(s.Type, os.Type, field.NewPath("type"))...)
	if os.Immutable != nil && *os.Immutable {
		if s.Immutable == nil || !*s.Immutable {
			errs = append(errs, field.Forbidden(field.NewPath("immutable"), "field is immutable when `immutable` is set"))
		}
		if !equality.Semantic.DeepEqual(s.Data, os.Data) {
			errs = append(errs, field.Forbidden(field.NewPath("data"), "field is immutable when `immutable` is set"))
		}
	}
	return errs
}

func validateEvent(o object) field.ErrorList {
	e := o.(*corev1.Event)
	var errs field.ErrorList
	if e.InvolvedObject.Namespace != "" && e.InvolvedObject.Namespace != e.Namespace {
		errs = append(errs, field.Invalid(field.NewPath("involvedObject", "namespace"), e.InvolvedObject.Namespace, "does not match event.namespace"))
	}
	return errs
}

// validateTemplate checks a workload's selector and pod template.
func validateTemplate(sel *metav1.LabelSelector, tmpl *corev1.PodTemplateSpec, replicas *int32, spec *field.Path) field.ErrorList {
	var errs field.ErrorList
	if replicas != nil && *replicas < 0 {
		errs = append(errs, field.Invalid(spec.Child("replicas"), *replicas, "must be greater than or equal to 0"))
	}
	if sel == nil {
		errs = append(errs, field.Required(spec.Child("selector"), ""))
	} else {
		errs = append(errs, metav1validation.ValidateLabelSelector(sel, metav1validation.LabelSelectorValidationOptions{}, spec.Child("selector"))...)
		if len(sel.MatchLabels)+len(sel.MatchExpressions) == 0 {
			errs = append(errs, field.Invalid(spec.Child("selector"), sel, "empty selector is invalid for deployment"))
		}
	}
	tp := spec.Child("template")
	errs = append(errs, metav1validation.ValidateLabels(tmpl.Labels, tp.Child("metadata", "labels"))...)
	errs = append(errs, apivalidation.ValidateAnnotations(tmpl.Annotations, tp.Child("metadata", "annotations"))...)
	if sel != nil && len(errs) == 0 {
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err == nil && !s.Empty() && !s.Matches(labels.Set(tmpl.Labels)) {
			errs = append(errs, field.Invalid(tp.Child("metadata", "labels"), tmpl.Labels, "`selector` does not match template `labels`"))
		}
	}
	errs = append(errs, validatePodSpec(&tmpl.Spec, tp.Child("spec"))...)
	if tmpl.Spec.RestartPolicy != corev1.RestartPolicyAlways {
		errs = append(errs, field.NotSupported(tp.Child("spec", "restartPolicy"), tmpl.Spec.RestartPolicy, []string{string(corev1.RestartPolicyAlways)}))
	}
	if tmpl.Spec.ActiveDeadlineSeconds != nil {
		errs = append(errs, field.Forbidden(tp.Child("spec", "activeDeadlineSeconds"), "activeDeadlineSeconds in ReplicaSet is not Supported"))
	}
	return errs
}

func validateIntOrPercent(v *intstr.IntOrString, p *field.Path) field.ErrorList {
	if v == nil {
		return nil
	}
	if v.Type == intstr.String {
		if len(validation.IsValidPercent(v.StrVal)) > 0 {
			return field.ErrorList{field.Invalid(p, v.StrVal, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')")}
		}
		if n := percentValue(v.StrVal); n > 100 {
			return field.ErrorList{field.Invalid(p, v.StrVal, "must not be greater than 100%")}
		}
		return nil
	}
	if v.IntVal < 0 {
		return field.ErrorList{field.Invalid(p, v.IntVal, "must be greater than or equal to 0")}
	}
	return nil
}

func percentValue(s string) int {
	n := 0
	for _, c := range strings.TrimSuffix(s, "%") {
		n = n*10 + int(c-'0')
		if n > 1000 {
			return n
		}
	}
	return n
}

func isZeroIntOrPercent(v *intstr.IntOrString) bool {
	if v == nil {
		return true
	}
	if v.Type == intstr.String {
		return percentValue(v.StrVal) == 0
	}
	return v.IntVal == 0
}

func validateDeployment(o object) field.ErrorList {
	d := o.(*appsv1.Deployment)
	spec := field.NewPath("spec")
	errs := validateTemplate(d.Spec.Selector, &d.Spec.Template, d.Spec.Replicas, spec)
	st := d.Spec.Strategy
	switch st.Type {
	case appsv1.RecreateDeploymentStrategyType:
		if st.RollingUpdate != nil {
			errs = append(errs, field.Forbidden(spec.Child("strategy", "rollingUpdate"), "may not be specified when strategy `type` is 'Recreate'"))
		}
	case appsv1.RollingUpdateDeploymentStrategyType:
		if ru := st.RollingUpdate; ru != nil {
			rp := spec.Child("strategy", "rollingUpdate")
			errs = append(errs, validateIntOrPercent(ru.MaxUnavailable, rp.Child("maxUnavailable"))...)
			errs = append(errs, validateIntOrPercent(ru.MaxSurge, rp.Child("maxSurge"))...)
			if isZeroIntOrPercent(ru.MaxUnavailable) && isZeroIntOrPercent(ru.MaxSurge) {
				errs = append(errs, field.Invalid(rp.Child("maxUnavailable"), ru.MaxUnavailable, "may not be 0 when `maxSurge` is 0"))
			}
		}
	default:
		errs = append(errs, field.NotSupported(spec.Child("strategy", "type"), st.Type, []string{"Recreate", "RollingUpdate"}))
	}
	if d.Spec.RevisionHistoryLimit != nil && *d.Spec.RevisionHistoryLimit < 0 {
		errs = append(errs, field.Invalid(spec.Child("revisionHistoryLimit"), *d.Spec.RevisionHistoryLimit, "must be greater than or equal to 0"))
	}
	if d.Spec.MinReadySeconds < 0 {
		errs = append(errs, field.Invalid(spec.Child("minReadySeconds"), d.Spec.MinReadySeconds, "must be greater than or equal to 0"))
	}
	if p := d.Spec.ProgressDeadlineSeconds; p != nil && *p <= d.Spec.MinReadySeconds {
		errs = append(errs, field.Invalid(spec.Child("progressDeadlineSeconds"), *p, "must be greater than minReadySeconds"))
	}
	return errs
}

func validateDeploymentUpdate(o, old object) field.ErrorList {
	return apivalidation.ValidateImmutableField(o.(*appsv1.Deployment).Spec.Selector, old.(*appsv1.Deployment).Spec.Selector, field.NewPath("spec", "selector"))
}

func validateReplicaSet(o object) field.ErrorList {
	r := o.(*appsv1.ReplicaSet)
	spec := field.NewPath("spec")
	errs := validateTemplate(r.Spec.Selector, &r.Spec.Template, r.Spec.Replicas, spec)
	if r.Spec.MinReadySeconds < 0 {
		errs = append(errs, field.Invalid(spec.Child("minReadySeconds"), r.Spec.MinReadySeconds, "must be greater than or equal to 0"))
	}
	return errs
}

func validateReplicaSetUpdate(o, old object) field.ErrorList {
	return apivalidation.ValidateImmutableField(o.(*appsv1.ReplicaSet).Spec.Selector, old.(*appsv1.ReplicaSet).Spec.Selector, field.NewPath("spec", "selector"))
}

package api

import (
	"encoding/json"
	"fmt"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"
)

// Table output (Accept: application/json;as=Table;v=v1;g=meta.k8s.io), the
// form kubectl get asks for first: the columns kube-apiserver's printers
// show for the resources Flotilla serves (priority-1 columns are -o wide).

const tableMedia = "application/json;as=Table;v=v1;g=meta.k8s.io"

// wantsTable: the first entry of Accept that this server can serve is a v1 Table.
func wantsTable(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept"), ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		if params["as"] == "Table" {
			if mt == mediaJSON && params["g"] == "meta.k8s.io" && params["v"] == "v1" {
				return true
			}
			continue
		}
		if params["as"] == "" && (mt == mediaJSON || mt == mediaYAML || mt == mediaProtobuf || mt == "*/*") {
			return false
		}
	}
	return false
}

type column = metav1.TableColumnDefinition

func col(name, typ string, priority int32) column {
	c := column{Name: name, Type: typ, Priority: priority}
	if name == "Name" {
		c.Format = "name"
	}
	return c
}

// tableColumns and tableCells per kind; kinds not listed get Name and Age.
var tableColumns = map[string][]column{
	"Pod": {col("Name", "string", 0), col("Ready", "string", 0), col("Status", "string", 0), col("Restarts", "string", 0), col("Age", "string", 0),
		col("IP", "string", 1), col("Node", "string", 1), col("Nominated Node", "string", 1), col("Readiness Gates", "string", 1)},
	"Deployment": {col("Name", "string", 0), col("Ready", "string", 0), col("Up-to-date", "integer", 0), col("Available", "integer", 0), col("Age", "string", 0),
		col("Containers", "string", 1), col("Images", "string", 1), col("Selector", "string", 1)},
	"ReplicaSet": {col("Name", "string", 0), col("Desired", "integer", 0), col("Current", "integer", 0), col("Ready", "integer", 0), col("Age", "string", 0),
		col("Containers", "string", 1), col("Images", "string", 1), col("Selector", "string", 1)},
	"Service": {col("Name", "string", 0), col("Type", "string", 0), col("Cluster-IP", "string", 0), col("External-IP", "string", 0), col("Port(s)", "string", 0), col("Age", "string", 0),
		col("Selector", "string", 1)},
	"Node": {col("Name", "string", 0), col("Status", "string", 0), col("Roles", "string", 0), col("Age", "string", 0), col("Version", "string", 0),
		col("Internal-IP", "string", 1), col("External-IP", "string", 1), col("OS-Image", "string", 1), col("Kernel-Version", "string", 1), col("Container-Runtime", "string", 1)},
	"Namespace":      {col("Name", "string", 0), col("Status", "string", 0), col("Age", "string", 0)},
	"ConfigMap":      {col("Name", "string", 0), col("Data", "integer", 0), col("Age", "string", 0)},
	"Secret":         {col("Name", "string", 0), col("Type", "string", 0), col("Data", "integer", 0), col("Age", "string", 0)},
	"Endpoints":      {col("Name", "string", 0), col("Endpoints", "string", 0), col("Age", "string", 0)},
	"ServiceAccount": {col("Name", "string", 0), col("Secrets", "integer", 0), col("Age", "string", 0)},
	"Event": {col("Last Seen", "string", 0), col("Type", "string", 0), col("Reason", "string", 0), col("Object", "string", 0), col("Message", "string", 0),
		col("Source", "string", 1), col("First Seen", "string", 1), col("Count", "integer", 1), col("Name", "string", 1)},
	"Role":               roleColumns,
	"ClusterRole":        roleColumns,
	"RoleBinding":        bindingColumns,
	"ClusterRoleBinding": bindingColumns,
}

// Roles show their creation time, not an age, as kube's printer does.
var (
	roleColumns    = []column{col("Name", "string", 0), col("Created At", "date", 0)}
	bindingColumns = []column{col("Name", "string", 0), col("Role", "string", 0), col("Age", "string", 0),
		col("Users", "string", 1), col("Groups", "string", 1), col("ServiceAccounts", "string", 1)}
)

var defaultColumns = []column{col("Name", "string", 0), col("Age", "string", 0)}

func (s *Server) age(t metav1.Time) string {
	if t.IsZero() {
		return "<unknown>"
	}
	return duration.HumanDuration(s.cfg.Now().Sub(t.Time))
}

func orNone(s string) string {
	if s == "" {
		return "<none>"
	}
	return s
}

func containersAndImages(spec *corev1.PodSpec) (string, string) {
	var names, images []string
	for _, c := range spec.Containers {
		names = append(names, c.Name)
		images = append(images, c.Image)
	}
	return strings.Join(names, ","), strings.Join(images, ",")
}

func selectorString(sel *metav1.LabelSelector) string {
	if sel == nil {
		return "<none>"
	}
	s, err := metav1.LabelSelectorAsSelector(sel)
	if err != nil {
		return "<error>"
	}
	return orNone(s.String())
}

// cells is one row of obj's table.
func (s *Server) cells(obj object) []any {
	age := s.age(obj.GetCreationTimestamp())
	switch o := obj.(type) {
	case *corev1.Pod:
		ready, restarts, total := 0, int32(0), len(o.Spec.Containers)
		reason := string(o.Status.Phase)
		if o.Status.Reason != "" {
			reason = o.Status.Reason
		}
		for _, cs := range o.Status.ContainerStatuses {
			restarts += cs.RestartCount
			if cs.Ready {
				ready++
			}
			if w := cs.State.Waiting; w != nil && w.Reason != "" {
				reason = w.Reason
			} else if t := cs.State.Terminated; t != nil && t.Reason != "" {
				reason = t.Reason
			}
		}
		if o.DeletionTimestamp != nil {
			reason = "Terminating"
		}
		gates := "<none>"
		if n := len(o.Spec.ReadinessGates); n > 0 {
			gates = fmt.Sprintf("0/%d", n)
		}
		return []any{o.Name, fmt.Sprintf("%d/%d", ready, total), reason, strconv.Itoa(int(restarts)), age,
			orNone(o.Status.PodIP), orNone(o.Spec.NodeName), orNone(o.Status.NominatedNodeName), gates}
	case *appsv1.Deployment:
		cn, im := containersAndImages(&o.Spec.Template.Spec)
		return []any{o.Name, fmt.Sprintf("%d/%d", o.Status.ReadyReplicas, derefInt32(o.Spec.Replicas, 1)), int64(o.Status.UpdatedReplicas),
			int64(o.Status.AvailableReplicas), age, cn, im, selectorString(o.Spec.Selector)}
	case *appsv1.ReplicaSet:
		cn, im := containersAndImages(&o.Spec.Template.Spec)
		return []any{o.Name, int64(derefInt32(o.Spec.Replicas, 1)), int64(o.Status.Replicas), int64(o.Status.ReadyReplicas), age, cn, im, selectorString(o.Spec.Selector)}
	case *corev1.Service:
		var ports []string
		for _, p := range o.Spec.Ports {
			if p.NodePort != 0 {
				ports = append(ports, fmt.Sprintf("%d:%d/%s", p.Port, p.NodePort, p.Protocol))
			} else {
				ports = append(ports, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
			}
		}
		ext := "<none>"
		switch {
		case len(o.Spec.ExternalIPs) > 0:
			ext = strings.Join(o.Spec.ExternalIPs, ",")
		case o.Spec.Type == corev1.ServiceTypeExternalName:
			ext = o.Spec.ExternalName
		case o.Spec.Type == corev1.ServiceTypeLoadBalancer:
			ext = "<pending>"
		}
		sel := "<none>"
		if len(o.Spec.Selector) > 0 {
			var kv []string
			for _, k := range sortedKeys(o.Spec.Selector) {
				kv = append(kv, k+"="+o.Spec.Selector[k])
			}
			sel = strings.Join(kv, ",")
		}
		return []any{o.Name, string(o.Spec.Type), orNone(o.Spec.ClusterIP), ext, orNone(strings.Join(ports, ",")), age, sel}
	case *corev1.Node:
		status := "Unknown"
		for _, c := range o.Status.Conditions {
			if c.Type == corev1.NodeReady {
				status = map[corev1.ConditionStatus]string{corev1.ConditionTrue: "Ready", corev1.ConditionFalse: "NotReady"}[c.Status]
				if status == "" {
					status = "Unknown"
				}
			}
		}
		if o.Spec.Unschedulable {
			status += ",SchedulingDisabled"
		}
		var roles []string
		for k := range o.Labels {
			if r, ok := strings.CutPrefix(k, "node-role.kubernetes.io/"); ok && r != "" {
				roles = append(roles, r)
			}
		}
		sort.Strings(roles)
		addr := map[corev1.NodeAddressType]string{}
		for _, a := range o.Status.Addresses {
			if addr[a.Type] == "" {
				addr[a.Type] = a.Address
			}
		}
		ni := o.Status.NodeInfo
		return []any{o.Name, status, orNone(strings.Join(roles, ",")), age, orNone(ni.KubeletVersion),
			orNone(addr[corev1.NodeInternalIP]), orNone(addr[corev1.NodeExternalIP]), orNone(ni.OSImage), orNone(ni.KernelVersion), orNone(ni.ContainerRuntimeVersion)}
	case *corev1.Namespace:
		return []any{o.Name, string(o.Status.Phase), age}
	case *corev1.ConfigMap:
		return []any{o.Name, int64(len(o.Data) + len(o.BinaryData)), age}
	case *corev1.Secret:
		return []any{o.Name, string(o.Type), int64(len(o.Data)), age}
	case *corev1.Endpoints:
		var eps []string
		for _, ss := range o.Subsets {
			for _, a := range ss.Addresses {
				if len(ss.Ports) == 0 {
					eps = append(eps, a.IP)
				}
				for _, p := range ss.Ports {
					eps = append(eps, fmt.Sprintf("%s:%d", a.IP, p.Port))
				}
			}
		}
		if len(eps) > 3 {
			eps = append(eps[:3], fmt.Sprintf("+ %d more...", len(eps)-3))
		}
		return []any{o.Name, orNone(strings.Join(eps, ",")), age}
	case *corev1.ServiceAccount:
		return []any{o.Name, int64(len(o.Secrets)), age}
	case *corev1.Event:
		last := o.LastTimestamp
		if last.IsZero() {
			last = metav1.NewTime(o.EventTime.Time)
		}
		first := o.FirstTimestamp
		src := o.Source.Component
		if o.Source.Host != "" {
			src += ", " + o.Source.Host
		}
		objRef := strings.ToLower(o.InvolvedObject.Kind) + "/" + o.InvolvedObject.Name
		return []any{s.age(last), o.Type, o.Reason, objRef, strings.TrimSpace(o.Message), orNone(src), s.age(first), int64(o.Count), o.Name}
	case *rbacv1.Role:
		return []any{o.Name, o.CreationTimestamp.UTC().Format(time.RFC3339)}
	case *rbacv1.ClusterRole:
		return []any{o.Name, o.CreationTimestamp.UTC().Format(time.RFC3339)}
	case *rbacv1.RoleBinding:
		return append([]any{o.Name, o.RoleRef.Kind + "/" + o.RoleRef.Name, age}, subjectCells(o.Subjects)...)
	case *rbacv1.ClusterRoleBinding:
		return append([]any{o.Name, o.RoleRef.Kind + "/" + o.RoleRef.Name, age}, subjectCells(o.Subjects)...)
	}
	return []any{obj.GetName(), age}
}

// subjectCells are a binding's Users, Groups and ServiceAccounts
// (namespace/name) columns.
func subjectCells(subjects []rbacv1.Subject) []any {
	var users, groups, sas []string
	for _, sub := range subjects {
		switch sub.Kind {
		case rbacv1.UserKind:
			users = append(users, sub.Name)
		case rbacv1.GroupKind:
			groups = append(groups, sub.Name)
		case rbacv1.ServiceAccountKind:
			if sub.Namespace != "" {
				sas = append(sas, sub.Namespace+"/"+sub.Name)
			} else {
				sas = append(sas, sub.Name)
			}
		}
	}
	return []any{strings.Join(users, ", "), strings.Join(groups, ", "), strings.Join(sas, ", ")}
}

// table builds the Table of objs; includeObject is the TableOptions choice
// (None, Object, or the default PartialObjectMetadata).
func (s *Server) table(res *resource, objs []object, includeObject string, headers bool) *metav1.Table {
	t := &metav1.Table{TypeMeta: metav1.TypeMeta{APIVersion: "meta.k8s.io/v1", Kind: "Table"}}
	if headers {
		t.ColumnDefinitions = tableColumns[res.gvk.Kind]
		if t.ColumnDefinitions == nil {
			t.ColumnDefinitions = defaultColumns
		}
	}
	t.Rows = make([]metav1.TableRow, 0, len(objs))
	for _, o := range objs {
		row := metav1.TableRow{Cells: s.cells(o)}
		if tableColumns[res.gvk.Kind] == nil {
			row.Cells = []any{o.GetName(), s.age(o.GetCreationTimestamp())}
		}
		switch includeObject {
		case "None":
		case "Object":
			o.GetObjectKind().SetGroupVersionKind(res.gvk)
			row.Object = runtime.RawExtension{Object: o}
		default:
			pm := &metav1.PartialObjectMetadata{
				TypeMeta:   metav1.TypeMeta{APIVersion: "meta.k8s.io/v1", Kind: "PartialObjectMetadata"},
				ObjectMeta: *o.(interface{ GetObjectMeta() metav1.Object }).GetObjectMeta().(*metav1.ObjectMeta),
			}
			row.Object = runtime.RawExtension{Object: pm}
		}
		t.Rows = append(t.Rows, row)
	}
	return t
}

// writeTable sends a Table as JSON.
func (s *Server) writeTable(w http.ResponseWriter, t *metav1.Table) {
	body, err := encodeTable(t)
	if err != nil {
		s.writeStatus(w, mediaJSON, toStatus(err))
		return
	}
	w.Header().Set("Content-Type", tableMedia)
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func encodeTable(t *metav1.Table) ([]byte, error) {
	for i := range t.Rows {
		if o := t.Rows[i].Object.Object; o != nil {
			raw, err := encode(o, mediaJSON, o.GetObjectKind().GroupVersionKind().GroupVersion())
			if err != nil {
				return nil, err
			}
			t.Rows[i].Object = runtime.RawExtension{Raw: raw}
		}
	}
	return jsonMarshal(t)
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

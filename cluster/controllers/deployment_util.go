package controllers

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/rand"
)

// Annotations Kubernetes' deployment controller sets, read by kubectl
// rollout history/undo.
const (
	annRevision        = "deployment.kubernetes.io/revision"
	annRevisionHistory = "deployment.kubernetes.io/revision-history"
	annDesiredReplicas = "deployment.kubernetes.io/desired-replicas"
	annMaxReplicas     = "deployment.kubernetes.io/max-replicas"
	annRollbackTo      = "deprecated.deployment.rollback.to"
)

// Progressing condition reasons, as Kubernetes names them.
const (
	reasonRSUpdated      = "ReplicaSetUpdated"
	reasonRSCreateError  = "ReplicaSetCreateError"
	reasonNewRSCreated   = "NewReplicaSetCreated"
	reasonFoundNewRS     = "FoundNewReplicaSet"
	reasonNewRSAvailable = "NewReplicaSetAvailable"
	reasonTimedOut       = "ProgressDeadlineExceeded"
	reasonPaused         = "DeploymentPaused"
	reasonResumed        = "DeploymentResumed"
)

const mergePatch = types.MergePatchType

// templateHash names a pod template: FNV-32a over its JSON form (stable:
// encoding/json sorts map keys) and the collision count, encoded with
// apimachinery's safe alphabet as Kubernetes' pod-template-hash values are.
func templateHash(t *corev1.PodTemplateSpec, collisionCount *int32) string {
	h := fnv.New32a()
	data, _ := json.Marshal(t)
	h.Write(data)
	if collisionCount != nil {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(*collisionCount))
		h.Write(b[:])
	}
	return rand.SafeEncodeString(fmt.Sprint(h.Sum32()))
}

// equalIgnoreHash compares two templates without the pod-template-hash label.
func equalIgnoreHash(a, b *corev1.PodTemplateSpec) bool {
	ac, bc := a.DeepCopy(), b.DeepCopy()
	delete(ac.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
	delete(bc.Labels, appsv1.DefaultDeploymentUniqueLabelKey)
	if len(ac.Labels) == 0 {
		ac.Labels = nil
	}
	if len(bc.Labels) == 0 {
		bc.Labels = nil
	}
	return apiequality.Semantic.DeepEqual(ac, bc)
}

// findNewReplicaSet is the oldest ReplicaSet running the deployment's template.
func findNewReplicaSet(d *appsv1.Deployment, list []*appsv1.ReplicaSet) *appsv1.ReplicaSet {
	var found *appsv1.ReplicaSet
	for _, rs := range list {
		if equalIgnoreHash(&rs.Spec.Template, &d.Spec.Template) && (found == nil || byCreation(rs, found)) {
			found = rs
		}
	}
	return found
}

func byCreation(a, b *appsv1.ReplicaSet) bool {
	if a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return a.Name < b.Name
	}
	return a.CreationTimestamp.Before(&b.CreationTimestamp)
}

// bySizeNewer: larger first, then newer.
func bySizeNewer(a, b *appsv1.ReplicaSet) bool {
	if *a.Spec.Replicas == *b.Spec.Replicas {
		return byCreation(b, a)
	}
	return *a.Spec.Replicas > *b.Spec.Replicas
}

// bySizeOlder: larger first, then older.
func bySizeOlder(a, b *appsv1.ReplicaSet) bool {
	if *a.Spec.Replicas == *b.Spec.Replicas {
		return byCreation(a, b)
	}
	return *a.Spec.Replicas > *b.Spec.Replicas
}

func revisionOf(rs metav1.Object) int64 {
	v, err := strconv.ParseInt(rs.GetAnnotations()[annRevision], 10, 64)
	if err != nil {
		return 0
	}
	return v
}

func maxRevision(list []*appsv1.ReplicaSet) int64 {
	var m int64
	for _, rs := range list {
		if v := revisionOf(rs); v > m {
			m = v
		}
	}
	return m
}

// skipCopy are the deployment annotations not copied to its ReplicaSets.
var skipCopy = map[string]bool{
	corev1.LastAppliedConfigAnnotation: true,
	annRevision:                        true,
	annRevisionHistory:                 true,
	annDesiredReplicas:                 true,
	annMaxReplicas:                     true,
	annRollbackTo:                      true,
}

// setNewReplicaSetAnnotations copies the deployment's annotations (so
// kubernetes.io/change-cause reaches rollout history), raises the revision
// to newRevision (remembering the old one in revision-history) and, on a
// ReplicaSet being created, sets the replica annotations. It reports a change.
func setNewReplicaSetAnnotations(d *appsv1.Deployment, rs *appsv1.ReplicaSet, newRevision string, exists bool) bool {
	changed := false
	if rs.Annotations == nil {
		rs.Annotations = map[string]string{}
	}
	for k, v := range d.Annotations {
		if skipCopy[k] {
			continue
		}
		if cur, ok := rs.Annotations[k]; !ok || cur != v {
			rs.Annotations[k] = v
			changed = true
		}
	}
	oldRevision := rs.Annotations[annRevision]
	oldN, oldErr := strconv.ParseInt(oldRevision, 10, 64)
	newN, _ := strconv.ParseInt(newRevision, 10, 64)
	if oldRevision == "" || (oldErr == nil && oldN < newN) {
		rs.Annotations[annRevision] = newRevision
		changed = true
		if oldRevision != "" {
			if h := rs.Annotations[annRevisionHistory]; h == "" {
				rs.Annotations[annRevisionHistory] = oldRevision
			} else {
				rs.Annotations[annRevisionHistory] = h + "," + oldRevision
			}
		}
	}
	if !exists && setReplicasAnnotations(rs, *d.Spec.Replicas, *d.Spec.Replicas+maxSurge(d)) {
		changed = true
	}
	return changed
}

// setReplicasAnnotations records the deployment's replicas and replicas +
// maxSurge on a ReplicaSet; proportional scaling reads them back.
func setReplicasAnnotations(rs *appsv1.ReplicaSet, desired, max int32) bool {
	if rs.Annotations == nil {
		rs.Annotations = map[string]string{}
	}
	d, m := strconv.Itoa(int(desired)), strconv.Itoa(int(max))
	if rs.Annotations[annDesiredReplicas] == d && rs.Annotations[annMaxReplicas] == m {
		return false
	}
	rs.Annotations[annDesiredReplicas] = d
	rs.Annotations[annMaxReplicas] = m
	return true
}

func intAnnotation(rs *appsv1.ReplicaSet, key string) (int32, bool) {
	v, ok := rs.Annotations[key]
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return 0, false
	}
	return int32(n), true
}

// resolveFenceposts turns maxSurge and maxUnavailable into numbers for
// replicas: surge rounds up, unavailable down, and both zero means one
// unavailable so the rollout can move.
func resolveFenceposts(d *appsv1.Deployment) (surge, unavailable int32) {
	// The API defaults both to 25%; so do we for an object that skipped it.
	quarter := intstr.FromString("25%")
	ms, mu := &quarter, &quarter
	if ru := d.Spec.Strategy.RollingUpdate; ru != nil {
		ms, mu = ru.MaxSurge, ru.MaxUnavailable
	}
	replicas := int(*d.Spec.Replicas)
	zero := intstr.FromInt32(0)
	s, err := intstr.GetScaledValueFromIntOrPercent(intstr.ValueOrDefault(ms, zero), replicas, true)
	if err != nil {
		s = 0
	}
	u, err := intstr.GetScaledValueFromIntOrPercent(intstr.ValueOrDefault(mu, zero), replicas, false)
	if err != nil {
		u = 0
	}
	if s == 0 && u == 0 {
		u = 1
	}
	return int32(s), int32(u)
}

func maxSurge(d *appsv1.Deployment) int32 {
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
		return 0
	}
	s, _ := resolveFenceposts(d)
	return s
}

func maxUnavailable(d *appsv1.Deployment) int32 {
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || *d.Spec.Replicas == 0 {
		return 0
	}
	_, u := resolveFenceposts(d)
	return min(u, *d.Spec.Replicas)
}

func totalReplicas(list []*appsv1.ReplicaSet) int32 {
	var n int32
	for _, rs := range list {
		if rs != nil && rs.Spec.Replicas != nil {
			n += *rs.Spec.Replicas
		}
	}
	return n
}

func activeReplicaSets(list []*appsv1.ReplicaSet) []*appsv1.ReplicaSet {
	var out []*appsv1.ReplicaSet
	for _, rs := range list {
		if rs != nil && rs.Spec.Replicas != nil && *rs.Spec.Replicas > 0 {
			out = append(out, rs)
		}
	}
	return out
}

// newRSReplicas is how big the new ReplicaSet may be now: for a rolling
// update, as big as maxSurge above spec.replicas allows; for Recreate, all.
func newRSReplicas(d *appsv1.Deployment, all []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) int32 {
	want := *d.Spec.Replicas
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
		return want
	}
	current := totalReplicas(all)
	maxTotal := want + maxSurge(d)
	if current >= maxTotal {
		return *newRS.Spec.Replicas
	}
	up := min(maxTotal-current, want-*newRS.Spec.Replicas)
	return *newRS.Spec.Replicas + max(up, 0)
}

// isScalingEvent: spec.replicas differs from what an active ReplicaSet was
// last sized for.
func isScalingEvent(d *appsv1.Deployment, newRS *appsv1.ReplicaSet, old []*appsv1.ReplicaSet) bool {
	for _, rs := range activeReplicaSets(withNew(old, newRS)) {
		if v, ok := intAnnotation(rs, annDesiredReplicas); ok && v != *d.Spec.Replicas {
			return true
		}
	}
	return false
}

// activeOrLatest is the one ReplicaSet to scale when at most one is active:
// the active one, else the new one, else the newest old one.
func activeOrLatest(newRS *appsv1.ReplicaSet, old []*appsv1.ReplicaSet) *appsv1.ReplicaSet {
	if newRS == nil && len(old) == 0 {
		return nil
	}
	active := activeReplicaSets(withNew(old, newRS))
	switch len(active) {
	case 0:
		if newRS != nil {
			return newRS
		}
		latest := old[0]
		for _, rs := range old[1:] {
			if byCreation(latest, rs) {
				latest = rs
			}
		}
		return latest
	case 1:
		return active[0]
	}
	return nil
}

// isSaturated: the new ReplicaSet runs all of spec.replicas, available.
func isSaturated(d *appsv1.Deployment, rs *appsv1.ReplicaSet) bool {
	if rs == nil {
		return false
	}
	desired, ok := intAnnotation(rs, annDesiredReplicas)
	return ok && *rs.Spec.Replicas == *d.Spec.Replicas && desired == *d.Spec.Replicas && rs.Status.AvailableReplicas == *d.Spec.Replicas
}

// proportion is the share of toAdd a ReplicaSet takes in a proportional
// scale: its size scaled by the deployment's new over its old max size (the
// max-replicas annotation), bounded by what is left to hand out.
func proportion(rs *appsv1.ReplicaSet, d *appsv1.Deployment, toAdd, added int32) int32 {
	if *rs.Spec.Replicas == 0 || toAdd == 0 || toAdd == added {
		return 0
	}
	var fraction int32
	if *d.Spec.Replicas == 0 {
		fraction = -*rs.Spec.Replicas
	} else {
		newMax := *d.Spec.Replicas + maxSurge(d)
		oldMax, ok := intAnnotation(rs, annMaxReplicas)
		if !ok || oldMax == 0 {
			oldMax = d.Status.Replicas
		}
		if oldMax == 0 {
			return 0
		}
		fraction = int32(math.Round(float64(*rs.Spec.Replicas)*float64(newMax)/float64(oldMax))) - *rs.Spec.Replicas
	}
	left := toAdd - added
	if toAdd > 0 {
		return min(fraction, left)
	}
	return max(fraction, left)
}

func hasProgressDeadline(d *appsv1.Deployment) bool {
	return d.Spec.ProgressDeadlineSeconds != nil && *d.Spec.ProgressDeadlineSeconds != math.MaxInt32
}

func getDeploymentCondition(st appsv1.DeploymentStatus, t appsv1.DeploymentConditionType) *appsv1.DeploymentCondition {
	for i := range st.Conditions {
		if st.Conditions[i].Type == t {
			return &st.Conditions[i]
		}
	}
	return nil
}

func newDeploymentCondition(t appsv1.DeploymentConditionType, s corev1.ConditionStatus, reason, msg string, now time.Time) *appsv1.DeploymentCondition {
	ts := metav1.NewTime(now)
	return &appsv1.DeploymentCondition{Type: t, Status: s, Reason: reason, Message: msg, LastUpdateTime: ts, LastTransitionTime: ts}
}

// setDeploymentCondition sets c unless a condition with its status and
// reason is there already (so lastUpdateTime moves only on a real change),
// keeping the transition time when the status is the same.
func setDeploymentCondition(st *appsv1.DeploymentStatus, c appsv1.DeploymentCondition) {
	cur := getDeploymentCondition(*st, c.Type)
	if cur != nil && cur.Status == c.Status && cur.Reason == c.Reason {
		return
	}
	if cur != nil && cur.Status == c.Status {
		c.LastTransitionTime = cur.LastTransitionTime
	}
	removeDeploymentCondition(st, c.Type)
	st.Conditions = append(st.Conditions, c)
}

func removeDeploymentCondition(st *appsv1.DeploymentStatus, t appsv1.DeploymentConditionType) {
	out := st.Conditions[:0:0]
	for _, c := range st.Conditions {
		if c.Type != t {
			out = append(out, c)
		}
	}
	st.Conditions = out
}

// deploymentComplete: every replica updated and available, for the current spec.
func deploymentComplete(d *appsv1.Deployment, st appsv1.DeploymentStatus) bool {
	want := *d.Spec.Replicas
	return st.UpdatedReplicas == want && st.Replicas == want && st.AvailableReplicas == want && st.ObservedGeneration >= d.Generation
}

// deploymentProgressing: the new status is closer to done than the last one.
func deploymentProgressing(d *appsv1.Deployment, st appsv1.DeploymentStatus) bool {
	old := d.Status
	return st.UpdatedReplicas > old.UpdatedReplicas ||
		st.Replicas-st.UpdatedReplicas < old.Replicas-old.UpdatedReplicas ||
		st.ReadyReplicas > old.ReadyReplicas ||
		st.AvailableReplicas > old.AvailableReplicas
}

// deploymentTimedOut: no progress for progressDeadlineSeconds since the
// Progressing condition last moved.
func deploymentTimedOut(d *appsv1.Deployment, st appsv1.DeploymentStatus, now time.Time) bool {
	if !hasProgressDeadline(d) {
		return false
	}
	cond := getDeploymentCondition(st, appsv1.DeploymentProgressing)
	if cond == nil || cond.Reason == reasonNewRSAvailable {
		return false
	}
	if cond.Reason == reasonTimedOut {
		return true
	}
	deadline := cond.LastUpdateTime.Add(time.Duration(*d.Spec.ProgressDeadlineSeconds) * time.Second)
	return deadline.Before(now)
}

package auth

import (
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"time"

	"flotilla/fsm"
)

const podPrefix = "/core/pods/"

// decision is one authorizer's answer.
type decision int

const (
	noOpinion decision = iota
	allow
	deny
)

// nodeIndexWait bounds how long a node's read of a Secret, ConfigMap or
// ServiceAccount that no pod of it references waits for the pod index to
// catch up (the pod may have been bound a moment ago).
const nodeIndexWait = 250 * time.Millisecond

// ref kinds in the pod index.
const (
	refSecret         = 's'
	refConfigMap      = 'c'
	refServiceAccount = 'a'
)

// podRefs is the part of a Pod the node authorizer and the ServiceAccount
// authenticator read; decoding only it keeps the index cheap.
type podRefs struct {
	Metadata struct {
		UID               string     `json:"uid"`
		DeletionTimestamp *time.Time `json:"deletionTimestamp"`
	} `json:"metadata"`
	Spec struct {
		NodeName           string `json:"nodeName"`
		ServiceAccountName string `json:"serviceAccountName"`
		ServiceAccount     string `json:"serviceAccount"`
		ImagePullSecrets   []struct {
			Name string `json:"name"`
		} `json:"imagePullSecrets"`
		Volumes []struct {
			Secret *struct {
				SecretName string `json:"secretName"`
			} `json:"secret"`
			ConfigMap *named `json:"configMap"`
			Projected *struct {
				Sources []struct {
					Secret    *named `json:"secret"`
					ConfigMap *named `json:"configMap"`
				} `json:"sources"`
			} `json:"projected"`
		} `json:"volumes"`
		Containers          []containerRefs `json:"containers"`
		InitContainers      []containerRefs `json:"initContainers"`
		EphemeralContainers []containerRefs `json:"ephemeralContainers"`
	} `json:"spec"`
}

type named struct {
	Name string `json:"name"`
}

type containerRefs struct {
	Env []struct {
		ValueFrom *struct {
			SecretKeyRef    *named `json:"secretKeyRef"`
			ConfigMapKeyRef *named `json:"configMapKeyRef"`
		} `json:"valueFrom"`
	} `json:"env"`
	EnvFrom []struct {
		SecretRef    *named `json:"secretRef"`
		ConfigMapRef *named `json:"configMapRef"`
	} `json:"envFrom"`
}

// refs lists what the pod references, as index keys under its node.
func (p *podRefs) refs(ns string) []string {
	node := p.Spec.NodeName
	var out []string
	add := func(kind byte, name string) {
		if name != "" {
			out = append(out, refKey(node, kind, ns, name))
		}
	}
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = p.Spec.ServiceAccount
	}
	add(refServiceAccount, sa)
	for _, s := range p.Spec.ImagePullSecrets {
		add(refSecret, s.Name)
	}
	for _, v := range p.Spec.Volumes {
		if v.Secret != nil {
			add(refSecret, v.Secret.SecretName)
		}
		if v.ConfigMap != nil {
			add(refConfigMap, v.ConfigMap.Name)
		}
		if v.Projected != nil {
			for _, s := range v.Projected.Sources {
				if s.Secret != nil {
					add(refSecret, s.Secret.Name)
				}
				if s.ConfigMap != nil {
					add(refConfigMap, s.ConfigMap.Name)
				}
			}
		}
	}
	for _, cs := range [][]containerRefs{p.Spec.Containers, p.Spec.InitContainers, p.Spec.EphemeralContainers} {
		for _, c := range cs {
			for _, e := range c.Env {
				if e.ValueFrom != nil {
					if e.ValueFrom.SecretKeyRef != nil {
						add(refSecret, e.ValueFrom.SecretKeyRef.Name)
					}
					if e.ValueFrom.ConfigMapKeyRef != nil {
						add(refConfigMap, e.ValueFrom.ConfigMapKeyRef.Name)
					}
				}
			}
			for _, e := range c.EnvFrom {
				if e.SecretRef != nil {
					add(refSecret, e.SecretRef.Name)
				}
				if e.ConfigMapRef != nil {
					add(refConfigMap, e.ConfigMapRef.Name)
				}
			}
		}
	}
	return out
}

func refKey(node string, kind byte, ns, name string) string {
	return node + "\x00" + string(kind) + ns + "\x00" + name
}

// podIndex is the node authorizer's graph (kube keeps one too): for every
// bound pod, the Secrets, ConfigMaps and ServiceAccount it references,
// counted per node. It mirrors /core/pods/ through a watch.
type podIndex struct {
	log *slog.Logger

	mu   sync.RWMutex
	pods map[string][]string // pod key -> its ref keys (bound pods only)
	refs map[string]int      // ref key -> number of pods referencing it

	sync revWaiter
}

func newPodIndex(log *slog.Logger) *podIndex {
	return &podIndex{log: log, pods: map[string][]string{}, refs: map[string]int{}}
}

func (x *podIndex) refsOf(kv *fsm.KeyValue) []string {
	var p podRefs
	if err := json.Unmarshal(kv.Value, &p); err != nil {
		x.log.Warn("pod index: undecodable pod ignored", "key", kv.Key, "error", err)
		return nil
	}
	if p.Spec.NodeName == "" {
		return nil
	}
	ns, _, _ := strings.Cut(strings.TrimPrefix(kv.Key, podPrefix), "/")
	return p.refs(ns)
}

func (x *podIndex) load(kvs []*fsm.KeyValue, rev uint64) {
	pods, refs := map[string][]string{}, map[string]int{}
	for _, kv := range kvs {
		if rs := x.refsOf(kv); rs != nil {
			pods[kv.Key] = rs
			for _, r := range rs {
				refs[r]++
			}
		}
	}
	x.mu.Lock()
	x.pods, x.refs = pods, refs
	x.mu.Unlock()
	x.sync.advance(rev)
}

func (x *podIndex) apply(evs []fsm.Event) {
	// Decode outside the lock.
	type change struct {
		key  string
		refs []string
	}
	changes := make([]change, len(evs))
	for i, ev := range evs {
		changes[i].key = ev.KV.Key
		if ev.Type == fsm.EventPut {
			changes[i].refs = x.refsOf(ev.KV)
		}
	}
	x.mu.Lock()
	for _, c := range changes {
		for _, r := range x.pods[c.key] {
			if x.refs[r]--; x.refs[r] <= 0 {
				delete(x.refs, r)
			}
		}
		if c.refs == nil {
			delete(x.pods, c.key)
			continue
		}
		x.pods[c.key] = c.refs
		for _, r := range c.refs {
			x.refs[r]++
		}
	}
	x.mu.Unlock()
	x.sync.advance(evs[len(evs)-1].Revision)
}

func (x *podIndex) has(key string) bool {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.refs[key] > 0
}

// hasWaiting looks key up; on a miss it waits up to nodeIndexWait for the
// index to apply more pod events, looking again after each batch.
func (x *podIndex) hasWaiting(ctx context.Context, key string) bool {
	if x.has(key) {
		return true
	}
	t := time.NewTimer(nodeIndexWait)
	defer t.Stop()
	for {
		_, ch := x.sync.changed()
		if x.has(key) {
			return true
		}
		select {
		case <-ch:
		case <-t.C:
			return x.has(key)
		case <-ctx.Done():
			return false
		}
	}
}

// objCache keeps the decoded podRefs of single objects read by key, valid
// while the key's ModRevision is unchanged, so repeated checks of one pod
// (every status write of a node) decode it once.
type objCache struct {
	mu sync.Mutex
	m  map[string]cachedObj
}

type cachedObj struct {
	rev uint64
	obj *podRefs
}

// maxObjCache bounds objCache; it is simply emptied when full.
const maxObjCache = 8192

// get returns the object at key from st (nil when absent or undecodable).
func (c *objCache) get(st *fsm.Store, key string) *podRefs {
	kv, _ := st.Get(key)
	if kv == nil {
		return nil
	}
	c.mu.Lock()
	e, ok := c.m[key]
	c.mu.Unlock()
	if ok && e.rev == kv.ModRevision {
		return e.obj
	}
	var p podRefs
	if err := json.Unmarshal(kv.Value, &p); err != nil {
		return nil
	}
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxObjCache {
		c.m = make(map[string]cachedObj)
	}
	c.m[key] = cachedObj{rev: kv.ModRevision, obj: &p}
	c.mu.Unlock()
	return &p
}

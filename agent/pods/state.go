package pods

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"flotilla/agent/runtime"
)

// podState is what the Manager remembers about one pod between syncs. It is
// all derivable again (an agent restart loses it without harm): the
// sandbox from the network, the containers from the runtime, probe results
// restart from the pod's last status.
//
// Fields without a comment on locking are touched only by the pod's sync,
// which the workqueue serializes.
type podState struct {
	uid types.UID

	// podIP is the pod's address once its sandbox is up ("" before);
	// netNS the namespace its containers join ("" = the runtime's).
	podIP      string
	netNS      string
	sandboxUp  bool
	netRelease bool // network and volumes released (terminal pod)
	// terminating: the pod is being deleted and its containers were
	// stopped; its status is made terminal.
	terminating bool

	// volumesAt is when the volumes were last written (zero: never).
	volumesAt time.Time
	// tokens are projected service account tokens by volume path and
	// their refresh times.
	tokens map[string]tokenEntry
	// etcWritten: /etc/hosts, hostname and resolv.conf exist.
	etcWritten bool

	// waiting is why a container that is not running is not (the reason
	// and message of its Waiting state), by container name.
	waiting map[string]waitingState

	// probers by container name; each watches one container ID.
	probers map[string]*prober

	// failure, once set, fails the pod (Unsupported, DeadlineExceeded).
	failure *podFailure

	// lastStatus is the last status written, with the resourceVersion the
	// write returned, so a lagging informer cache does not cause rewrites.
	lastStatus *corev1.PodStatus
	lastRV     string

	// phase is the last phase computed, read by RunningPods.
	phase atomic.Value // string
}

type waitingState struct{ reason, message string }

type podFailure struct{ reason, message string }

type tokenEntry struct {
	token   string
	refresh time.Time
}

// state returns the pod's state, making it on first sight.
func (m *Manager) state(uid types.UID) *podState {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.pods[uid]
	if st == nil {
		st = &podState{
			uid:     uid,
			waiting: map[string]waitingState{},
			probers: map[string]*prober{},
			tokens:  map[string]tokenEntry{},
		}
		st.phase.Store("")
		m.pods[uid] = st
	}
	return st
}

// forget drops everything the Manager holds for a pod that is gone.
func (m *Manager) forget(uid types.UID) {
	m.mu.Lock()
	st := m.pods[uid]
	delete(m.pods, uid)
	delete(m.containers, uid)
	m.mu.Unlock()
	if st != nil {
		st.stopProbers()
	}
	m.backoff.forgetPrefix(string(uid) + "/")
}

// containersOf refreshes and returns the pod's containers: every container
// the cache knows for uid is asked for again, and those the runtime no
// longer has are dropped. An ErrUnavailable runtime fails the call.
func (m *Manager) containersOf(ctx context.Context, uid types.UID) ([]runtime.Container, error) {
	m.mu.Lock()
	ids := make([]string, 0, len(m.containers[uid]))
	for id := range m.containers[uid] {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	out := make([]runtime.Container, 0, len(ids))
	for _, id := range ids {
		c, err := m.cfg.Runtime.ContainerStatus(ctx, id)
		switch {
		case errors.Is(err, runtime.ErrNotFound):
			m.mu.Lock()
			delete(m.containers[uid], id)
			m.mu.Unlock()
			continue
		case err != nil:
			return nil, fmt.Errorf("container %s status: %w", id, err)
		}
		m.remember(c)
		out = append(out, c)
	}
	return out, nil
}

// remember puts c in the cache.
func (m *Manager) remember(c runtime.Container) {
	uid := types.UID(c.PodUID)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.containers[uid] == nil {
		m.containers[uid] = map[string]runtime.Container{}
	}
	m.containers[uid][c.ID] = c
}

// dropContainer removes a container from the cache.
func (m *Manager) dropContainer(uid types.UID, id string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.containers[uid], id)
}

// attempts groups a pod's containers by name, newest attempt first.
type attempts map[string][]runtime.Container

func groupContainers(list []runtime.Container) attempts {
	g := attempts{}
	for _, c := range list {
		g[c.Name] = append(g[c.Name], c)
	}
	for _, cs := range g {
		sort.Slice(cs, func(i, j int) bool {
			if cs[i].Attempt != cs[j].Attempt {
				return cs[i].Attempt > cs[j].Attempt
			}
			return cs[i].CreatedAt.After(cs[j].CreatedAt)
		})
	}
	return g
}

// latest is the newest attempt of a container, nil if it was never made.
func (a attempts) latest(name string) *runtime.Container {
	if cs := a[name]; len(cs) > 0 {
		return &cs[0]
	}
	return nil
}

// previous is the attempt before the latest, nil if none.
func (a attempts) previous(name string) *runtime.Container {
	if cs := a[name]; len(cs) > 1 {
		return &cs[1]
	}
	return nil
}

// backoff is the kubelet's restart back-off: a delay per key that starts at
// initial, doubles on each restart up to max, and is forgotten when unused
// for twice max.
type backoff struct {
	initial, max time.Duration
	mu           sync.Mutex
	entries      map[string]*backoffEntry
}

type backoffEntry struct {
	delay time.Duration
	last  time.Time
}

func newBackoff(initial, max time.Duration) *backoff {
	return &backoff{initial: initial, max: max, entries: map[string]*backoffEntry{}}
}

// wait is how long after since the key must still wait (0: go now), and the
// current delay for messages.
func (b *backoff) wait(key string, since, now time.Time) (time.Duration, time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entries[key]
	if e == nil || now.Sub(e.last) > 2*b.max {
		return 0, 0
	}
	if left := e.delay - now.Sub(since); left > 0 {
		return left, e.delay
	}
	return 0, e.delay
}

// next records a restart now: the next one waits longer.
func (b *backoff) next(key string, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entries[key]
	switch {
	case e == nil || now.Sub(e.last) > 2*b.max:
		b.entries[key] = &backoffEntry{delay: b.initial, last: now}
	default:
		e.delay = min(2*e.delay, b.max)
		e.last = now
	}
}

// reset forgets a key (the container ran long enough, the image pulled).
func (b *backoff) reset(key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.entries, key)
}

func (b *backoff) forgetPrefix(prefix string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k := range b.entries {
		if strings.HasPrefix(k, prefix) {
			delete(b.entries, k)
		}
	}
}

func restartKey(uid types.UID, container string) string { return string(uid) + "/c/" + container }
func pullKey(uid types.UID, image string) string        { return string(uid) + "/i/" + image }

// waitSinceUpdate is how long the key must still wait counted from its last
// update (image pulls back off from the failed pull, not from an exit).
func (b *backoff) waitSinceUpdate(key string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.entries[key]
	if e == nil || now.Sub(e.last) > 2*b.max {
		return 0
	}
	return max(e.delay-now.Sub(e.last), 0)
}

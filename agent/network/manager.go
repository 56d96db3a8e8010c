package network

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// Config configures a Manager. The zero value of every field but DataDir
// is a usable default.
type Config struct {
	// DataDir holds netns/ (pod namespace files), cni/ (libcni cache),
	// ipam/ (host-local leases), state/ (per-pod records) and the conflist.
	// Typically <agent data dir>/network. Required.
	DataDir string
	// PluginDirs are searched for CNI plugins; default /usr/lib/cni and
	// /opt/cni/bin, those that exist.
	PluginDirs []string
	// Bridge is the node's pod bridge; default "flotilla0".
	Bridge string
	// MTU of pod interfaces; 0 means the MTU of the node's default-route
	// interface, or 1500 without one.
	MTU int
	// ClusterCIDR is the pod range of the whole cluster (default
	// DefaultClusterCIDR): pods' traffic to addresses outside it is
	// masqueraded to the node's address.
	ClusterCIDR string
	// Logger; default discards.
	Logger *slog.Logger
}

// Manager sets up and tears down pod networks on one node. Its methods are
// safe for concurrent use; operations on different pods run in parallel.
type Manager struct {
	cfg        Config
	log        *slog.Logger
	netnsDir   string
	stateDir   string
	ipamDir    string
	cacheDir   string
	confPath   string
	cni        *libcni.CNIConfig
	hostNetNS  string
	pluginDirs []string

	podLocks keyedMutex
	routeMu  sync.Mutex // serialises SyncRoutes

	mu       sync.Mutex
	cidr     *net.IPNet                // set by SetPodCIDR in this run
	diskCIDR string                    // the podCIDR of the conflist an earlier run wrote
	confList *libcni.NetworkConfigList // built from cidr, for pods with hostPorts
	confRaw  []byte                    // the conflist bytes
	// plainList and plainRaw are the conflist without portmap, for the
	// pods without hostPorts (most): one plugin process less to start.
	plainList *libcni.NetworkConfigList
	plainRaw  []byte
	pods      map[string]record // by pod UID, including setups under way
}

// record is what survives a restart for one pod: enough to run CNI DEL.
type record struct {
	UID       string          `json:"uid"`
	Namespace string          `json:"namespace,omitempty"`
	Name      string          `json:"name,omitempty"`
	NetNS     string          `json:"netns"`
	IP        string          `json:"ip,omitempty"` // empty while ADD has not finished
	Ports     []PortMapping   `json:"ports,omitempty"`
	Conflist  json.RawMessage `json:"conflist"` // exactly what ADD ran with
}

const conflistName = "10-flotilla.conflist"

// New makes a Manager over cfg.DataDir. It loads the records of pods set up
// by an earlier run and leaves their namespaces alone.
func New(cfg Config) (*Manager, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("new pod network manager: DataDir is required")
	}
	if cfg.Bridge == "" {
		cfg.Bridge = "flotilla0"
	}
	if len(cfg.Bridge) > 15 || strings.ContainsAny(cfg.Bridge, "/ \t\n:") {
		return nil, fmt.Errorf("new pod network manager: bad bridge name %q (at most 15 characters, no '/', ':' or spaces)", cfg.Bridge)
	}
	if cfg.ClusterCIDR != "" {
		if _, _, err := net.ParseCIDR(cfg.ClusterCIDR); err != nil {
			return nil, fmt.Errorf("new pod network manager: cluster CIDR %q: %w", cfg.ClusterCIDR, err)
		}
	}
	if cfg.MTU != 0 && (cfg.MTU < 576 || cfg.MTU > 65535) {
		return nil, fmt.Errorf("new pod network manager: MTU %d out of range 576..65535", cfg.MTU)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "network")
	dirs := cfg.PluginDirs
	if len(dirs) == 0 {
		for _, d := range []string{"/usr/lib/cni", "/opt/cni/bin"} {
			if st, err := os.Stat(d); err == nil && st.IsDir() {
				dirs = append(dirs, d)
			}
		}
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("new pod network manager: %w", err)
	}
	m := &Manager{
		cfg:        cfg,
		log:        log,
		netnsDir:   filepath.Join(dataDir, "netns"),
		stateDir:   filepath.Join(dataDir, "state"),
		ipamDir:    filepath.Join(dataDir, "ipam"),
		cacheDir:   filepath.Join(dataDir, "cni"),
		confPath:   filepath.Join(dataDir, conflistName),
		hostNetNS:  hostNetNSPath(),
		pluginDirs: dirs,
		pods:       make(map[string]record),
	}
	for _, d := range []string{m.netnsDir, m.stateDir, m.ipamDir, m.cacheDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("new pod network manager: create %s: %w", d, err)
		}
	}
	m.cni = libcni.NewCNIConfigWithCacheDir(dirs, m.cacheDir, &invoke.DefaultExec{
		RawExec:       &invoke.RawExec{Stderr: stderrLogger{log}},
		PluginDecoder: version.PluginDecoder{},
	})
	if b, err := os.ReadFile(m.confPath); err == nil {
		if s, err := conflistSubnet(b); err == nil {
			m.diskCIDR = s
		}
	}
	if err := m.loadRecords(); err != nil {
		return nil, fmt.Errorf("new pod network manager: %w", err)
	}
	return m, nil
}

func (m *Manager) loadRecords() error {
	entries, err := os.ReadDir(m.stateDir)
	if err != nil {
		return fmt.Errorf("read pod records: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		path := filepath.Join(m.stateDir, name)
		if strings.HasSuffix(name, ".tmp") {
			os.Remove(path) // a write cut short by a crash
			continue
		}
		uid, ok := strings.CutSuffix(name, ".json")
		if !ok || validUID(uid) != nil {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read pod record %s: %w", path, err)
		}
		var r record
		if err := json.Unmarshal(b, &r); err != nil || r.UID != uid {
			// Without it DEL cannot run; Pods still lists the UID (from the
			// file name) so TeardownPod removes what it can.
			m.log.Warn("ignoring unreadable pod network record", "path", path, "err", err)
			continue
		}
		m.pods[uid] = r
	}
	return nil
}

// SetPodCIDR sets the node's spec.podCIDR and writes the CNI conflist for
// it. Setting the same CIDR again is a no-op; changing it is refused while
// any pod is attached (their IPs are from the old range).
func (m *Manager) SetPodCIDR(cidr string) error {
	ipnet, err := parsePodCIDR(cidr)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	prev := m.diskCIDR
	if m.cidr != nil {
		prev = m.cidr.String()
	}
	if m.cidr != nil && prev == ipnet.String() {
		return nil
	}
	changed := prev != "" && prev != ipnet.String()
	if changed && len(m.pods) > 0 {
		return fmt.Errorf("change pod CIDR from %s to %s: %d pods still attached", prev, ipnet, len(m.pods))
	}
	mtu := m.cfg.MTU
	if mtu == 0 {
		if mtu = defaultRouteMTU(); mtu == 0 {
			mtu = 1500
		}
	}
	raw, err := buildConflist(ipnet, m.cfg.Bridge, mtu, m.ipamDir, true)
	if err != nil {
		return err
	}
	list, err := libcni.ConfListFromBytes(raw)
	if err != nil {
		return fmt.Errorf("parse cni conflist: %w", err)
	}
	plainRaw, err := buildConflist(ipnet, m.cfg.Bridge, mtu, m.ipamDir, false)
	if err != nil {
		return err
	}
	plainList, err := libcni.ConfListFromBytes(plainRaw)
	if err != nil {
		return fmt.Errorf("parse cni conflist: %w", err)
	}
	if err := writeFileAtomic(m.confPath, raw, 0o644); err != nil {
		return fmt.Errorf("write cni conflist: %w", err)
	}
	if err := m.ensureMasquerade(ipnet); err != nil {
		return fmt.Errorf("pod egress masquerade: %w", err)
	}
	if changed {
		// The bridge still carries the old gateway address (and its route);
		// the next ADD recreates it with the new one.
		if err := deleteLink(m.cfg.Bridge); err != nil {
			return fmt.Errorf("remove bridge %s after pod CIDR change: %w", m.cfg.Bridge, err)
		}
	}
	m.cidr, m.diskCIDR, m.confList, m.confRaw = ipnet, ipnet.String(), list, raw
	m.plainList, m.plainRaw = plainList, plainRaw
	m.log.Info("pod CIDR set", "cidr", ipnet.String(), "bridge", m.cfg.Bridge, "mtu", mtu)
	return nil
}

// Ready returns nil when pods can be networked: SetPodCIDR was called and
// the plugins (and iptables, which portmap runs) are installed. Otherwise
// the error wraps ErrNotReady and says what is missing.
func (m *Manager) Ready() error {
	var missing []string
	m.mu.Lock()
	if m.cidr == nil {
		missing = append(missing, "node has no pod CIDR yet")
	}
	m.mu.Unlock()
	if len(m.pluginDirs) == 0 {
		missing = append(missing, "no CNI plugin directory (/usr/lib/cni, /opt/cni/bin)")
	} else {
		for _, p := range requiredPlugins {
			if _, err := invoke.FindInPath(p, m.pluginDirs); err != nil {
				missing = append(missing, fmt.Sprintf("CNI plugin %s not found in %s", p, strings.Join(m.pluginDirs, ":")))
			}
		}
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		missing = append(missing, "iptables (run by portmap) not found in PATH")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s", ErrNotReady, strings.Join(missing, "; "))
	}
	return nil
}

// SetupPod creates the pod's network namespace and attaches it through CNI
// (bridge, an IP from the podCIDR, hostPorts). Calling it again for a pod
// already set up returns the existing attachment. On failure whatever was
// done is undone.
func (m *Manager) SetupPod(ctx context.Context, p PodNetwork) (Attachment, error) {
	if err := validUID(p.UID); err != nil {
		return Attachment{}, fmt.Errorf("set up pod network: %w", err)
	}
	ports, err := cniPortMappings(p.Ports)
	if err != nil {
		return Attachment{}, fmt.Errorf("set up network of pod %s: %w", p.UID, err)
	}
	unlock := m.podLocks.lock(p.UID)
	defer unlock()
	log := m.log.With("pod", p.Namespace+"/"+p.Name, "uid", p.UID)

	m.mu.Lock()
	rec, exists := m.pods[p.UID]
	m.mu.Unlock()
	if exists {
		if rec.IP != "" && isNetNS(rec.NetNS) {
			return rec.attachment(), nil
		}
		// Half set up by a run that crashed, or the namespace is gone
		// (reboot): start over from nothing.
		log.Info("redoing pod network left incomplete", "ip", rec.IP)
		if err := m.teardown(ctx, p.UID); err != nil {
			return Attachment{}, fmt.Errorf("set up network of pod %s: clean up earlier attempt: %w", p.UID, err)
		}
	}

	m.mu.Lock()
	if m.confList == nil {
		m.mu.Unlock()
		return Attachment{}, fmt.Errorf("set up network of pod %s: %w: node has no pod CIDR yet", p.UID, ErrNotReady)
	}
	list, raw := m.confList, m.confRaw
	if len(ports) == 0 {
		list, raw = m.plainList, m.plainRaw
	}
	rec = record{UID: p.UID, Namespace: p.Namespace, Name: p.Name, NetNS: m.netnsPath(p.UID), Conflist: raw}
	for _, pm := range ports {
		rec.Ports = append(rec.Ports, PortMapping{HostPort: pm.HostPort, ContainerPort: pm.ContainerPort, Protocol: pm.Protocol, HostIP: pm.HostIP})
	}
	// Registered before ADD so SetPodCIDR sees the pod as attached.
	m.pods[p.UID] = rec
	m.mu.Unlock()

	start := time.Now()
	att, err := m.setup(ctx, rec, list, ports)
	if err != nil {
		// Undo with a fresh deadline: ctx may be what failed.
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if uerr := m.teardown(uctx, p.UID); uerr != nil {
			log.Error("undo failed pod network setup", "err", uerr)
			err = errors.Join(err, fmt.Errorf("undo: %w", uerr))
		}
		return Attachment{}, fmt.Errorf("set up network of pod %s: %w", p.UID, err)
	}
	log.Info("pod network set up", "ip", att.IP.String(), "took", time.Since(start))
	return att, nil
}

func (m *Manager) setup(ctx context.Context, rec record, list *libcni.NetworkConfigList, ports []cniPortMapping) (Attachment, error) {
	// Written first: if the agent dies during ADD, the next run still
	// knows to run DEL for this pod.
	if err := m.writeRecord(rec); err != nil {
		return Attachment{}, err
	}
	// Any file here is left from a setup that never reached ADD.
	if err := removeNetNS(rec.NetNS); err != nil {
		return Attachment{}, err
	}
	if err := createNetNS(rec.NetNS); err != nil {
		return Attachment{}, err
	}
	res, err := m.cni.AddNetworkList(ctx, list, runtimeConf(rec, rec.NetNS, ports))
	if err != nil {
		return Attachment{}, fmt.Errorf("cni add: %w", err)
	}
	ip, err := podIP(res)
	if err != nil {
		return Attachment{}, err
	}
	rec.IP = ip.String()
	if err := m.writeRecord(rec); err != nil {
		return Attachment{}, err
	}
	m.mu.Lock()
	m.pods[rec.UID] = rec
	m.mu.Unlock()
	return rec.attachment(), nil
}

// podIP picks the address CNI gave the pod's interface.
func podIP(res types.Result) (net.IP, error) {
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("cni add: read result: %w", err)
	}
	for _, ipc := range r.IPs {
		if ipc.Interface == nil || *ipc.Interface < 0 || *ipc.Interface >= len(r.Interfaces) {
			continue
		}
		ifc := r.Interfaces[*ipc.Interface]
		if ifc.Name == podIfName && ifc.Sandbox != "" {
			return ipc.Address.IP, nil
		}
	}
	return nil, errors.New("cni add: result has no address for the pod's interface")
}

// TeardownPod detaches the pod (CNI DEL: IP released, hostPorts removed),
// removes its namespace and forgets it. It is idempotent, works after an
// agent restart from the saved record, and when the namespace is already
// gone.
func (m *Manager) TeardownPod(ctx context.Context, uid string) error {
	if err := validUID(uid); err != nil {
		return fmt.Errorf("tear down pod network: %w", err)
	}
	unlock := m.podLocks.lock(uid)
	defer unlock()
	start := time.Now()
	if err := m.teardown(ctx, uid); err != nil {
		return fmt.Errorf("tear down network of pod %s: %w", uid, err)
	}
	m.log.Debug("pod network torn down", "uid", uid, "took", time.Since(start))
	return nil
}

// teardown is TeardownPod with the pod's lock held.
func (m *Manager) teardown(ctx context.Context, uid string) error {
	m.mu.Lock()
	rec, ok := m.pods[uid]
	m.mu.Unlock()
	path := m.netnsPath(uid)
	if ok {
		list, err := libcni.ConfListFromBytes(rec.Conflist)
		if err != nil {
			return fmt.Errorf("parse saved cni conflist: %w", err)
		}
		ports, err := cniPortMappings(rec.Ports)
		if err != nil {
			return fmt.Errorf("saved port mappings: %w", err)
		}
		// An empty netns tells the plugins the pod side is gone; they still
		// release the IP and the port mappings.
		netns := ""
		if isNetNS(rec.NetNS) {
			netns = rec.NetNS
		}
		if err := m.cni.DelNetworkList(ctx, list, runtimeConf(rec, netns, ports)); err != nil {
			return fmt.Errorf("cni del: %w", err)
		}
		path = rec.NetNS
	}
	if err := removeNetNS(path); err != nil {
		return err
	}
	if err := os.Remove(m.recordPath(uid)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove pod record: %w", err)
	}
	m.mu.Lock()
	delete(m.pods, uid)
	m.mu.Unlock()
	return nil
}

func runtimeConf(rec record, netns string, ports []cniPortMapping) *libcni.RuntimeConf {
	rt := &libcni.RuntimeConf{
		ContainerID: rec.UID,
		NetNS:       netns,
		IfName:      podIfName,
		Args:        [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_UID", rec.UID}, {"K8S_POD_INFRA_CONTAINER_ID", rec.UID}},
	}
	// CNI_ARGS is "k=v;k=v": values holding either separator are left out
	// (API object names never do).
	if rec.Namespace != "" && !strings.ContainsAny(rec.Namespace, ";=") {
		rt.Args = append(rt.Args, [2]string{"K8S_POD_NAMESPACE", rec.Namespace})
	}
	if rec.Name != "" && !strings.ContainsAny(rec.Name, ";=") {
		rt.Args = append(rt.Args, [2]string{"K8S_POD_NAME", rec.Name})
	}
	if len(ports) > 0 {
		rt.CapabilityArgs = map[string]any{"portMappings": ports}
	}
	return rt
}

// Lookup returns the attachment of a pod whose network is set up and whose
// namespace still exists.
func (m *Manager) Lookup(uid string) (Attachment, bool) {
	m.mu.Lock()
	rec, ok := m.pods[uid]
	m.mu.Unlock()
	if !ok || rec.IP == "" || !isNetNS(rec.NetNS) {
		return Attachment{}, false
	}
	return rec.attachment(), true
}

// Pods lists the UIDs of pods with any network state on this node
// (records, namespace files), so the agent can tear down pods deleted
// while it was down.
func (m *Manager) Pods() ([]string, error) {
	set := make(map[string]bool)
	m.mu.Lock()
	for uid := range m.pods {
		set[uid] = true
	}
	m.mu.Unlock()
	for _, dir := range []string{m.netnsDir, m.stateDir} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("list pod networks: %w", err)
		}
		for _, e := range entries {
			uid := strings.TrimSuffix(e.Name(), ".json")
			if validUID(uid) == nil {
				set[uid] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for uid := range set {
		out = append(out, uid)
	}
	sort.Strings(out)
	return out, nil
}

// DialContext connects to addr from inside the pod's network namespace, as
// port-forward needs ("localhost:PORT" in the pod). addr's host must be an
// IP address or localhost.
func (m *Manager) DialContext(ctx context.Context, uid, network, addr string) (net.Conn, error) {
	if err := validUID(uid); err != nil {
		return nil, fmt.Errorf("dial in pod: %w", err)
	}
	path := m.netnsPath(uid)
	if !isNetNS(path) {
		return nil, fmt.Errorf("dial %s in pod %s: pod has no network namespace: %w", addr, uid, fs.ErrNotExist)
	}
	c, err := dialInNetNS(ctx, path, network, addr)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", uid, err)
	}
	return c, nil
}

// HostNetNSPath is the namespace hostNetwork containers join: "" when the
// agent runs in the init process's network namespace (the runtime's
// default), else /proc/<agent pid>/ns/net.
func (m *Manager) HostNetNSPath() string { return m.hostNetNS }

func (m *Manager) netnsPath(uid string) string  { return filepath.Join(m.netnsDir, uid) }
func (m *Manager) recordPath(uid string) string { return filepath.Join(m.stateDir, uid+".json") }

func (m *Manager) writeRecord(r record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encode pod record: %w", err)
	}
	if err := writeFileAtomic(m.recordPath(r.UID), b, 0o600); err != nil {
		return fmt.Errorf("write pod record: %w", err)
	}
	return nil
}

func (r record) attachment() Attachment {
	return Attachment{NetNSPath: r.NetNS, IP: net.ParseIP(r.IP)}
}

// uidPattern is what a pod UID may look like: CNI's container ID rules
// (it is used as one) and a safe file name.
var uidPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$`)

func validUID(uid string) error {
	if !uidPattern.MatchString(uid) {
		return fmt.Errorf("bad pod UID %q (want letters, digits, '-', '_', '.')", uid)
	}
	return nil
}

// writeFileAtomic replaces path with data so a crash leaves either the old
// or the new content.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// keyedMutex serialises work per key (pod UID) and forgets idle keys.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*refMutex
}

type refMutex struct {
	sync.Mutex
	refs int
}

func (k *keyedMutex) lock(key string) (unlock func()) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = make(map[string]*refMutex)
	}
	l := k.locks[key]
	if l == nil {
		l = &refMutex{}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		k.mu.Lock()
		if l.refs--; l.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}

// stderrLogger sends CNI plugins' stderr to the log.
type stderrLogger struct{ log *slog.Logger }

func (w stderrLogger) Write(p []byte) (int, error) {
	if s := strings.TrimSpace(string(p)); s != "" {
		w.log.Debug("cni plugin stderr", "output", s)
	}
	return len(p), nil
}

package pods

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"flotilla/agent/runtime"
)

// Layout of a pod's directory, <DataDir>/pods/<uid>/.
const (
	volumesDir    = "volumes"    // volumes/<name>/
	containersDir = "containers" // containers/<name>/<attempt>-termination-log
	etcHostsFile  = "etc-hosts"
	etcHostname   = "etc-hostname"
	etcResolvConf = "etc-resolv.conf"
	dataLink      = "..data" // atomic writer: symlink to the current payload
	// volumeRefresh: configMap, secret, downwardAPI and projected volumes
	// are rewritten (when changed) every this many Resync periods.
	volumeRefresh  = 6
	defaultFileMod = 0o644
)

func (m *Manager) volumePath(uid types.UID, name string) string {
	return filepath.Join(m.podDir(uid), volumesDir, name)
}

func (m *Manager) termLogPath(uid types.UID, container string, attempt int) string {
	return filepath.Join(m.podDir(uid), containersDir, container, strconv.Itoa(attempt)+"-termination-log")
}

// ensureEtcFiles writes the pod's /etc/hosts, /etc/hostname and
// /etc/resolv.conf, once its address is known.
func (m *Manager) ensureEtcFiles(pod *corev1.Pod, st *podState) error {
	if st.etcWritten {
		return nil
	}
	dir := m.podDir(pod.UID)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("make pod directory: %w", err)
	}
	hostname := podHostname(pod)
	if pod.Spec.HostNetwork {
		if h, err := os.Hostname(); err == nil {
			hostname = h
		}
	}
	files := map[string][]byte{
		etcHostsFile:  hostsFile(pod, st.podIP),
		etcHostname:   []byte(hostname + "\n"),
		etcResolvConf: resolvConf(pod),
	}
	for name, data := range files {
		if err := writeFileAtomic(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	st.etcWritten = true
	return nil
}

// hostsFile is the kubelet's managed /etc/hosts: localhost, the pod's own
// name at its address, and its hostAliases. hostNetwork pods get the node's
// file instead of the first part.
func hostsFile(pod *corev1.Pod, podIP string) []byte {
	var b bytes.Buffer
	if pod.Spec.HostNetwork {
		b.WriteString("# Kubernetes-managed hosts file (host network).\n")
		if data, err := os.ReadFile("/etc/hosts"); err == nil {
			b.Write(data)
			if len(data) > 0 && data[len(data)-1] != '\n' {
				b.WriteByte('\n')
			}
		}
	} else {
		b.WriteString("# Kubernetes-managed hosts file.\n" +
			"127.0.0.1\tlocalhost\n" +
			"::1\tlocalhost ip6-localhost ip6-loopback\n" +
			"fe00::0\tip6-localnet\n" +
			"fe00::0\tip6-mcastprefix\n" +
			"fe00::1\tip6-allnodes\n" +
			"fe00::2\tip6-allrouters\n")
		if podIP != "" {
			host := podHostname(pod)
			if pod.Spec.Subdomain != "" {
				fmt.Fprintf(&b, "%s\t%s.%s.%s.svc.cluster.local\t%s\n", podIP, host, pod.Spec.Subdomain, pod.Namespace, host)
			} else {
				fmt.Fprintf(&b, "%s\t%s\n", podIP, host)
			}
		}
	}
	if len(pod.Spec.HostAliases) > 0 {
		b.WriteString("\n# Entries added by HostAliases.\n")
		for _, a := range pod.Spec.HostAliases {
			fmt.Fprintf(&b, "%s\t%s\n", a.IP, strings.Join(a.Hostnames, "\t"))
		}
	}
	return b.Bytes()
}

// resolvConf is the node's resolv.conf (there is no cluster DNS), or
// nothing for dnsPolicy None, merged with the pod's dnsConfig.
func resolvConf(pod *corev1.Pod) []byte {
	var servers, searches []string
	options := map[string]string{}
	var optOrder []string
	addOpt := func(name, val string) {
		if _, ok := options[name]; !ok {
			optOrder = append(optOrder, name)
		}
		options[name] = val
	}
	if pod.Spec.DNSPolicy != corev1.DNSNone {
		if data, err := os.ReadFile("/etc/resolv.conf"); err == nil {
			for _, line := range strings.Split(string(data), "\n") {
				f := strings.Fields(line)
				if len(f) < 2 || strings.HasPrefix(f[0], "#") {
					continue
				}
				switch f[0] {
				case "nameserver":
					servers = append(servers, f[1])
				case "search":
					searches = f[1:]
				case "options":
					for _, o := range f[1:] {
						name, val, _ := strings.Cut(o, ":")
						addOpt(name, val)
					}
				}
			}
		}
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		for _, s := range dc.Nameservers {
			if !contains(servers, s) {
				servers = append(servers, s)
			}
		}
		for _, s := range dc.Searches {
			if !contains(searches, s) {
				searches = append(searches, s)
			}
		}
		for _, o := range dc.Options {
			v := ""
			if o.Value != nil {
				v = *o.Value
			}
			addOpt(o.Name, v)
		}
	}
	var b bytes.Buffer
	if len(searches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(searches, " "))
	}
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(optOrder) > 0 {
		opts := make([]string, 0, len(optOrder))
		for _, n := range optOrder {
			if v := options[n]; v != "" {
				opts = append(opts, n+":"+v)
			} else {
				opts = append(opts, n)
			}
		}
		fmt.Fprintf(&b, "options %s\n", strings.Join(opts, " "))
	}
	return b.Bytes()
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ensureVolumes sets up (or, every Resync, refreshes) the pod's volumes:
// directories for emptyDir, files for configMap, secret, downwardAPI and
// projected, checks for hostPath.
func (m *Manager) ensureVolumes(ctx context.Context, pod *corev1.Pod, st *podState, now time.Time) error {
	refresh := !st.volumesAt.IsZero()
	if refresh && now.Sub(st.volumesAt) < volumeRefresh*m.cfg.Resync {
		return nil
	}
	objs := m.newObjectCache(pod.Namespace)
	// A refresh may read the API server's local copy (resourceVersion
	// "0", no quorum read): a ConfigMap update reaches the files a little
	// later, as it does with the kubelet's cache, and refreshing every pod
	// stays cheap. The first set-up reads fresh.
	objs.cached = refresh
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		if err := m.setUpVolume(ctx, pod, st, objs, v); err != nil {
			return fmt.Errorf("MountVolume.SetUp failed for volume %q : %w", v.Name, err)
		}
	}
	st.volumesAt = now
	return nil
}

func (m *Manager) setUpVolume(ctx context.Context, pod *corev1.Pod, st *podState, objs *objectCache, v *corev1.Volume) error {
	dir := m.volumePath(pod.UID, v.Name)
	switch {
	case v.EmptyDir != nil:
		return setUpEmptyDir(dir, v.EmptyDir)
	case v.HostPath != nil:
		return checkHostPath(v.HostPath)
	case v.ConfigMap != nil:
		payload, err := configMapPayload(ctx, objs, v.ConfigMap.LocalObjectReference.Name, v.ConfigMap.Items, v.ConfigMap.Optional, fileMode(v.ConfigMap.DefaultMode))
		if err != nil {
			return err
		}
		return writePayload(dir, payload)
	case v.Secret != nil:
		payload, err := secretPayload(ctx, objs, v.Secret.SecretName, v.Secret.Items, v.Secret.Optional, fileMode(v.Secret.DefaultMode))
		if err != nil {
			return err
		}
		return writePayload(dir, payload)
	case v.DownwardAPI != nil:
		payload, err := m.downwardPayload(pod, st, v.DownwardAPI.Items, fileMode(v.DownwardAPI.DefaultMode))
		if err != nil {
			return err
		}
		return writePayload(dir, payload)
	case v.Projected != nil:
		payload, err := m.projectedPayload(ctx, pod, st, objs, v.Projected)
		if err != nil {
			return err
		}
		return writePayload(dir, payload)
	}
	return fmt.Errorf("volume type %v is not supported by Flotilla", volumeSourceName(v))
}

func fileMode(m *int32) os.FileMode {
	if m == nil {
		return defaultFileMod
	}
	return os.FileMode(*m) & os.ModePerm
}

// setUpEmptyDir makes the directory, mode 0777 as in the kubelet; medium
// Memory mounts a tmpfs there, sized by sizeLimit.
func setUpEmptyDir(dir string, ed *corev1.EmptyDirVolumeSource) error {
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	if ed.Medium != corev1.StorageMediumMemory {
		return os.Chmod(dir, 0o777)
	}
	if mounted, err := isMountPoint(dir); err != nil || mounted {
		return err
	}
	opts := "mode=0777"
	if ed.SizeLimit != nil && !ed.SizeLimit.IsZero() {
		opts += ",size=" + strconv.FormatInt(ed.SizeLimit.Value(), 10)
	}
	return mountTmpfs(dir, opts)
}

// checkHostPath applies a hostPath volume's type check, making the path for
// the *OrCreate types.
func checkHostPath(hp *corev1.HostPathVolumeSource) error {
	path := hp.Path
	t := corev1.HostPathUnset
	if hp.Type != nil {
		t = *hp.Type
	}
	fi, err := os.Stat(path)
	exists := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("hostPath %s: %w", path, err)
	}
	fail := func(what string) error {
		return fmt.Errorf("hostPath type check failed: %s is not a %s", path, what)
	}
	switch t {
	case corev1.HostPathUnset:
		return nil
	case corev1.HostPathDirectoryOrCreate:
		if !exists {
			return os.MkdirAll(path, 0o755)
		}
		if !fi.IsDir() {
			return fail("directory")
		}
	case corev1.HostPathDirectory:
		if !exists || !fi.IsDir() {
			return fail("directory")
		}
	case corev1.HostPathFileOrCreate:
		if !exists {
			f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				return fmt.Errorf("hostPath %s: create file: %w", path, err)
			}
			return f.Close()
		}
		if fi.IsDir() {
			return fail("file")
		}
	case corev1.HostPathFile:
		if !exists || fi.IsDir() {
			return fail("file")
		}
	case corev1.HostPathSocket:
		if !exists || fi.Mode()&os.ModeSocket == 0 {
			return fail("socket file")
		}
	case corev1.HostPathCharDev:
		if !exists || fi.Mode()&os.ModeCharDevice == 0 {
			return fail("character device")
		}
	case corev1.HostPathBlockDev:
		if !exists || fi.Mode()&os.ModeDevice == 0 || fi.Mode()&os.ModeCharDevice != 0 {
			return fail("block device")
		}
	default:
		return fmt.Errorf("hostPath type %q is not supported", t)
	}
	return nil
}

// file is one file of a configMap, secret, downwardAPI or projected volume.
type file struct {
	data []byte
	mode os.FileMode
}

func configMapPayload(ctx context.Context, objs *objectCache, name string, items []corev1.KeyToPath, optional *bool, mode os.FileMode) (map[string]file, error) {
	cm, err := objs.configMap(ctx, name)
	if err != nil {
		return nil, err
	}
	opt := optional != nil && *optional
	if cm == nil {
		if opt {
			return map[string]file{}, nil
		}
		return nil, fmt.Errorf("configmap %q not found", name)
	}
	data := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyPayload(data, items, opt, mode, "configmap")
}

func secretPayload(ctx context.Context, objs *objectCache, name string, items []corev1.KeyToPath, optional *bool, mode os.FileMode) (map[string]file, error) {
	s, err := objs.secret(ctx, name)
	if err != nil {
		return nil, err
	}
	opt := optional != nil && *optional
	if s == nil {
		if opt {
			return map[string]file{}, nil
		}
		return nil, fmt.Errorf("secret %q not found", name)
	}
	return keyPayload(s.Data, items, opt, mode, "secret")
}

// keyPayload picks the files of a configMap or secret: every key, or the
// items asked for.
func keyPayload(data map[string][]byte, items []corev1.KeyToPath, optional bool, mode os.FileMode, kind string) (map[string]file, error) {
	out := map[string]file{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = file{data: v, mode: mode}
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return nil, fmt.Errorf("%s references non-existent config key: %s", kind, it.Key)
		}
		md := mode
		if it.Mode != nil {
			md = os.FileMode(*it.Mode) & os.ModePerm
		}
		out[it.Path] = file{data: v, mode: md}
	}
	return out, nil
}

func (m *Manager) downwardPayload(pod *corev1.Pod, st *podState, items []corev1.DownwardAPIVolumeFile, mode os.FileMode) (map[string]file, error) {
	out := map[string]file{}
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = podFieldValue(pod, st, m.cfg.NodeIP(), it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			v, err = resourceFieldValue(pod, nil, it.ResourceFieldRef)
		default:
			err = fmt.Errorf("downwardAPI item %q names no field", it.Path)
		}
		if err != nil {
			return nil, err
		}
		md := mode
		if it.Mode != nil {
			md = os.FileMode(*it.Mode) & os.ModePerm
		}
		out[it.Path] = file{data: []byte(v), mode: md}
	}
	return out, nil
}

func (m *Manager) projectedPayload(ctx context.Context, pod *corev1.Pod, st *podState, objs *objectCache, p *corev1.ProjectedVolumeSource) (map[string]file, error) {
	mode := fileMode(p.DefaultMode)
	out := map[string]file{}
	for _, src := range p.Sources {
		var part map[string]file
		var err error
		switch {
		case src.ConfigMap != nil:
			part, err = configMapPayload(ctx, objs, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, mode)
		case src.Secret != nil:
			part, err = secretPayload(ctx, objs, src.Secret.Name, src.Secret.Items, src.Secret.Optional, mode)
		case src.DownwardAPI != nil:
			part, err = m.downwardPayload(pod, st, src.DownwardAPI.Items, mode)
		case src.ServiceAccountToken != nil:
			var tok string
			tok, err = m.serviceAccountToken(ctx, pod, st, src.ServiceAccountToken)
			part = map[string]file{src.ServiceAccountToken.Path: {data: []byte(tok), mode: mode}}
		default:
			err = errors.New("projected source type is not supported by Flotilla")
		}
		if err != nil {
			return nil, err
		}
		for k, v := range part {
			out[k] = v
		}
	}
	return out, nil
}

// serviceAccountToken gets a token bound to the pod through the API's
// TokenRequest, and a new one once 80% of its life has passed.
func (m *Manager) serviceAccountToken(ctx context.Context, pod *corev1.Pod, st *podState, p *corev1.ServiceAccountTokenProjection) (string, error) {
	key := p.Audience + "/" + p.Path
	if e, ok := st.tokens[key]; ok && time.Now().Before(e.refresh) {
		return e.token, nil
	}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	exp := int64(3600)
	if p.ExpirationSeconds != nil {
		exp = *p.ExpirationSeconds
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if p.Audience != "" {
		req.Spec.Audiences = []string{p.Audience}
	}
	out, err := m.cfg.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("fetch token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	life := time.Duration(exp) * time.Second
	if !out.Status.ExpirationTimestamp.IsZero() {
		life = time.Until(out.Status.ExpirationTimestamp.Time)
	}
	st.tokens[key] = tokenEntry{token: out.Status.Token, refresh: time.Now().Add(life * 8 / 10)}
	return out.Status.Token, nil
}

// writePayload puts files into dir the way the kubelet's atomic writer
// does, so that a container never sees half an update: the files go into a
// fresh hidden directory, the "..data" symlink is switched to it with one
// rename, and each top-level name is a symlink through "..data". Nothing
// is written when the content is unchanged.
func writePayload(dir string, payload map[string]file) error {
	for p := range payload {
		if err := checkRelPath(p); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	old, _ := os.Readlink(filepath.Join(dir, dataLink))
	if old != "" && payloadEqual(filepath.Join(dir, old), payload) {
		return nil
	}
	ts, err := os.MkdirTemp(dir, ".."+time.Now().UTC().Format("2006_01_02_15_04_05.")+"")
	if err != nil {
		return err
	}
	if err := os.Chmod(ts, 0o755); err != nil {
		return err
	}
	for _, p := range sortedKeys(payload) {
		f := payload[p]
		full := filepath.Join(ts, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(full, f.data, f.mode); err != nil {
			return err
		}
		if err := os.Chmod(full, f.mode); err != nil {
			return err
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Base(ts), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, dataLink)); err != nil {
		return err
	}
	tops := map[string]bool{}
	for p := range payload {
		top := strings.Split(p, "/")[0]
		tops[top] = true
		link := filepath.Join(dir, top)
		if target, err := os.Readlink(link); err == nil && target == filepath.Join(dataLink, top) {
			continue
		}
		_ = os.RemoveAll(link)
		if err := os.Symlink(filepath.Join(dataLink, top), link); err != nil {
			return err
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		name := e.Name()
		switch {
		case strings.HasPrefix(name, ".."):
			if name != dataLink && name != filepath.Base(ts) {
				_ = os.RemoveAll(filepath.Join(dir, name))
			}
		case !tops[name]:
			_ = os.RemoveAll(filepath.Join(dir, name))
		}
	}
	return nil
}

// checkRelPath refuses a payload path that could leave the volume.
func checkRelPath(p string) error {
	if p == "" || filepath.IsAbs(p) || strings.HasPrefix(p, "..") {
		return fmt.Errorf("invalid volume file path %q", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." {
			return fmt.Errorf("invalid volume file path %q", p)
		}
	}
	return nil
}

// payloadEqual reports whether dir holds exactly payload.
func payloadEqual(dir string, payload map[string]file) bool {
	n := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		f, ok := payload[rel]
		if !ok {
			return errors.New("extra file")
		}
		fi, err := d.Info()
		if err != nil || fi.Mode().Perm() != f.mode {
			return errors.New("mode differs")
		}
		data, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(data, f.data) {
			return errors.New("content differs")
		}
		n++
		return nil
	})
	return err == nil && n == len(payload)
}

// writeFileAtomic replaces path by a file with data (a rename, so a
// reader sees the old or the new content, never a mix).
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, data) {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Chmod(tmp.Name(), mode); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// containerMounts are the bind mounts of one container: its volumeMounts,
// then the pod's etc files and its termination message file unless the
// container mounts something at those paths itself.
func (m *Manager) containerMounts(pod *corev1.Pod, c *corev1.Container, attempt int, vars func(string) (string, bool)) ([]runtime.Mount, error) {
	vols := map[string]*corev1.Volume{}
	for i := range pod.Spec.Volumes {
		vols[pod.Spec.Volumes[i].Name] = &pod.Spec.Volumes[i]
	}
	var out []runtime.Mount
	targets := map[string]bool{}
	for _, vm := range c.VolumeMounts {
		v := vols[vm.Name]
		if v == nil {
			return nil, fmt.Errorf("volumeMount %q names no volume of the pod", vm.Name)
		}
		root := m.volumePath(pod.UID, v.Name)
		readOnly := vm.ReadOnly
		switch {
		case v.HostPath != nil:
			root = v.HostPath.Path
		case v.ConfigMap != nil, v.Secret != nil, v.DownwardAPI != nil, v.Projected != nil:
			readOnly = true // always, as in the kubelet
		}
		src := root
		sub := vm.SubPath
		if vm.SubPathExpr != "" {
			sub = expandVars(vm.SubPathExpr, vars)
		}
		if sub != "" {
			var err error
			if src, err = subPath(root, sub, v.EmptyDir != nil || v.HostPath != nil); err != nil {
				return nil, fmt.Errorf("volumeMount %q: %w", vm.Name, err)
			}
		}
		out = append(out, runtime.Mount{HostPath: src, ContainerPath: vm.MountPath, ReadOnly: readOnly})
		targets[filepath.Clean(vm.MountPath)] = true
	}
	dir := m.podDir(pod.UID)
	for _, f := range []struct{ target, name string }{
		{"/etc/hosts", etcHostsFile}, {"/etc/hostname", etcHostname}, {"/etc/resolv.conf", etcResolvConf},
	} {
		if !targets[f.target] {
			out = append(out, runtime.Mount{HostPath: filepath.Join(dir, f.name), ContainerPath: f.target})
		}
	}
	tpath := c.TerminationMessagePath
	if tpath == "" {
		tpath = corev1.TerminationMessagePathDefault
	}
	if !targets[filepath.Clean(tpath)] {
		// A fresh, empty file per attempt; mode 0666 so that a non-root
		// process can write its termination message.
		host := m.termLogPath(pod.UID, c.Name, attempt)
		if err := os.MkdirAll(filepath.Dir(host), 0o750); err != nil {
			return nil, fmt.Errorf("make termination message file: %w", err)
		}
		if err := os.WriteFile(host, nil, 0o666); err != nil {
			return nil, fmt.Errorf("make termination message file: %w", err)
		}
		if err := os.Chmod(host, 0o666); err != nil {
			return nil, fmt.Errorf("make termination message file: %w", err)
		}
		out = append(out, runtime.Mount{HostPath: host, ContainerPath: tpath})
	}
	return out, nil
}

// subPath resolves a volumeMount's subPath inside root, making it as a
// directory when missing (for emptyDir and hostPath), and refuses one that
// leaves the volume through "..", an absolute path or a symlink.
func subPath(root, sub string, create bool) (string, error) {
	if filepath.IsAbs(sub) {
		return "", fmt.Errorf("subPath %q must be relative", sub)
	}
	for _, part := range strings.Split(filepath.ToSlash(sub), "/") {
		if part == ".." {
			return "", fmt.Errorf("subPath %q must not contain '..'", sub)
		}
	}
	full := filepath.Join(root, sub)
	if _, err := os.Lstat(full); errors.Is(err, fs.ErrNotExist) && create {
		mode := os.FileMode(0o755)
		if fi, err := os.Stat(root); err == nil {
			mode = fi.Mode().Perm()
		}
		if err := os.MkdirAll(full, mode); err != nil {
			return "", fmt.Errorf("make subPath %q: %w", sub, err)
		}
		_ = os.Chmod(full, mode)
	}
	realRoot, err := filepath.EvalSymlinks(root)
	if err != nil {
		return "", fmt.Errorf("volume root: %w", err)
	}
	real, err := filepath.EvalSymlinks(full)
	if err != nil {
		return "", fmt.Errorf("subPath %q: %w", sub, err)
	}
	if real != realRoot && !strings.HasPrefix(real, realRoot+string(filepath.Separator)) {
		return "", fmt.Errorf("subPath %q leaves the volume", sub)
	}
	return real, nil
}

// tearDownVolumes unmounts and removes the pod's volumes (a finished pod
// keeps its containers for logs but no longer needs them).
func (m *Manager) tearDownVolumes(uid types.UID) error {
	dir := filepath.Join(m.podDir(uid), volumesDir)
	if err := unmountUnder(dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// removePodDir unmounts everything under the pod's directory and removes it.
func (m *Manager) removePodDir(uid types.UID) error {
	dir := m.podDir(uid)
	if err := unmountUnder(dir); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove pod directory: %w", err)
	}
	return nil
}

// volumeSourceName names the source a volume sets, for messages.
func volumeSourceName(v *corev1.Volume) string {
	names := volumeSources(v.VolumeSource)
	if len(names) == 0 {
		return "(none)"
	}
	return strings.Join(names, ",")
}

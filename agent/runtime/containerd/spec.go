package containerd

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/containerd/containers"
	"github.com/containerd/containerd/oci"
	"github.com/containerd/containerd/pkg/cap"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"flotilla/agent/runtime"
)

// ErrInvalidSpec is returned for a ContainerSpec that cannot be run as
// given (missing fields, relative paths, unknown capabilities).
var ErrInvalidSpec = errors.New("invalid container spec")

const (
	cfsPeriod   = 100000 // µs, the kernel's and the kubelet's default
	minCFSQuota = 1000   // µs, the kernel's minimum
	minShares   = 2      // the kernel's minimum cpu.shares
)

// ContainerID is the ID of a pod's container at one attempt: the first 32
// hex digits of a SHA-256 over the three, so a create retried after a crash
// finds the container it already made.
func ContainerID(podUID, name string, attempt int) string {
	sum := sha256.Sum256([]byte(podUID + "\x00" + name + "\x00" + strconv.Itoa(attempt)))
	return hex.EncodeToString(sum[:16])
}

// validate rejects what would otherwise fail late, deep in runc, with a
// message that does not name the field.
func validate(s runtime.ContainerSpec) error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, fmt.Sprintf(format, a...))
	}
	switch {
	case s.PodUID == "":
		return bad("pod UID is empty")
	case s.Name == "":
		return bad("container name is empty")
	case s.Attempt < 0:
		return bad("attempt %d is negative", s.Attempt)
	case s.Image == "":
		return bad("image is empty")
	case s.LogPath != "" && !path.IsAbs(s.LogPath):
		return bad("log path %q is not absolute", s.LogPath)
	case s.NetNSPath != "" && !path.IsAbs(s.NetNSPath):
		return bad("network namespace path %q is not absolute", s.NetNSPath)
	case s.WorkingDir != "" && !path.IsAbs(s.WorkingDir):
		return bad("working dir %q is not absolute", s.WorkingDir)
	case s.CPUMilli < 0 || s.MemoryLimit < 0:
		return bad("negative resource limit (cpu %dm, memory %d)", s.CPUMilli, s.MemoryLimit)
	case s.RunAsUser != nil && (*s.RunAsUser < 0 || *s.RunAsUser > 1<<32-1):
		return bad("runAsUser %d out of range", *s.RunAsUser)
	case s.RunAsGroup != nil && (*s.RunAsGroup < 0 || *s.RunAsGroup > 1<<32-1):
		return bad("runAsGroup %d out of range", *s.RunAsGroup)
	}
	if s.NetNSPath != "" {
		if _, err := os.Stat(s.NetNSPath); err != nil {
			return bad("network namespace: %v", err)
		}
	}
	for _, m := range s.Mounts {
		if !path.IsAbs(m.HostPath) || !path.IsAbs(m.ContainerPath) || path.Clean(m.ContainerPath) == "/" {
			return bad("mount %q → %q: both must be absolute and the target not /", m.HostPath, m.ContainerPath)
		}
	}
	for _, e := range s.Env {
		if k, _, ok := strings.Cut(e, "="); !ok || k == "" {
			return bad("env entry %q is not K=V", e)
		}
	}
	for _, list := range [][]string{s.CapAdd, s.CapDrop} {
		for _, c := range list {
			if _, err := capName(c); err != nil {
				return bad("%v", err)
			}
		}
	}
	return nil
}

// capName turns "net_admin", "NET_ADMIN" or "CAP_NET_ADMIN" into
// "CAP_NET_ADMIN"; "ALL" stays "ALL".
func capName(c string) (string, error) {
	u := strings.ToUpper(strings.TrimSpace(c))
	if u == "ALL" {
		return u, nil
	}
	if !strings.HasPrefix(u, "CAP_") {
		u = "CAP_" + u
	}
	if !slices.Contains(cap.Known(), u) {
		return "", fmt.Errorf("unknown capability %q", c)
	}
	return u, nil
}

// processArgs applies Kubernetes' rules: Command replaces the entrypoint
// and drops the image's cmd; Args replaces the cmd.
func processArgs(cfg ocispec.ImageConfig, command, args []string) ([]string, error) {
	var out []string
	switch {
	case len(command) > 0:
		out = append(append(out, command...), args...)
	case len(args) > 0:
		out = append(append(out, cfg.Entrypoint...), args...)
	default:
		out = append(append(out, cfg.Entrypoint...), cfg.Cmd...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: no command: neither the pod nor the image gives one", ErrInvalidSpec)
	}
	return out, nil
}

// specOpts builds the container's OCI spec on containerd's defaults
// (namespaces, mounts, capabilities, masked paths). The image config goes
// first so the pod's settings override it. containerd's snapshot must be
// set on the container before these run: user lookups read the rootfs.
func (r *Runtime) specOpts(img oci.Image, ic ocispec.Image, s runtime.ContainerSpec) ([]oci.SpecOpts, error) {
	args, err := processArgs(ic.Config, s.Command, s.Args)
	if err != nil {
		return nil, err
	}
	opts := []oci.SpecOpts{
		oci.WithImageConfig(img),
		oci.WithProcessArgs(args...),
	}
	env := []string{}
	if s.Hostname != "" {
		opts = append(opts, oci.WithHostname(s.Hostname))
		env = append(env, "HOSTNAME="+s.Hostname)
	}
	env = append(env, s.Env...)
	opts = append(opts, oci.WithEnv(env))
	if s.WorkingDir != "" {
		opts = append(opts, oci.WithProcessCwd(s.WorkingDir))
	}

	if s.NetNSPath != "" {
		opts = append(opts, oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.NetworkNamespace, Path: s.NetNSPath}))
	} else {
		opts = append(opts, oci.WithHostNamespace(specs.NetworkNamespace))
	}

	if len(s.Mounts) > 0 {
		ms := make([]specs.Mount, 0, len(s.Mounts))
		for _, m := range s.Mounts {
			mode := "rw"
			if m.ReadOnly {
				mode = "ro"
			}
			ms = append(ms, specs.Mount{
				Destination: path.Clean(m.ContainerPath),
				Type:        "bind",
				Source:      m.HostPath,
				// rprivate: mounts made later on the host under a volume
				// do not propagate into a running container, as in the
				// kubelet's default (None).
				Options: []string{"rbind", "rprivate", mode},
			})
		}
		opts = append(opts, oci.WithMounts(ms))
	}

	if s.MemoryLimit > 0 {
		opts = append(opts, oci.WithMemoryLimit(uint64(s.MemoryLimit)))
		if r.swapLimit {
			// memory+swap = memory: no swapping past the limit, so the
			// kernel OOM-kills instead of paging the container out.
			opts = append(opts, oci.WithMemorySwap(s.MemoryLimit))
		}
	}
	if s.CPUMilli > 0 {
		quota := max(s.CPUMilli*cfsPeriod/1000, minCFSQuota)
		opts = append(opts, oci.WithCPUCFS(quota, cfsPeriod))
	}
	if s.CPUShares > 0 {
		opts = append(opts, oci.WithCPUShares(max(s.CPUShares, minShares)))
	}

	if s.RunAsUser != nil {
		opts = append(opts, oci.WithUserID(uint32(*s.RunAsUser)))
	}
	if s.RunAsGroup != nil {
		gid := uint32(*s.RunAsGroup)
		opts = append(opts, func(_ context.Context, _ oci.Client, _ *containers.Container, sp *oci.Spec) error {
			sp.Process.User.GID = gid
			return nil
		})
	}

	if s.Privileged {
		opts = append(opts, oci.WithPrivileged, oci.WithAllDevicesAllowed, oci.WithHostDevices)
	}
	if s.ReadOnlyRootfs {
		opts = append(opts, oci.WithRootFSReadonly())
	}
	if caps, ok := capabilityOpt(s.CapAdd, s.CapDrop); ok && !s.Privileged {
		opts = append(opts, caps)
	}
	if s.TTY {
		opts = append(opts, oci.WithTTY)
	}
	return opts, nil
}

// capabilityOpt applies CapDrop then CapAdd to the default set, as the
// kubelet does ("ALL" in drop empties it first). Names were validated.
func capabilityOpt(add, drop []string) (oci.SpecOpts, bool) {
	if len(add) == 0 && len(drop) == 0 {
		return nil, false
	}
	norm := func(list []string) (names []string, all bool) {
		for _, c := range list {
			n, _ := capName(c)
			if n == "ALL" {
				all = true
				continue
			}
			names = append(names, n)
		}
		return names, all
	}
	addNames, addAll := norm(add)
	dropNames, dropAll := norm(drop)
	var opts []oci.SpecOpts
	if dropAll {
		opts = append(opts, oci.WithCapabilities(nil))
	} else if len(dropNames) > 0 {
		opts = append(opts, oci.WithDroppedCapabilities(dropNames))
	}
	if addAll {
		opts = append(opts, oci.WithCapabilities(cap.Known()))
	} else if len(addNames) > 0 {
		opts = append(opts, oci.WithAddedCapabilities(addNames))
	}
	return oci.Compose(opts...), true
}

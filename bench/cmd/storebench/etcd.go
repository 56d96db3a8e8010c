package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcdMember is one etcd process of the baseline cluster.
type etcdMember struct {
	name       string
	ip         string
	clientPort int
	peerPort   int
	dataDir    string
	proc       *proc
}

func (m *etcdMember) clientURL() string { return fmt.Sprintf("http://%s:%d", m.ip, m.clientPort) }
func (m *etcdMember) peerURL() string   { return fmt.Sprintf("http://%s:%d", m.ip, m.peerPort) }

// etcdCluster is a 3-member etcd cluster on loopback with etcd's default
// (production) timings: heartbeat 100 ms, election 1 s.
type etcdCluster struct {
	members []*etcdMember
}

// ensureEtcd returns the etcd binary, installing Debian's etcd-server when it
// is missing and we may (root). An empty path means: skip the etcd side.
func ensureEtcd(log interface{ Info(string, ...any) }) (string, error) {
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	if os.Geteuid() != 0 {
		return "", errors.New("etcd is not installed and we are not root: apt-get install etcd-server")
	}
	log.Info("etcd not found; installing Debian's etcd-server with apt-get")
	install := func() error {
		cmd := exec.Command("apt-get", "install", "-y", "--no-install-recommends", "etcd-server")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get install etcd-server: %w: %s", err, lastLines(string(out), 5))
		}
		return nil
	}
	if err := install(); err != nil {
		// The package lists may be missing or stale on a fresh machine.
		if out, uerr := exec.Command("apt-get", "update").CombinedOutput(); uerr != nil {
			return "", fmt.Errorf("apt-get update: %w: %s", uerr, lastLines(string(out), 5))
		}
		if err := install(); err != nil {
			return "", err
		}
	}
	return exec.LookPath("etcd")
}

func etcdVersion(bin string) string {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimPrefix(strings.SplitN(string(out), "\n", 2)[0], "etcd Version: ")
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// startEtcd starts three fresh members on 127.0.0.1, .2 and .3 under dir
// and waits for a leader.
func startEtcd(ctx context.Context, h *harness, bin, dir string) (*etcdCluster, error) {
	c := &etcdCluster{}
	var initial []string
	for i := 1; i <= 3; i++ {
		ip := fmt.Sprintf("127.0.0.%d", i)
		cp, err := h.freePort(ip)
		if err != nil {
			return nil, err
		}
		pp, err := h.freePort(ip)
		if err != nil {
			return nil, err
		}
		m := &etcdMember{name: fmt.Sprintf("e%d", i), ip: ip, clientPort: cp, peerPort: pp,
			dataDir: filepath.Join(dir, fmt.Sprintf("e%d", i))}
		c.members = append(c.members, m)
		initial = append(initial, m.name+"="+m.peerURL())
	}
	for _, m := range c.members {
		args := []string{
			"--name", m.name,
			"--data-dir", m.dataDir,
			"--listen-client-urls", m.clientURL(),
			"--advertise-client-urls", m.clientURL(),
			"--listen-peer-urls", m.peerURL(),
			"--initial-advertise-peer-urls", m.peerURL(),
			"--initial-cluster", strings.Join(initial, ","),
			"--initial-cluster-token", "storebench",
			"--initial-cluster-state", "new",
			"--logger", "zap",
			"--log-outputs", "stderr",
			"--log-level", "warn",
		}
		p, err := h.start(m.name, bin, args, filepath.Join(dir, m.name+".log"))
		if err != nil {
			c.stop()
			return nil, err
		}
		m.proc = p
	}
	if _, err := c.leader(ctx, 30*time.Second); err != nil {
		c.stop()
		return nil, fmt.Errorf("etcd cluster did not elect a leader (logs in %s): %w", dir, err)
	}
	return c, nil
}

// leader returns the leader member, asking each member's status.
func (c *etcdCluster) leader(ctx context.Context, timeout time.Duration) (*etcdMember, error) {
	var leader *etcdMember
	err := waitFor(ctx, timeout, 100*time.Millisecond, "etcd leader", func(ctx context.Context) error {
		for _, m := range c.members {
			if m.proc.exited() {
				return fmt.Errorf("etcd member %s exited: %v", m.name, m.proc.err)
			}
		}
		cli, err := newEtcdClient(c.members[0].clientURL(), c.members[1].clientURL(), c.members[2].clientURL())
		if err != nil {
			return err
		}
		defer cli.Close()
		for _, m := range c.members {
			sctx, cancel := context.WithTimeout(ctx, time.Second)
			st, err := cli.Status(sctx, m.clientURL())
			cancel()
			if err != nil {
				continue
			}
			if st.Leader != 0 && st.Leader == st.Header.MemberId {
				leader = m
				return nil
			}
		}
		return errors.New("no member reports itself leader")
	})
	return leader, err
}

func newEtcdClient(endpoints ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
}

func (c *etcdCluster) stop() {
	for _, m := range c.members {
		if m.proc != nil {
			m.proc.kill()
		}
	}
}

// etcdWriter returns a writeFunc over conns client connections to the
// leader only (as the Flotilla side writes to its leader), and a closer.
// op "put" is a plain Put; "create" is a Txn guarded by
// CreateRevision(key) == 0, what kube-apiserver sends for a create.
func etcdWriter(leader *etcdMember, conns int, op, run string, value []byte) (writeFunc, func(), error) {
	clients := make([]*clientv3.Client, conns)
	closeAll := func() {
		for _, cli := range clients {
			if cli != nil {
				_ = cli.Close()
			}
		}
	}
	for i := range clients {
		cli, err := newEtcdClient(leader.clientURL())
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		clients[i] = cli
	}
	val := string(value)
	write := func(ctx context.Context, worker, seq int) error {
		cli := clients[worker%len(clients)]
		key := benchKey(run, worker, seq)
		switch op {
		case "create":
			resp, err := cli.Txn(ctx).
				If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
				Then(clientv3.OpPut(key, val)).
				Commit()
			if err != nil {
				return err
			}
			if !resp.Succeeded {
				return fmt.Errorf("create %s: key exists", key)
			}
			return nil
		default:
			_, err := cli.Put(ctx, key, val)
			return err
		}
	}
	return write, closeAll, nil
}

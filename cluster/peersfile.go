package cluster

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// peersFileName keeps the gossip addresses of the other servers last seen
// alive. A restarted server joins them as well as its --join addresses: a
// seed server restarted with only itself to join (the first server of a
// --bootstrap-expect cluster usually is) would otherwise join nobody, never
// learn the leader's API address, and stay cut off while its Raft peers
// replicate to it.
const peersFileName = "gossip-peers"

// readPeers returns the remembered server gossip addresses (none when the
// file does not exist).
func readPeers(dataDir string) ([]string, error) {
	path := filepath.Join(dataDir, peersFileName)
	buf, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read gossip peers %s: %w", path, err)
	}
	var out []string
	for _, line := range strings.Split(string(buf), "\n") {
		line = strings.TrimSpace(line)
		if _, _, err := net.SplitHostPort(line); line != "" && err == nil {
			out = append(out, line)
		}
	}
	return out, nil
}

// writePeers replaces the remembered addresses atomically.
func writePeers(dataDir string, addrs []string) error {
	path := filepath.Join(dataDir, peersFileName)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strings.Join(addrs, "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("write gossip peers %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write gossip peers %s: %w", path, err)
	}
	return nil
}

// alivePeerServers are the gossip addresses of the other alive servers, sorted.
func (n *Node) alivePeerServers() []string {
	var out []string
	for _, m := range n.gossip.list(RoleServer) {
		if m.Name != n.cfg.Name && m.Status == StatusAlive {
			out = append(out, m.Addr)
		}
	}
	slices.Sort(out)
	return out
}

// rememberPeers writes the alive servers' addresses whenever the set
// changes, until the node stops. An empty set is not written: a server that
// lost everyone keeps the last addresses it knew.
func (n *Node) rememberPeers(changes <-chan struct{}) {
	defer n.wg.Done()
	var last []string
	for {
		if cur := n.alivePeerServers(); len(cur) > 0 && !slices.Equal(cur, last) {
			if err := writePeers(n.cfg.DataDir, cur); err != nil {
				n.log.Warn("remember gossip peers", "err", err)
			} else {
				last = cur
			}
		}
		select {
		case <-changes:
		case <-n.ctx.Done():
			return
		}
	}
}

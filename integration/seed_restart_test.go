package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"flotilla/cluster"
)

// members asks s for the gossip pool.
func members(t testing.TB, s *server) ([]cluster.Member, error) {
	c := adminHTTP(t, nil, s, 3*time.Second)
	resp, err := c.Get("https://" + s.apiAddr() + "/flotilla/v1/operator/members")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s", resp.Status, b)
	}
	var ms []cluster.Member
	return ms, json.Unmarshal(b, &ms)
}

// TestProcessSeedRestart: the seed server (every server's only --join
// address, itself included) is killed, declared dead by gossip, and
// restarted with the same flags. It must find the others again (from the
// peers it remembered) and serve: know the leader and take writes.
func TestProcessSeedRestart(t *testing.T) {
	servers := startThree(t, 6)
	seed, other := servers[0], servers[1]
	// Let every server remember its peers before the kill.
	waitFor(t, 10*time.Second, "the peers file", func() (bool, string) {
		return fileExists(seed.dataDir + "/gossip-peers"), "no " + seed.dataDir + "/gossip-peers"
	})
	seed.kill()
	waitFor(t, 30*time.Second, "gossip to declare the seed dead", func() (bool, string) {
		ms, err := members(t, other)
		if err != nil {
			return false, err.Error()
		}
		for _, m := range ms {
			if m.Name == seed.name {
				return m.Status != cluster.StatusAlive, "seed is " + m.Status
			}
		}
		return true, "seed unknown"
	})
	seed.start()
	waitFor(t, 30*time.Second, "the restarted seed to know the leader and take a write", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		name := fmt.Sprintf("after-restart-%d", time.Now().UnixNano())
		out, err := flotilla(ctx, "kubectl", "--kubeconfig", seed.dataDir+"/kubeconfig",
			"create", "configmap", name, "--from-literal=k=v")
		return err == nil, out
	})
}

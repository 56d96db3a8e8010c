package cluster_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"flotilla/agent/gossip"
	"flotilla/cluster"
	"flotilla/cluster/clustertest"
)

func randomKey(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, cluster.GossipKeySize)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

// encryptedCluster is n servers gossiping with key, saving their keyring
// file in their data dir, the store record sealed with real AES-GCM.
func encryptedCluster(t *testing.T, n int, key []byte) *clustertest.Cluster {
	t.Helper()
	seal := newSealer(t)
	return newTestCluster(t, n, clustertest.Options{Configure: func(i int, cfg *cluster.Config) {
		cfg.GossipKeys = [][]byte{key}
		cfg.KeyringFile = filepath.Join(cfg.DataDir, "gossip.json")
		cfg.Seal = seal
	}})
}

// startAgent starts an agent gossip member joining c with keys.
func startAgent(t *testing.T, ctx context.Context, name string, c *clustertest.Cluster, keys [][]byte) (*gossip.Pool, error) {
	t.Helper()
	var join []string
	for _, s := range c.Running() {
		join = append(join, s.Node.GossipAddr())
	}
	p, err := gossip.Start(ctx, gossip.Config{
		Name:   name,
		Bind:   "127.0.0.1",
		Join:   join,
		Timing: "local",
		Keys:   keys,
		Logger: clustertest.Logger(name),
	})
	if err == nil {
		t.Cleanup(p.Shutdown)
	}
	return p, err
}

func memberStatus(members []cluster.Member, name string) string {
	for _, m := range members {
		if m.Name == name {
			return m.Status
		}
	}
	return ""
}

// TestGossipEncryptionRefusesOutsiders: a server or an agent without the
// cluster's gossip key, or with another key, cannot join; one with the key
// can.
func TestGossipEncryptionRefusesOutsiders(t *testing.T) {
	key := randomKey(t)
	c := encryptedCluster(t, 1, key)
	srv := c.Server(0)
	waitFor(t, func() bool { kv, _ := srv.Node.Store().Get(cluster.GossipKeyringKey); return kv != nil }, "the leader to store the keyring")

	for _, tc := range []struct {
		name   string
		server bool
		keys   [][]byte
		joins  bool
	}{
		{"server without a key", true, nil, false},
		{"server with another key", true, [][]byte{randomKey(t)}, false},
		{"agent without a key", false, nil, false},
		{"agent with another key", false, [][]byte{randomKey(t)}, false},
		{"agent with the key", false, [][]byte{key}, true},
		{"server with the key", true, [][]byte{key}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := strings.ReplaceAll(tc.name, " ", "-")
			var (
				err     error
				members func() []cluster.Member
			)
			if tc.server {
				cfg := testConfig(t, t.TempDir())
				cfg.Name = name
				cfg.Join = []string{srv.Node.GossipAddr()}
				cfg.JoinTimeout = 2 * time.Second
				cfg.GossipKeys = tc.keys
				cfg.Logger = clustertest.Logger(name)
				n, nerr := cluster.New(cfg)
				if nerr != nil {
					t.Fatal(nerr)
				}
				t.Cleanup(func() { _ = n.Close() })
				err = n.Start(ctxT(t))
				members = n.Members
			} else {
				ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				var p *gossip.Pool
				p, err = startAgent(t, ctx, name, c, tc.keys)
				if p != nil {
					members = p.Members
				}
			}
			if !tc.joins {
				if err == nil {
					t.Fatalf("joined without the key")
				}
				if s := memberStatus(srv.Node.Members(), name); s == cluster.StatusAlive {
					t.Fatalf("the cluster sees the outsider %s", s)
				}
				return
			}
			if err != nil {
				t.Fatalf("join with the key: %v", err)
			}
			waitFor(t, func() bool {
				return memberStatus(srv.Node.Members(), name) == cluster.StatusAlive &&
					memberStatus(members(), srv.Name) == cluster.StatusAlive
			}, "%s and the server to see each other", name)
		})
	}
	// Nobody refused above ever showed up, even later.
	for _, m := range srv.Node.Members() {
		if strings.Contains(m.Name, "without") || strings.Contains(m.Name, "another") {
			t.Errorf("the cluster knows the outsider %+v", m)
		}
	}
}

// TestGossipKeyRotation: a rotation asked of a follower (forwarded to the
// leader) over a 3-server cluster and an agent keeps every member alive
// throughout and ends with only the new key everywhere; a server down
// during a rotation gets the keys from Raft when it comes back and gossips
// again; an agent cut off during one gets back in once it has the keys.
func TestGossipKeyRotation(t *testing.T) {
	k0 := randomKey(t)
	c := encryptedCluster(t, 3, k0)
	for _, s := range c.Running() {
		waitFor(t, func() bool { kv, _ := s.Node.Store().Get(cluster.GossipKeyringKey); return kv != nil }, "%s to have the keyring record", s.Name)
		kv, _ := s.Node.Store().Get(cluster.GossipKeyringKey)
		if bytes.Contains(kv.Value, []byte("keys")) {
			t.Fatalf("keyring stored in the clear: %q", kv.Value)
		}
	}
	agent, err := startAgent(t, ctxT(t), "agent-0", c, [][]byte{k0})
	if err != nil {
		t.Fatal(err)
	}

	// The agent's keyring poll, as the agent command does it, through a
	// server's endpoint.
	var pollMu sync.Mutex
	pollFrom := c.Followers()[0]
	poll := func() error {
		pollMu.Lock()
		s := pollFrom
		pollMu.Unlock()
		var kr cluster.GossipKeyringBody
		if err := getJSONErr("http://"+s.Node.APIAddr()+"/flotilla/v1/gossip/keyring", &kr); err != nil {
			return err
		}
		return agent.SetKeys(kr.Keys)
	}
	var pollPaused atomic.Bool
	stopPoll := runEvery(20*time.Millisecond, func() {
		if pollPaused.Load() {
			return
		}
		if err := poll(); err != nil {
			t.Logf("poll the keyring: %v", err)
		}
	})
	defer stopPoll()

	names := []string{"agent-0"}
	for _, s := range c.Running() {
		names = append(names, s.Name)
	}
	views := func() map[string]func() []cluster.Member {
		v := map[string]func() []cluster.Member{"agent-0": agent.Members}
		for _, s := range c.Running() {
			v[s.Name] = s.Node.Members
		}
		return v
	}
	allAlive := func() error {
		for viewer, members := range views() {
			ms := members()
			for _, name := range names {
				if st := memberStatus(ms, name); st != cluster.StatusAlive {
					return fmt.Errorf("%s sees %s %q", viewer, name, st)
				}
			}
		}
		return nil
	}
	waitFor(t, func() bool { return allAlive() == nil }, "everyone to see everyone alive")

	t.Run("rotate through a follower", func(t *testing.T) {
		// Watch liveness all along the rotation.
		var (
			mu     sync.Mutex
			broken []string
		)
		stopWatch := runEvery(10*time.Millisecond, func() {
			if err := allAlive(); err != nil {
				mu.Lock()
				broken = append(broken, err.Error())
				mu.Unlock()
			}
		})
		// The agent does not poll at first: the servers install the new
		// key, and nobody may make it primary while the agent lacks it.
		pollPaused.Store(true)
		f := c.Followers()[1]
		type answer struct {
			status int
			body   []byte
			err    error
		}
		done := make(chan answer, 1)
		go func() {
			req, _ := http.NewRequestWithContext(ctxT(t), http.MethodPost, "http://"+f.Node.APIAddr()+"/flotilla/v1/operator/gossip/rotate", nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				done <- answer{err: err}
				return
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			done <- answer{status: resp.StatusCode, body: body}
		}()
		k0fp := cluster.KeyFingerprint(k0)
		waitFor(t, func() bool {
			for _, s := range c.Running() {
				keys, err := s.Node.GossipKeyring()
				if err != nil || len(keys) != 2 {
					return false
				}
			}
			return true
		}, "the servers to install a second key")
		for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			for _, s := range c.Running() {
				if keys, _ := s.Node.GossipKeyring(); cluster.KeyFingerprint(keys[0]) != k0fp {
					t.Fatalf("%s made the new key primary while the agent lacks it", s.Name)
				}
			}
		}
		pollPaused.Store(false)
		a := <-done
		stopWatch()
		if a.err != nil {
			t.Fatal(a.err)
		}
		resp, body := &http.Response{StatusCode: a.status, Status: http.StatusText(a.status)}, a.body
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("rotate via follower %s: %s: %s", f.Name, resp.Status, body)
		}
		var rb cluster.GossipRotateBody
		if err := json.Unmarshal(body, &rb); err != nil || len(rb.Keys) != 1 || rb.Keys[0] == cluster.KeyFingerprint(k0) {
			t.Fatalf("rotate answer %s: %v", body, err)
		}
		if len(broken) > 0 {
			t.Errorf("members not alive during the rotation (%d samples), first: %s", len(broken), broken[0])
		}
		checkOnlyKey(t, c, agent, names, rb.Keys[0])
	})

	var missed *clustertest.Server
	t.Run("a server down during a rotation", func(t *testing.T) {
		missed = c.Followers()[0]
		pollMu.Lock()
		pollFrom = c.Leader()
		pollMu.Unlock()
		before := missed.Node.GossipKeyring
		oldKeys, err := before()
		if err != nil {
			t.Fatal(err)
		}
		c.Kill(missed.Index)
		waitFor(t, func() bool {
			return memberStatus(c.Leader().Node.Members(), missed.Name) == cluster.StatusDead
		}, "the leader to see %s dead", missed.Name)
		if err := c.Followers()[0].Node.RotateGossipKey(ctxT(t)); err != nil {
			t.Fatalf("rotate with a server down: %v", err)
		}
		newKeys, err := c.Leader().Node.GossipKeyring()
		if err != nil || len(newKeys) != 1 || bytes.Equal(newKeys[0], oldKeys[0]) {
			t.Fatalf("keyring after the rotation: %d keys, %v", len(newKeys), err)
		}
		// It restarts with the old key from its keyring file: gossip
		// refuses it until Raft hands it the new keyring.
		if got, _ := cluster.LoadKeyringFile(missed.Config.KeyringFile); cluster.KeyFingerprints(got) != cluster.KeyFingerprints(oldKeys) {
			t.Fatalf("%s's keyring file before restart: %s", missed.Name, cluster.KeyFingerprints(got))
		}
		s := c.Restart(missed.Index)
		waitFor(t, func() bool { return allAlive() == nil }, "everyone, %s included, to see everyone alive", s.Name)
		checkOnlyKey(t, c, agent, names, cluster.KeyFingerprint(newKeys[0]))
	})

	t.Run("an agent cut off during a rotation", func(t *testing.T) {
		stopPoll()
		// A key nobody else has cuts the agent off, as a partition would.
		if err := agent.SetKeys([][]byte{randomKey(t)}); err != nil {
			t.Fatal(err)
		}
		leader := c.Leader()
		waitFor(t, func() bool {
			return memberStatus(leader.Node.Members(), "agent-0") == cluster.StatusDead
		}, "the leader to see the agent dead")
		if err := leader.Node.RotateGossipKey(ctxT(t)); err != nil {
			t.Fatalf("rotate with the agent cut off: %v", err)
		}
		// It polls the keyring (over the API, not gossip) and gets back in
		// by itself: its reconnect loop calls the members it saw die.
		if err := poll(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, func() bool { return allAlive() == nil }, "the agent to be back")
		keys, err := leader.Node.GossipKeyring()
		if err != nil {
			t.Fatal(err)
		}
		checkOnlyKey(t, c, agent, names, cluster.KeyFingerprint(keys[0]))
	})
}

// checkOnlyKey checks that every member, in every server's view and the
// agent's, advertises only the key fp, and that each server's keyring and
// keyring file hold only it.
func checkOnlyKey(t *testing.T, c *clustertest.Cluster, agent *gossip.Pool, names []string, fp string) {
	t.Helper()
	views := map[string]func() []cluster.Member{"agent-0": agent.Members}
	for _, s := range c.Running() {
		views[s.Name] = s.Node.Members
	}
	waitFor(t, func() bool {
		for _, members := range views {
			ms := members()
			for _, name := range names {
				found := false
				for _, m := range ms {
					if m.Name == name {
						found = m.Meta[cluster.MetaKeys] == fp
					}
				}
				if !found {
					return false
				}
			}
		}
		return true
	}, "every member to advertise only key %s", fp)
	if got := cluster.KeyFingerprints(agent.Keys()); got != fp {
		t.Errorf("agent keys %s, want %s", got, fp)
	}
	for _, s := range c.Running() {
		keys, err := s.Node.GossipKeyring()
		if err != nil || cluster.KeyFingerprints(keys) != fp {
			t.Errorf("%s: GossipKeyring %s, %v; want %s", s.Name, cluster.KeyFingerprints(keys), err, fp)
		}
		waitFor(t, func() bool {
			keys, err := cluster.LoadKeyringFile(s.Config.KeyringFile)
			return err == nil && cluster.KeyFingerprints(keys) == fp
		}, "%s's keyring file to hold only %s", s.Name, fp)
	}
}

// runEvery calls f every interval in a goroutine until the returned stop
// is called (stop waits for it and may be called more than once).
func runEvery(interval time.Duration, f func()) (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				f()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		<-finished
	}
}

func getJSONErr(url string, out any) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// sealer is real AES-256-GCM, as the secrets keyring is.
type sealer struct{ aead cipher.AEAD }

func newSealer(t *testing.T) *sealer {
	block, err := aes.NewCipher(randomKey(t))
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return &sealer{aead: aead}
}

func (s *sealer) Encrypt(plain []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, plain, nil), nil
}

func (s *sealer) Decrypt(sealed []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed value too short")
	}
	return s.aead.Open(nil, sealed[:n], sealed[n:], nil)
}
